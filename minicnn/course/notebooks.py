"""The course a teacher runs: exercises in the tutorials, and a student version without the solutions.

Every tutorial ends with a section of exercises, written with nbgrader's conventions:

* A markdown cell whose first line is ``## Exercises`` opens the section. Each
  exercise is a markdown cell stating it (``### Exercise 2 — the adjoint of
  im2col``), a **solution cell** and, right after it, a **check cell**.
* In a solution cell the reference solution sits between a ``### BEGIN SOLUTION``
  line and a ``### END SOLUTION`` line. Code before and after the markers stays in
  the student's version (a ``def f(x):`` line above them, a line using the
  result below them).
* The check cell asserts the result numerically; its messages say what was
  expected and what was got.
* A code cell elsewhere in the notebook tagged ``exercise-setup`` (Jupyter's cell
  tags) is one the exercises need, such as a class they extend; the proof below
  runs it first. Everything else the exercises use, the section sets up itself.

:func:`build_student` writes the student version: every solution region becomes
``raise NotImplementedError("exercise: <what to do>")`` at the region's
indentation, and every output is cleared. :func:`prove_checks` shows that the
checks can fail: in a fresh kernel it runs the section with each exercise's stub,
then its check (which must fail), then the solution, then the check again (which
must pass). On the command line::

    minicnn course list                       # the exercises of every tutorial
    minicnn course build-student OUT_DIR      # the notebooks without solutions, in OUT_DIR

Notebooks are read and written as plain JSON (the ``.ipynb`` format), so none
of this needs Jupyter; only :func:`prove_checks` runs a kernel (``nbclient``,
installed with ``pip install "minicnn[dev]"``).
"""
from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import shutil
from dataclasses import dataclass, field

from ..io import write_bytes, write_text

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
HIDDEN_BEGIN = "### BEGIN HIDDEN TESTS"       # nbgrader's hidden tests: in a check cell, kept out of
HIDDEN_END = "### END HIDDEN TESTS"           # the student edition, run by `minicnn course grade`
SETUP_TAG = "exercise-setup"
SECTION_HEADING = re.compile(r"^##\s+Exercises\b")
STUB = '{indent}# YOUR CODE HERE\n{indent}raise NotImplementedError({message})\n'


class CourseError(ValueError):
    """A notebook that does not follow the exercise conventions; the message names it and the cell."""


# -----------------------------------------------------------------------------
# Reading and writing notebooks
# -----------------------------------------------------------------------------
def default_tutorials_dir() -> str:
    """The repository's ``tutorials/`` folder, next to the ``minicnn`` package."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tutorials")


def notebook_paths(folder) -> list:
    """The ``*.ipynb`` files of ``folder``, sorted by name."""
    if not os.path.isdir(folder):
        raise CourseError(f"no tutorials folder at {folder}; pass --tutorials DIR")
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".ipynb"))


def read_notebook(path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            nb = json.load(f)
    except (OSError, ValueError) as e:
        raise CourseError(f"{path}: not a readable notebook ({e})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise CourseError(f"{path}: not a notebook (no list of cells)")
    return nb


def notebook_text(nb, ascii_only=False) -> str:
    """``nb`` as Jupyter writes it: indent 1, and non-ASCII characters as they are (``ascii_only``:
    as ``\\uXXXX`` escapes, for a file that was written that way)."""
    return json.dumps(nb, indent=1, ensure_ascii=ascii_only) + "\n"


def write_notebook(nb, path, ascii_only=False):
    """Write ``nb`` as Jupyter does (indent 1, UTF-8), atomically: a temporary file, then ``os.replace``;
    readable by everyone (mode 0644), so a shared JupyterHub folder can serve it."""
    write_text(path, notebook_text(nb, ascii_only))
    os.chmod(path, 0o644)




def source(cell) -> str:
    """A cell's text (the format allows a string or a list of lines)."""
    s = cell.get("source", "")
    return s if isinstance(s, str) else "".join(s)


