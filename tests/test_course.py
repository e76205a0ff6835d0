"""The course a teacher runs (minicnn.course, `minicnn course`): exercises and the student version.

1. The marker handling, on small hand-made notebooks: stubs keep the code around the
   markers and the indentation of the region; unbalanced markers, markers in markdown,
   a solution without a check cell are errors naming the notebook and the cell; the
   build never writes over the solutions and leaves nothing half-written.
2. The tutorials: every one has exercises, each with a check cell; the student version
   builds from the command line; and, for every tutorial, the proof that the checks can
   fail — each check cell fails on its stub (and passes on the solution), run in a fresh
   kernel (see ``course.prove_checks``: the exercise section and the cells tagged
   ``exercise-setup`` only, about 2-4 s per notebook).
3. The ``tutorialNN`` markers: each selects library tests, and tests/README.md indexes them.
"""
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from minicnn.cli import commands as cli
from minicnn.course import notebooks as course

ROOT = pathlib.Path(__file__).resolve().parent.parent
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))


# -----------------------------------------------------------------------------
# Hand-made notebooks
# -----------------------------------------------------------------------------
def md(text):
    return {"cell_type": "markdown", "metadata": {}, "source": course.as_lines(text)}


def code(text, outputs=None, tags=None):
    cell = {"cell_type": "code", "execution_count": 3 if outputs else None, "metadata": {},
            "outputs": outputs or [], "source": course.as_lines(text)}
    if tags:
        cell["metadata"]["tags"] = tags
    return cell


def notebook(*cells):
    return {"cells": list(cells), "metadata": {"kernelspec": {"name": "python3"}}, "nbformat": 4,
            "nbformat_minor": 4}


NESTED = '''def total(xs):
    """Add up xs."""
    s = 0
    for x in xs:
        ### BEGIN SOLUTION
        s += x
        ### END SOLUTION
    return s


print("defined")'''


def test_a_region_inside_a_loop_keeps_its_indentation_and_the_code_around_it():
    out = course.strip_solutions(NESTED, "add them up")
    assert out == '''def total(xs):
    """Add up xs."""
    s = 0
    for x in xs:
        # YOUR CODE HERE
        raise NotImplementedError("exercise: add them up")
    return s


print("defined")'''
    scope = {}
    exec(compile(out, "student", "exec"), scope)                 # still valid Python, and it runs
    with pytest.raises(NotImplementedError, match="exercise: add them up"):
        scope["total"]([1, 2])


def test_top_level_regions_several_per_cell_and_text_after_the_marker_lines():
    text = ("import math\n### BEGIN SOLUTION\nr = math.sqrt(2)\n### END SOLUTION  \n"
            "def f():\n    ### BEGIN SOLUTION\n    return r\n    ### END SOLUTION\nprint(r)\n")
    out = course.strip_solutions(text, 'say "hi"')
    assert out.startswith("import math\n# YOUR CODE HERE\nraise NotImplementedError(\"exercise: say \\\"hi\\\"\")\n")
    assert '    # YOUR CODE HERE\n    raise NotImplementedError("exercise: say \\"hi\\"")\nprint(r)\n' in out
    assert "math.sqrt" not in out and "return r" not in out and out.endswith("\n")
    with pytest.raises(NotImplementedError, match='exercise: say "hi"'):
        exec(compile(out, "student", "exec"), {})


@pytest.mark.parametrize("text, message", [
    ("### BEGIN SOLUTION\nx = 1\n", "line 1 is never closed"),
    ("x = 1\n### END SOLUTION\n", "line 2 without a '### BEGIN SOLUTION'"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "line 2 inside the region opened on line 1"),
])
def test_unbalanced_markers_are_errors_naming_the_notebook_and_the_cell(text, message):
    nb = notebook(md("## Exercises"), md("### Exercise 1 — one"), code(text), code("assert x == 1, 'x'"))
    with pytest.raises(course.CourseError, match=r"hw\.ipynb, cell 2: .*" + re.escape(message)):
        course.student_notebook(nb, "hw.ipynb")


@pytest.mark.parametrize("cells, message", [
    ([md("## Exercises"), md("### BEGIN SOLUTION\nthe answer\n### END SOLUTION")], "cell 1: solution markers in a markdown cell"),
    ([md("## Exercises"), code("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")], "cell 1: a solution cell needs a check cell"),
    ([md("## Exercises"), code("### BEGIN SOLUTION\nx = 1\n### END SOLUTION"), md("text")], "cell 1: a solution cell needs a check cell"),
    ([md("## Exercises"), code("### BEGIN SOLUTION\nx = 1\n### END SOLUTION"), code("print(x)")], "cell 2: the check cell .* has no assert"),
    ([code("### BEGIN SOLUTION\nx = 1\n### END SOLUTION"), code("assert x, 'x'")], "cell 0: a solution cell outside"),
])
def test_malformed_exercises_are_errors_naming_the_cell(cells, message):
    with pytest.raises(course.CourseError, match=r"hw\.ipynb, " + message):
        course.exercise_section(notebook(*cells), "hw.ipynb")


