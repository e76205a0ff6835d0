"""Grade a folder of submissions offline: ``minicnn course grade SUBMISSIONS/ --out grades.csv``.

The layout is one folder per student, with the notebooks they hand in anywhere inside it
(nbgrader's ``submitted/<student>/<assignment>/`` works: point at ``submitted/``)::

    SUBMISSIONS/
        alice/02_convolution.ipynb
        bob/02_convolution.ipynb
        bob/05_batchnorm_dropout.ipynb

Each notebook is matched by its file name to the course's notebook (with solutions) and graded
as follows:

* **Only the student's solution cells are taken from the submission** (found by their nbgrader
  grade id, ``ex1``, ``ex2``...; else at the same cell index). Everything else — the setup cells
  and the checks — comes from the course's own notebook, so a check edited or deleted in the
  submission changes nothing (the checks are nbgrader's *locked* cells).
* **Isolation**: each notebook runs in its own Python process (:mod:`minicnn.course.runner`), in
  a fresh temporary folder holding a copy of the tutorials folder's data and helper files and
  nothing of any other submission; the process is killed (with anything it started) when the
  notebook's time limit runs out, and each exercise has its own, shorter, limit.
* **The student's own work**: while an exercise runs, the library functions it asks for
  (:data:`minicnn.course.forbid.ANSWERS`) refuse to be called from the student's code.
* One row per exercise in the CSV: ``student, notebook, exercise, title, points, max_points,
  message`` — the points of the check cell's nbgrader metadata when it passes, else 0, and the
  check's message (which names the likely mistake for the core exercises, see
  :mod:`minicnn.course.feedback`).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from ..io import write_text
from .forbid import ANSWERS
from .notebooks import (CourseError, default_tutorials_dir, exercise_section, notebook_paths, points_of,
                        read_notebook, source)

FIELDS = ["student", "notebook", "exercise", "title", "points", "max_points", "message"]


@dataclass
class Grade:
    student: str
    notebook: str
    exercise: int
    title: str
    points: float
    max_points: float
    message: str


def runnable(text) -> str:
    """A cell's code as plain Python: IPython's ``%magic`` and ``!shell`` lines become ``pass``."""
    lines = []
    for line in text.splitlines():
        stripped = line.lstrip()
        lines.append(line[:len(line) - len(stripped)] + "pass" if stripped.startswith(("%", "!")) else line)
    return "\n".join(lines) + "\n"


def student_cell(student_nb, number, index):
    """The student's solution cell of exercise ``number``: by nbgrader grade id, else at ``index``."""
    cells = student_nb.get("cells", [])
    for cell in cells:
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == f"ex{number}":
            return cell
    if index < len(cells) and cells[index].get("cell_type") == "code":
        return cells[index]
    return None


def grading_job(course_nb, student_nb, name, exercise_timeout=60) -> dict:
    """What the runner executes for one submitted notebook: the course's setup cells, then for each
    exercise the student's solution cell and the course's check cell, in the notebook's order."""
    course = exercise_section(course_nb, name)
    stem = os.path.splitext(name)[0]
    cells = course_nb["cells"]
    steps = [{"kind": "setup", "cell": i, "code": runnable(source(cells[i]))}
             for i in course.setup if course.section is None or i < course.section]
    by_solution = {e.solution: e for e in course.exercises}
    checks = {e.check for e in course.exercises}
    for i in range(course.section, course.end) if course.exercises else ():
        cell = cells[i]
        if cell.get("cell_type") != "code" or i in checks:
            continue
        if i not in by_solution:
            steps.append({"kind": "setup", "cell": i, "code": runnable(source(cell))})
            continue
        e = by_solution[i]
        mine = student_cell(student_nb, e.number, i)
        step = {"kind": "exercise", "exercise": e.number, "solution": "", "check": runnable(source(cells[e.check])),
                "forbid": ANSWERS.get(stem, {}).get(e.number, [])}
        if mine is None:
            step["missing"] = f"the solution cell of exercise {e.number} is missing from the submission"
        else:
            step["solution"] = runnable(source(mine))
        steps.append(step)
    return {"notebook": name, "exercise_timeout": exercise_timeout, "steps": steps}


def submissions(folder) -> list:
    """``[(student, notebook path)]``: every ``.ipynb`` under each subfolder of ``folder``."""
    if not os.path.isdir(folder):
        raise CourseError(f"no submissions folder at {folder}")
    loose = sorted(n for n in os.listdir(folder) if n.endswith(".ipynb"))
    if loose:
        raise CourseError(f"{os.path.join(folder, loose[0])}: whose is it? Put each student's notebooks in a "
                          f"folder of their own ({os.path.join(folder, '<student>', loose[0])})")
    found = []
    for student in sorted(os.listdir(folder)):
        top = os.path.join(folder, student)
        if student.startswith(".") or not os.path.isdir(top):
            continue
        for here, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [(student, os.path.join(here, f)) for f in sorted(files) if f.endswith(".ipynb")]
    return found