def as_lines(text) -> list:
    """Text in the format's list-of-lines form (every line but the last keeps its newline)."""
    return text.splitlines(keepends=True)


def tags(cell) -> list:
    return list(cell.get("metadata", {}).get("tags", []))


def where(name, index) -> str:
    return f"{name}, cell {index}"


# -----------------------------------------------------------------------------
# Solution regions
# -----------------------------------------------------------------------------
def marked_regions(text, begin_marker, end_marker, at="this cell") -> list:
    """``[(begin, end, indent)]``: line numbers of each marker pair and the BEGIN line's indentation.

    Raises :class:`CourseError` (naming ``at``) for an END without a BEGIN, a
    BEGIN inside a region, or a BEGIN that is never closed.
    """
    regions, begin = [], None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        marker = line.strip()
        if marker == begin_marker:
            if begin is not None:
                raise CourseError(f"{at}: '{begin_marker}' on line {i + 1} inside the region opened on line "
                                  f"{begin + 1}; close it with '{end_marker}' first")
            begin = i
        elif marker == end_marker:
            if begin is None:
                raise CourseError(f"{at}: '{end_marker}' on line {i + 1} without a '{begin_marker}' before it")
            regions.append((begin, i, lines[begin][:len(lines[begin]) - len(lines[begin].lstrip())]))
            begin = None
    if begin is not None:
        raise CourseError(f"{at}: '{begin_marker}' on line {begin + 1} is never closed by '{end_marker}'")
    return regions


def solution_regions(text, at="this cell") -> list:
    """The solution regions of ``text`` (see :func:`marked_regions`)."""
    return marked_regions(text, BEGIN, END, at)


def hidden_regions(text, at="this cell") -> list:
    """The hidden-test regions of ``text`` (see :func:`marked_regions`)."""
    return marked_regions(text, HIDDEN_BEGIN, HIDDEN_END, at)


def strip_hidden_tests(text, at="this cell") -> str:
    """``text`` without its hidden-test regions (markers included), as nbgrader releases a check cell."""
    lines = text.splitlines(keepends=True)
    for begin, end, _ in reversed(hidden_regions(text, at)):
        del lines[begin:end + 1]
    out = "".join(lines)
    return out[:-1] if out.endswith("\n") and not text.endswith("\n") else out


def strip_solutions(text, description, at="this cell") -> str:
    """``text`` with every solution region (markers included) replaced by the stub."""
    regions = solution_regions(text, at)
    lines = text.splitlines(keepends=True)
    message = json.dumps(f"exercise: {description}", ensure_ascii=False)
    for begin, end, indent in reversed(regions):
        lines[begin:end + 1] = [STUB.format(indent=indent, message=message)]
    out = "".join(lines)
    return out[:-1] if out.endswith("\n") and not text.endswith("\n") else out


def solution_lines(text) -> list:
    """The lines inside the solution regions of ``text`` (markers excluded)."""
    lines = text.splitlines()
    return [line for begin, end, _ in solution_regions(text) for line in lines[begin + 1:end]]


def solution_text(nb, name="notebook", min_length=12) -> set:
    """What would give a solution away: every line of a solution region or of a hidden test (stripped, at least
    ``min_length`` characters) that occurs nowhere else in the notebook, not even inside a longer
    line or in the exercise's statement. A student file or page containing one of these leaks a
    solution (a search of the text, not of the markers)."""
    course = exercise_section(nb, name)
    solutions = {e.solution for e in course.exercises}
    outside = []                                # the notebook's text without its solution regions
    for cell in nb["cells"]:
        inside = False
        for line in source(cell).splitlines():
            if re.search(r"(BEGIN|END) (SOLUTION|HIDDEN TESTS)", line):
                inside = "BEGIN" in line
            elif not inside:
                outside.append(line)
    outside = "\n".join(outside)
    found = {line.strip() for i in solutions for line in solution_lines(source(nb["cells"][i]))}
    for e in course.exercises:                      # the hidden tests must not reach the students either
        text = source(nb["cells"][e.check])
        lines = text.splitlines()
        found |= {line.strip() for begin, end, _ in hidden_regions(text) for line in lines[begin + 1:end]}
    return {line for line in found if len(line) >= min_length and line not in outside}