def test_exercises_their_titles_and_the_setup_cells():
    nb = notebook(code("import math", tags=["exercise-setup"]), md("## Exercises\n\nintro"),
                  md("### Exercise 1 — the **square** root of `2`\n\nWrite it."), code(NESTED.replace("total", "t1")),
                  code("assert t1([1, 2]) == 3, 'expected 3'"),
                  md("Compute the cube."), code("### BEGIN SOLUTION\nc = 8\n### END SOLUTION"),
                  code("assert c == 8, f'expected 8, got {c}'"))
    found = course.exercise_section(nb, "hw.ipynb")
    assert found.section == 1 and found.setup == [0]
    assert [(e.number, e.title, e.solution, e.check) for e in found.exercises] == \
        [(1, "the square root of 2", 3, 4), (2, "Compute the cube.", 6, 7)]
    assert found.end == 8
    student = course.student_notebook(nb, "hw.ipynb")
    assert 'raise NotImplementedError("exercise: Compute the cube.")' in course.source(student["cells"][6])
    assert course.source(student["cells"][7]) == course.source(nb["cells"][7])      # checks stay as they are
    assert course.source(nb["cells"][6]).count("c = 8") == 1                         # the input is not modified


def test_a_check_reading_a_name_bound_before_the_section_is_reported():
    nb = notebook(code("result = 0\ndef helper():\n    local = 1"), md("## Exercises"),
                  code("### BEGIN SOLUTION\nresult = 42\nlocal = 2\n### END SOLUTION"),
                  code("assert result == 42 and local == 2, 'expected 42'"))
    problems = course.stale_names(nb, "hw.ipynb")
    assert len(problems) == 1 and "cell 3" in problems[0] and "['result']" in problems[0]   # not `local`


def _tutorials_folder(tmp_path, nb):
    src = tmp_path / "solutions"
    src.mkdir()
    (src / "01_hw.ipynb").write_text(json.dumps(nb))
    (src / "README.md").write_text("# the course\n")
    (src / "data.csv").write_text("1,2\n")
    (src / ".ipynb_checkpoints").mkdir()
    (src / ".ipynb_checkpoints" / "01_hw-checkpoint.ipynb").write_text("{}")
    (src / "data").mkdir()
    (src / "data" / "digits.npy").write_bytes(b"\x93NUMPY")
    (src / "data" / "solutions.ipynb").write_text("{}")                  # notebooks in subfolders stay behind
    return src


def test_build_student_writes_stubs_clears_outputs_and_copies_the_other_files(tmp_path):
    output = [{"output_type": "stream", "name": "stdout", "text": ["the answer is 42\n"]}]
    nb = notebook(code("print(1)", outputs=output), md("## Exercises"), md("### Exercise 1: the answer"),
                  code("### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION", outputs=output),
                  code("assert answer == 42, f'expected 42, got {answer}'", outputs=output))
    src = _tutorials_folder(tmp_path, nb)
    out = src / "students"                                      # inside the tutorials folder: not copied into itself
    for _ in range(2):                                          # a second build overwrites the first
        written = course.build_student(str(out), str(src), log=lambda *a: None)
    assert sorted(os.listdir(out)) == ["01_hw.ipynb", "README.md", "data", "data.csv"]   # no temporary files left
    assert os.listdir(out / "data") == ["digits.npy"] and len(written) == 4
    student = json.loads((out / "01_hw.ipynb").read_text())
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in student["cells"] if c["cell_type"] == "code")
    text = (out / "01_hw.ipynb").read_text()
    assert "answer = 42" not in text and "BEGIN SOLUTION" not in text and "the answer is 42" not in text
    assert 'raise NotImplementedError(\\"exercise: the answer\\")' in text
    assert json.loads((src / "01_hw.ipynb").read_text()) == nb                       # the solutions are untouched


def test_build_student_never_writes_over_the_solutions(tmp_path, capsys):
    nb = notebook(md("## Exercises"), code("### BEGIN SOLUTION\nx = 1\n### END SOLUTION"), code("assert x == 1, 'x'"))
    src = _tutorials_folder(tmp_path, nb)
    before = (src / "01_hw.ipynb").read_text()
    for same in (str(src), str(src) + "/", str(tmp_path / "solutions" / ".." / "solutions")):
        with pytest.raises(course.CourseError, match="is the tutorials folder"):
            course.build_student(same, str(src))
    assert cli.main(["course", "build-student", str(src), "--tutorials", str(src)]) == 2
    assert "would overwrite the solutions" in capsys.readouterr().err
    assert (src / "01_hw.ipynb").read_text() == before


