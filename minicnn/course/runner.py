"""Run one student notebook's exercises against the course's checks, in this process (the grader
starts one per notebook: ``python -m minicnn.course.runner JOB.json RESULTS.jsonl``).

The job (written by :func:`minicnn.course.grading.grading_job`) is a list of steps, in the
notebook's order: ``setup`` cells (the course's own code, as in the instructor's notebook) and
``exercise`` steps (the student's solution cell, then the course's check cell). All share one
namespace, as the cells of a notebook share a kernel.

For each exercise, one JSON line goes to RESULTS as soon as it is graded (so a notebook stopped
by its time limit still keeps the grades of the exercises before):
``{"exercise": 2, "passed": false, "message": "..."}``. While the student's cell and the check
run, the library functions that the exercise asks for are forbidden to the student's code
(:func:`minicnn.course.forbid.forbidden` with ``only_from="<student"``: the student's cell is
compiled under the file name ``<student: exercise N>``), and a per-exercise time limit stops an
endless loop written in Python.
"""
from __future__ import annotations

import contextlib
import json
import signal
import sys
import traceback

from .forbid import ForbiddenCall, forbidden


class TimeLimit(BaseException):
    """Raised in the student's code when its exercise ran out of time (a BaseException, so that an
    ``except Exception`` in the student's code does not swallow it)."""


@contextlib.contextmanager
def time_limit(seconds):
    """Raise :class:`TimeLimit` in the main thread after ``seconds`` (SIGALRM; none on Windows)."""
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return

    def stop(signum, frame):
        raise TimeLimit()

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def first_line(error) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def where_in_student_code(error) -> str:
    """' (line N of your cell)' for the innermost frame of the student's code in the traceback."""
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename.startswith("<student")]
    return f" (line {lines[-1]} of your cell)" if lines else ""


def grade_exercise(step, namespace, seconds):
    """``(passed, message)`` for one exercise step."""
    number = step["exercise"]
    if step.get("missing"):
        return False, step["missing"]
    stage = "your cell"
    try:
        # the time limit inside: its alarm can never interrupt forbidden() putting the library back
        with forbidden(step.get("forbid", []), namespaces=[namespace], only_from="<student"), time_limit(seconds):
            exec(compile(step["solution"], f"<student: exercise {number}>", "exec"), namespace)
            stage = "the check"
            exec(compile(step["check"], f"<check: exercise {number}>", "exec"), namespace)
    except TimeLimit:
        return False, f"stopped after {seconds:g} s while {stage} ran: an endless loop, or far too slow"
    except NotImplementedError:
        return False, "not done: the cell still raises NotImplementedError"
    except ForbiddenCall as e:
        return False, f"{e}"
    except AssertionError as e:
        return False, f"check failed: {str(e).strip() or 'an assert without a message'}"
    except SyntaxError as e:
        return False, f"{stage} is not valid Python: {e.msg} (line {e.lineno})"
    except BaseException as e:                       # anything the student's code raised, or SystemExit
        return False, f"{first_line(e)} in {stage}{where_in_student_code(e)}"
    return True, "passed"


def run(job_path, results_path):
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    namespace = {"__name__": "__main__"}
    seconds = job.get("exercise_timeout")
    setup_error = None
    with open(results_path, "a", encoding="utf-8") as out:
        for step in job["steps"]:
            if step["kind"] == "setup":
                try:
                    exec(compile(step["code"], f"<setup: cell {step['cell']}>", "exec"), namespace)
                except BaseException as e:          # the course's own cell failed: say so with each grade
                    setup_error = setup_error or f"cell {step['cell']} of the course failed: {first_line(e)}"
                continue
            passed, message = grade_exercise(step, namespace, seconds)
            if not passed and setup_error:
                message += f" [{setup_error}]"
            out.write(json.dumps({"exercise": step["exercise"], "passed": passed, "message": message}) + "\n")
            out.flush()


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