def has_markers(text) -> bool:
    return any(line.strip() in (BEGIN, END) for line in text.splitlines())


# -----------------------------------------------------------------------------
# Exercises
# -----------------------------------------------------------------------------
@dataclass
class Exercise:
    number: int            # 1, 2, ... within its notebook
    title: str             # what to do, from the markdown above (the stub's message)
    solution: int          # index of the solution cell
    check: int             # index of its check cell (the next cell)


@dataclass
class Course:
    """One notebook's exercise section."""
    name: str
    section: int | None                # index of the "## Exercises" cell, or None
    exercises: list = field(default_factory=list)
    setup: list = field(default_factory=list)         # indices of cells tagged exercise-setup

    @property
    def end(self):
        """The index just past the section (its last check cell)."""
        return self.exercises[-1].check + 1 if self.exercises else self.section


def title_of(markdown) -> str:
    """A short description from an exercise's markdown: its heading without "Exercise N —", else its first line."""
    lines = [line.strip() for line in markdown.splitlines() if line.strip()]
    if not lines:
        return ""
    heading = next((line for line in lines if line.startswith("#")), lines[0])
    text = heading.lstrip("#").strip()
    text = re.sub(r"^(\*\*)?exercise\s*\d*\s*(\*\*)?\s*[—–:.\-]*\s*", "", text, flags=re.I)
    text = re.sub(r"[*`]", "", text).strip()
    return text[:100] if len(text) <= 100 else text[:97].rstrip() + "..."


def exercise_section(nb, name="notebook") -> Course:
    """Find the exercises of ``nb``; :class:`CourseError` names the cell of anything malformed.

    Checks the markers of every cell (unbalanced ones, or markers in a markdown
    cell, are errors: a solution must never leak into the student version) and
    that every solution cell sits in the Exercises section with a check cell
    (a code cell containing an ``assert``) right after it.
    """
    cells = nb["cells"]
    section = next((i for i, c in enumerate(cells) if c.get("cell_type") == "markdown"
                    and SECTION_HEADING.match(source(c).lstrip())), None)
    course = Course(name, section, setup=[i for i, c in enumerate(cells)
                                          if c.get("cell_type") == "code" and SETUP_TAG in tags(c)])
    for i, cell in enumerate(cells):
        text = source(cell)
        if hidden_regions(text, where(name, i)) and not (i > 0 and has_markers(source(cells[i - 1]))
                                                         and cell.get("cell_type") == "code"):
            raise CourseError(f"{where(name, i)}: hidden tests ('{HIDDEN_BEGIN}') belong in a check cell, "
                              "right after a solution cell")
        if not has_markers(text):
            continue
        if cell.get("cell_type") != "code":
            raise CourseError(f"{where(name, i)}: solution markers in a {cell.get('cell_type')} cell; "
                              "they belong in code cells")
        if not solution_regions(text, where(name, i)):
            continue
        if section is None or i < section:
            raise CourseError(f"{where(name, i)}: a solution cell outside the '## Exercises' section "
                              "(the section is missing, or starts after this cell)")
        nxt = cells[i + 1] if i + 1 < len(cells) else None
        if nxt is None or nxt.get("cell_type") != "code" or has_markers(source(nxt)):
            raise CourseError(f"{where(name, i)}: a solution cell needs a check cell (a code cell "
                              "without markers) right after it")
        if not re.search(r"^\s*assert\b", source(nxt), re.M):
            raise CourseError(f"{where(name, i + 1)}: the check cell of the solution in cell {i} "
                              "has no assert")
        md = next((source(cells[j]) for j in range(i - 1, -1, -1)
                   if cells[j].get("cell_type") == "markdown"), "")
        title = title_of(md) or f"cell {i} of {name}"
        course.exercises.append(Exercise(len(course.exercises) + 1, title, i, i + 1))
    return course