def test_a_malformed_notebook_stops_the_build_before_anything_is_written(tmp_path, capsys):
    good = notebook(md("## Exercises"), code("### BEGIN SOLUTION\nx = 1\n### END SOLUTION"), code("assert x == 1, 'x'"))
    src = _tutorials_folder(tmp_path, good)
    bad = notebook(md("## Exercises"), code("### BEGIN SOLUTION\nx = 1\n"), code("assert x == 1, 'x'"))
    (src / "02_bad.ipynb").write_text(json.dumps(bad))
    out = tmp_path / "students"
    assert cli.main(["course", "build-student", str(out), "--tutorials", str(src)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "02_bad.ipynb, cell 1" in err and "never closed" in err
    assert not out.exists()


def test_course_list_and_a_missing_folder(tmp_path, capsys):
    nb = notebook(md("## Exercises"), md("### Exercise 1 — one thing"),
                  code("### BEGIN SOLUTION\nx = 1\n### END SOLUTION"), code("assert x == 1, 'x'"))
    src = _tutorials_folder(tmp_path, nb)
    assert cli.main(["course", "list", "--tutorials", str(src)]) == 0
    out = capsys.readouterr().out
    assert "01_hw.ipynb\n  1. one thing  (solution: cell 2, check: cell 3)" in out and "1 exercises in 1 notebooks" in out
    assert cli.main(["course", "list", "--tutorials", str(tmp_path / "nowhere")]) == 2
    assert "no tutorials folder" in capsys.readouterr().err


# -----------------------------------------------------------------------------
# The tutorials
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_every_tutorial_has_exercises_with_check_cells(path):
    nb = course.read_notebook(path)
    found = course.exercise_section(nb, path.name)              # raises on anything malformed
    assert found.exercises, f"{path.name} has no exercise (a '## Exercises' section with solution cells)"
    for e in found.exercises:
        check = course.source(nb["cells"][e.check])
        assert re.search(r"^\s*assert .+, ", check, re.M), \
            f"{path.name}, cell {e.check}: a check needs an assert whose message says what was expected"
        assert e.title and not e.title.startswith("cell "), f"{path.name}, cell {e.solution}: no title above it"
    assert course.stale_names(nb, path.name) == []


def test_the_student_version_of_the_tutorials_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "students"
    assert cli.main(["course", "build-student", str(out)]) == 0
    assert "wrote 19 student notebooks" in capsys.readouterr().out
    others = [p.name for p in (ROOT / "tutorials").iterdir() if p.suffix != ".ipynb" and not p.name.startswith(".")]
    assert "README.md" in others and "course.toml" in others          # the other files come along
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in TUTORIALS] + others + ["source"])
    for path in TUTORIALS:
        text = (out / path.name).read_text()
        n = len(course.exercise_section(course.read_notebook(path), path.name).exercises)
        student = json.loads(text)
        leaked = [i for i, c in enumerate(student["cells"]) if course.has_markers(course.source(c))]
        assert not leaked, f"{path.name}: solution markers left in cells {leaked}"
        assert text.count("raise NotImplementedError(\\\"exercise: ") >= n
        assert all(not c.get("outputs") for c in student["cells"] if c["cell_type"] == "code")
        original = course.read_notebook(path)
        assert len(student["cells"]) == len(original["cells"])


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_every_check_fails_on_its_stub_and_passes_on_the_solution(path):
    proof = course.prove_checks(str(path))
    assert not proof.problems, "\n".join(proof.problems)
    for number, title, error in proof.exercises:
        assert error, f"{path.name}: the check of exercise {number} ({title}) did not fail on the stub"


# -----------------------------------------------------------------------------
# The tutorialNN markers
# -----------------------------------------------------------------------------
MARKERS = [f"tutorial{i:02d}" for i in range(len(TUTORIALS))]

REPORTER = '''
import json, os

def pytest_collection_modifyitems(items):
    counts = {}
    for item in items:
        for name in {m.name for m in item.iter_markers()}:
            counts[name] = counts.get(name, 0) + 1
    with open(os.environ["MINICNN_MARKER_REPORT"], "w") as f:
        json.dump(counts, f)
'''


def test_every_tutorial_marker_selects_library_tests(tmp_path):
    """One collection of tests/ (no test runs) in a subprocess, counting the tests of each marker."""
    (tmp_path / "marker_report.py").write_text(REPORTER)
    report = tmp_path / "counts.json"
    env = dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MINICNN_MARKER_REPORT=str(report))
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-o", "addopts=", "--strict-markers",
                        "-p", "marker_report", "-p", "no:cacheprovider", "tests"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    counts = json.loads(report.read_text())
    missing = [m for m in MARKERS if not counts.get(m)]
    assert not missing, f"these markers select no test: {missing} (counts: {counts})"


def test_the_markers_are_registered_and_indexed():
    pyproject = (ROOT / "pyproject.toml").read_text()
    index = (ROOT / "tests" / "README.md").read_text()
    for name, path in zip(MARKERS, TUTORIALS):
        assert f'"{name}:' in pyproject, f"pyproject.toml should register the marker {name}"
        assert f"`{name}`" in index and path.name in index, f"tests/README.md should index {name} ({path.name})"
