"""The course tooling, apart from the library: exercises, the student edition, grading (``minicnn course``).

* ``notebooks.py`` — read the tutorials, find the exercises (nbgrader markers and metadata), write
  the student edition, prove every check fails on its stub;
* ``forbid.py``    — the library's answer to an exercise refuses to run inside the student's code;
* ``feedback.py``  — checks whose probes tell the common mistakes apart, and name them;
* ``grading.py``   — ``minicnn course grade``: every submission in its own process, a CSV of scores
  (``runner.py`` is that process);
* ``site.py``      — ``minicnn course build-site [--student]``;
* ``cli.py``       — ``minicnn course list / build-student / build-site / tag / grade``.
"""
from .notebooks import (Course, CourseError, Exercise, build_student, default_tutorials_dir, list_exercises,
                        metadata_problems, notebook_paths, prove_checks, solution_text, strip_solutions,
                        student_notebook, tag_notebook, tag_tutorials)

__all__ = ["Course", "CourseError", "Exercise", "build_student", "default_tutorials_dir", "list_exercises",
           "metadata_problems", "notebook_paths", "prove_checks", "solution_text", "strip_solutions",
           "student_notebook", "tag_notebook", "tag_tutorials"]