def student_notebook(nb, name="notebook") -> dict:
    """A copy of ``nb`` with every solution region replaced by its stub and every output cleared."""
    course = exercise_section(nb, name)
    titles = {e.solution: e.title for e in course.exercises}
    checks = {e.check for e in course.exercises}
    out = json.loads(json.dumps(nb))               # a deep copy, whatever the cells hold
    for i, cell in enumerate(out["cells"]):
        if cell.get("cell_type") != "code":
            continue
        if i in titles:
            cell["source"] = as_lines(strip_solutions(source(cell), titles[i], where(name, i)))
        if i in checks:                            # nbgrader's locked cell: Jupyter will not edit or delete it
            cell["source"] = as_lines(strip_hidden_tests(source(cell), where(name, i)))
            cell.setdefault("metadata", {}).update(deletable=False, editable=False)
        cell["outputs"], cell["execution_count"] = [], None
        cell.get("metadata", {}).pop("execution", None)
    return out


# -----------------------------------------------------------------------------
# nbgrader's metadata: grade ids, points, locked checks
# -----------------------------------------------------------------------------
NBGRADER_SCHEMA = 3
DEFAULT_POINTS = 1


def solution_metadata(number) -> dict:
    """nbgrader's metadata of a solution cell ("autograded answer"): the student writes in it."""
    return {"grade": False, "grade_id": f"ex{number}", "locked": False, "schema_version": NBGRADER_SCHEMA,
            "solution": True, "task": False}


def check_metadata(number, points=DEFAULT_POINTS) -> dict:
    """nbgrader's metadata of a check cell ("autograder tests"): locked, worth ``points``."""
    return {"grade": True, "grade_id": f"ex{number}-check", "locked": True, "points": points,
            "schema_version": NBGRADER_SCHEMA, "solution": False, "task": False}


def points_of(cell, default=DEFAULT_POINTS):
    """The points a check cell is worth (its nbgrader metadata; ``default`` without it)."""
    value = cell.get("metadata", {}).get("nbgrader", {}).get("points", default)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else default


def with_nbgrader(cell, metadata):
    """Set ``metadata["nbgrader"]``, keys in sorted order (as Jupyter writes them, so a diff is one block)."""
    cell["metadata"] = dict(sorted({**cell.get("metadata", {}), "nbgrader": metadata}.items()))


def tag_notebook(nb, name="notebook") -> dict:
    """``nb`` with nbgrader's metadata on every solution and check cell (rerunnable: a check's points,
    once set by hand, are kept). The cells' text is not touched."""
    course = exercise_section(nb, name)
    for e in course.exercises:
        with_nbgrader(nb["cells"][e.solution], solution_metadata(e.number))
        with_nbgrader(nb["cells"][e.check], check_metadata(e.number, points_of(nb["cells"][e.check])))
    return nb


def tag_tutorials(tutorials_dir=None, log=print) -> list:
    """Add nbgrader's metadata to every tutorial in place (``minicnn course tag``); the paths changed.
    Each file keeps its formatting, so the diff shows the metadata only."""
    changed = []
    for path in notebook_paths(tutorials_dir or default_tutorials_dir()):
        with open(path, encoding="utf-8") as f:
            before = f.read()
        nb = tag_notebook(read_notebook(path), os.path.basename(path))
        after = notebook_text(nb, ascii_only=before.isascii())
        if not before.endswith("\n"):
            after = after[:-1]                                   # as it was: no newline at the end
        if after != before:
            write_text(path, after)
            changed.append(path)
    log(f"nbgrader metadata: {len(changed)} notebook(s) updated")
    return changed