def copy_helpers(tutorials_dir, target):
    """The tutorials folder's data and helper files (everything but notebooks and hidden files) into ``target``."""
    for name in os.listdir(tutorials_dir):
        src = os.path.join(tutorials_dir, name)
        if name.startswith(".") or name == "__pycache__" or name.endswith(".ipynb"):
            continue
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(target, name), ignore=shutil.ignore_patterns(".*", "__pycache__"))
        elif os.path.isfile(src):
            shutil.copy(src, os.path.join(target, name))


def run_job(job, tutorials_dir, timeout) -> dict:
    """Run ``job`` in a fresh process and folder; ``{exercise number: (passed, message)}``."""
    with tempfile.TemporaryDirectory(prefix="minicnn-grade-") as work:
        copy_helpers(tutorials_dir, work)
        job_path, results = os.path.join(work, ".job.json"), os.path.join(work, ".results.jsonl")
        write_text(job_path, json.dumps(job))
        env = dict(os.environ, MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
        process = subprocess.Popen([sys.executable, "-m", "minicnn.course.runner", job_path, results], cwd=work,
                                   env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, start_new_session=True)
        timed_out = False
        try:
            _, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)         # the runner and anything it started
            _, err = process.communicate()
        graded = {}
        if os.path.exists(results):
            with open(results, encoding="utf-8") as f:
                for line in f:
                    row = json.loads(line)
                    graded[row["exercise"]] = (row["passed"], row["message"])
    pending = [s["exercise"] for s in job["steps"] if s["kind"] == "exercise" and s["exercise"] not in graded]
    for k, number in enumerate(pending):
        if timed_out:
            graded[number] = (False, f"the notebook ran out of its {timeout:g} s while this exercise ran: an "
                                     "endless loop, or far too slow" if k == 0 else
                              f"not graded: the notebook ran out of its {timeout:g} s before this exercise")
        else:
            tail = (err or b"").decode("utf-8", "replace").strip().splitlines()
            graded[number] = (False, "not graded: the grading process stopped"
                              + (f" ({tail[-1]})" if tail else f" (exit status {process.returncode})"))
    return graded


def grade_notebook(student, path, tutorials_dir, timeout=300, exercise_timeout=60) -> list:
    """The :class:`Grade` of every exercise of one submitted notebook."""
    name = os.path.basename(path)
    course_path = os.path.join(tutorials_dir, name)
    if not os.path.isfile(course_path):
        return [Grade(student, name, 0, "", 0, 0, f"not a notebook of this course (no {name} in {tutorials_dir})")]
    course_nb = read_notebook(course_path)
    course = exercise_section(course_nb, name)
    exercises = [(e.number, e.title, points_of(course_nb["cells"][e.check])) for e in course.exercises]
    try:
        student_nb = read_notebook(path)
    except CourseError as e:
        return [Grade(student, name, n, title, 0, points, f"not graded: {e}") for n, title, points in exercises]
    graded = run_job(grading_job(course_nb, student_nb, name, exercise_timeout), tutorials_dir, timeout)
    return [Grade(student, name, n, title, points if graded[n][0] else 0, points, graded[n][1])
            for n, title, points in exercises]


def grade(folder, out_csv, tutorials_dir=None, timeout=300, exercise_timeout=60, log=print) -> list:
    """Grade every notebook under ``folder`` (one subfolder per student); write ``out_csv``."""
    tutorials_dir = os.path.abspath(tutorials_dir or default_tutorials_dir())
    notebook_paths(tutorials_dir)                          # a missing tutorials folder fails here, before any run
    found = submissions(folder)
    if not found:
        raise CourseError(f"no notebooks under {folder}: expected one folder per student, "
                          f"e.g. {os.path.join(folder, 'alice', '02_convolution.ipynb')}")
    grades = []
    for student, path in found:
        rows = grade_notebook(student, path, tutorials_dir, timeout, exercise_timeout)
        grades += rows
        log(f"{student:<16} {os.path.basename(path):<34} {sum(g.points for g in rows):g} / "
            f"{sum(g.max_points for g in rows):g}")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(FIELDS)
    for g in grades:
        writer.writerow([g.student, g.notebook, g.exercise, g.title, f"{g.points:g}", f"{g.max_points:g}", g.message])
    write_text(out_csv, text.getvalue())
    log(f"wrote {len(grades)} grades of {len({s for s, _ in found})} student(s) to {out_csv}")
    return grades