def metadata_problems(nb, name="notebook") -> list:
    """What is missing or inconsistent in the nbgrader metadata of ``nb``'s exercises (empty when
    all is well): every solution and check cell carries it, ids match the exercise numbers."""
    course = exercise_section(nb, name)
    problems = []
    for e in course.exercises:
        for index, want in ((e.solution, solution_metadata(e.number)),
                            (e.check, check_metadata(e.number, points_of(nb["cells"][e.check])))):
            got = nb["cells"][index].get("metadata", {}).get("nbgrader")
            if got != want:
                problems.append(f"{where(name, index)}: nbgrader metadata {got}, expected {want} "
                                "(run `minicnn course tag`)")
    ids = [c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb["cells"]]
    ids = [i for i in ids if i]
    if len(ids) != len(set(ids)):
        problems.append(f"{name}: duplicate nbgrader grade ids {sorted(i for i in set(ids) if ids.count(i) > 1)}")
    return problems


# -----------------------------------------------------------------------------
# The student version
# -----------------------------------------------------------------------------
LINK = re.compile(r"\]\((\.\./[^)\s#]+)(#[^)\s]*)?\)")     # a Markdown link out of the folder: [text](../x/y.py)
SOURCE_DIR = "source"


def localize_links(text, tutorials_dir, linked) -> str:
    """``text`` with every link to a file outside the tutorials folder (``../minicnn/nn/layers.py``)
    pointing at its copy under ``source/`` instead; adds ``{copy's relative path: the original}``
    to ``linked``. Links whose target does not exist are left as they are."""
    root = os.path.dirname(os.path.abspath(tutorials_dir))

    def replace(match):
        target = os.path.normpath(os.path.join(tutorials_dir, match.group(1)))
        rel = os.path.relpath(target, root)
        if not os.path.isfile(target) or rel.startswith(".."):
            return match.group(0)
        copy = f"{SOURCE_DIR}/{pathlib.PurePath(rel).as_posix()}"
        linked[copy] = target
        return f"]({copy}{match.group(2) or ''})"

    return LINK.sub(replace, text)


def readable(path):
    """Let everyone read ``path`` (and enter it, for a folder): files 0644, folders 0755."""
    os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)


def build_student(out_dir, tutorials_dir=None, log=print) -> list:
    """Write the student edition of every tutorial into ``out_dir``; returns the paths written.

    The folder stands alone (no instructor checkout beside it): the notebooks without solutions;
    every other file and folder of the tutorials folder (README.md, data or helper files a
    notebook reads by relative path); and a copy, under ``source/``, of every file outside the
    folder that a notebook or a Markdown file links to (``../minicnn/nn/layers.py`` becomes
    ``source/minicnn/nn/layers.py``, and the link follows). Hidden files (``.ipynb_checkpoints``),
    ``__pycache__`` and notebooks inside subfolders are not copied, nor ``out_dir`` if it lies
    inside. Everything written is readable by everyone (files 0644, folders 0755), so a shared
    JupyterHub folder can serve it. Every notebook is checked before anything is written, so a
    malformed one leaves ``out_dir`` untouched. ``out_dir`` may not be the tutorials folder
    itself: the solutions are never overwritten.
    """
    tutorials_dir = os.path.abspath(tutorials_dir or default_tutorials_dir())
    paths = notebook_paths(tutorials_dir)
    if not paths:
        raise CourseError(f"no notebooks in {tutorials_dir}")
    if os.path.exists(out_dir) and os.path.samefile(out_dir, tutorials_dir):
        raise CourseError(f"the output folder {out_dir} is the tutorials folder: that would overwrite "
                          "the solutions; choose another folder")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CourseError(f"{out_dir} exists and is not a folder")
    student, linked = {}, {}
    for path in paths:                                       # all checked before anything is written
        name = os.path.basename(path)
        nb = student_notebook(read_notebook(path), name)
        for cell in nb["cells"]:
            if cell.get("cell_type") == "markdown":
                cell["source"] = as_lines(localize_links(source(cell), tutorials_dir, linked))
        student[name] = nb
    os.makedirs(out_dir, exist_ok=True)
    readable(out_dir)
    written = []
    for name, nb in student.items():
        target = os.path.join(out_dir, name)
        write_notebook(nb, target)
        written.append(target)
    skip = shutil.ignore_patterns(".*", "__pycache__", "*.ipynb")
    out_real = os.path.realpath(out_dir)
    for name in sorted(os.listdir(tutorials_dir)):
        src = os.path.join(tutorials_dir, name)
        target = os.path.join(out_dir, name)
        if name.startswith(".") or name == "__pycache__" or name.endswith(".ipynb"):
            continue
        if os.path.isdir(src):                               # a data or helper folder (not OUT_DIR itself)
            real = os.path.realpath(src)
            if out_real == real or out_real.startswith(real + os.sep):
                continue
            shutil.copytree(src, target, ignore=skip, dirs_exist_ok=True)
            for folder, dirs, files in os.walk(target):
                for entry in dirs + files:
                    readable(os.path.join(folder, entry))
        elif os.path.isfile(src):
            if name.endswith(".md"):
                with open(src, encoding="utf-8") as f:
                    write_text(target, localize_links(f.read(), tutorials_dir, linked))
            else:
                with open(src, "rb") as f:
                    write_bytes(target, f.read())
            readable(target)
        else:
            continue
        written.append(target)
    for copy, original in sorted(linked.items()):            # what the notebooks link to, under source/
        target = os.path.join(out_dir, *copy.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(original, "rb") as f:
            write_bytes(target, f.read())
        readable(target)
        written.append(target)
    for folder, dirs, _ in os.walk(os.path.join(out_dir, SOURCE_DIR)):
        for d in dirs:
            readable(os.path.join(folder, d))
    if os.path.isdir(os.path.join(out_dir, SOURCE_DIR)):
        readable(os.path.join(out_dir, SOURCE_DIR))
    n = sum(len(exercise_section(read_notebook(p), os.path.basename(p)).exercises) for p in paths)
    log(f"wrote {len(student)} student notebooks ({n} exercises, solutions replaced by stubs), "
        f"{len(written) - len(student) - len(linked)} other file(s) and {len(linked)} linked source "
        f"file(s) under {SOURCE_DIR}/ to {out_dir}")
    return written


def list_exercises(tutorials_dir=None) -> list:
    """``[(notebook name, Exercise)]`` for every tutorial."""
    rows = []
    for path in notebook_paths(tutorials_dir or default_tutorials_dir()):
        name = os.path.basename(path)
        rows += [(name, e) for e in exercise_section(read_notebook(path), name).exercises]
    return rows


# -----------------------------------------------------------------------------
# Names: does a check read a name that an earlier cell already bound?
# -----------------------------------------------------------------------------
def _python(text):
    """The cell's code without IPython's ``%magic`` and ``!shell`` lines (as an ast, or None)."""
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in text.splitlines())
    try:
        return ast.parse(code)
    except SyntaxError:
        return None


def bound_names(text) -> set:
    """The names a cell binds at its top level (what stays defined in the kernel after it ran);
    assignments inside the functions and classes it defines are their own locals."""
    tree = _python(text)
    if tree is None:
        return set()
    names = set()

    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            return                                   # its body is another scope
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def read_names(text) -> set:
    tree = _python(text)
    if tree is None:
        return set()
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def stale_names(nb, name="notebook") -> list:
    """Problems where a check could pass on the stub in the full student notebook.

    A check that reads a name its solution cell binds must not find that name
    already bound by a cell before the Exercises section (other than a setup
    cell): in the student version the stub does not bind it, and the check
    would see the stale value instead of failing.
    """
    course = exercise_section(nb, name)
    cells = nb["cells"]
    earlier = set()
    for i in range(course.section or 0):
        if cells[i].get("cell_type") == "code" and i not in course.setup:
            earlier |= bound_names(source(cells[i]))
    problems = []
    for e in course.exercises:
        shared = read_names(source(cells[e.check])) & bound_names(source(cells[e.solution])) & earlier
        if shared:
            problems.append(f"{where(name, e.check)}: the check reads {sorted(shared)}, which its solution "
                            "binds but a cell before the Exercises section binds too; rename them")
    return problems


# -----------------------------------------------------------------------------
# The proof that the checks can fail
# -----------------------------------------------------------------------------
def proof_notebook(nb, name="notebook") -> dict:
    """The cells :func:`prove_checks` runs: the setup cells, then the section with each exercise as
    stub → check → solution → check. Each cell's ``metadata["course"]`` says its role."""
    course = exercise_section(nb, name)
    student = student_notebook(nb, name)
    cells = []

    def add(cell, role, index, exercise=None):
        c = json.loads(json.dumps(cell))
        c["outputs"], c["execution_count"] = [], None
        c.setdefault("metadata", {})["course"] = {"role": role, "cell": index, "exercise": exercise}
        if "id" in c:
            c["id"] = f"proof-{len(cells)}"          # a cell runs twice here; ids must stay unique
        cells.append(c)

    for i in course.setup:
        if course.section is None or i < course.section:
            add(nb["cells"][i], "setup", i)
    by_solution = {e.solution: e for e in course.exercises}
    checks = {e.check for e in course.exercises}
    for i in range(course.section, course.end) if course.exercises else ():
        cell = nb["cells"][i]
        if cell.get("cell_type") != "code" or i in checks:
            continue
        if i in by_solution:
            e = by_solution[i]
            add(student["cells"][i], "stub", i, e.number)
            add(nb["cells"][e.check], "check on the stub", e.check, e.number)
            add(cell, "solution", i, e.number)
            add(nb["cells"][e.check], "check on the solution", e.check, e.number)
        else:
            add(cell, "setup", i)
    out = {k: v for k, v in nb.items() if k != "cells"}
    out["cells"] = cells
    return out


@dataclass
class Proof:
    name: str
    exercises: list                     # [(number, title, error the check raised on the stub)]
    problems: list                      # what went wrong; empty when every check failed and then passed
    seconds: float = 0.0


def _error(cell):
    for o in cell.get("outputs", []):
        if o.get("output_type") == "error":
            value = str(o.get("evalue", "")).strip().splitlines()
            return f"{o.get('ename')}: {value[0] if value else ''}"
    return None


def prove_checks(path, timeout=120, kernel_name="python3") -> Proof:
    """Run :func:`proof_notebook` of the notebook at ``path`` in a fresh kernel (in its folder).

    A problem is recorded when a setup cell or a solution errors, when a check
    passes on the stub, or when it fails on the solution.
    """
    import time

    from nbclient import NotebookClient            # installed with minicnn[dev]
    import nbformat

    name = os.path.basename(path)
    nb = read_notebook(path)
    course = exercise_section(nb, name)
    proof = nbformat.reads(json.dumps(proof_notebook(nb, name)), as_version=4)   # joins the lines of each cell
    t0 = time.perf_counter()
    NotebookClient(proof, timeout=timeout, kernel_name=kernel_name, allow_errors=True,
                   resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}}).execute()
    seconds = time.perf_counter() - t0
    problems, failures = [], {}
    for cell in proof.cells:
        role = cell.metadata["course"]["role"]
        k, i = cell.metadata["course"]["exercise"], cell.metadata["course"]["cell"]
        error = _error(cell)
        if role in ("setup", "solution", "check on the solution") and error:
            problems.append(f"{where(name, i)} ({role}{'' if k is None else f' of exercise {k}'}) "
                            f"failed: {error}")
        elif role == "check on the stub":
            if error is None:
                problems.append(f"{where(name, i)}: the check of exercise {k} passes on the stub; "
                                "it must fail when the exercise is not done")
            failures[k] = error
    return Proof(name, [(e.number, e.title, failures.get(e.number)) for e in course.exercises],
                 problems, seconds)
