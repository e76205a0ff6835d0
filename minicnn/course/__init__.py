"""The course tooling, apart from the library: exercises, the student edition (``minicnn course``).

* ``notebooks.py`` — read the tutorials, find the exercises (nbgrader markers), write the student
  version, prove every check fails on its stub;
* ``cli.py``       — ``minicnn course list`` / ``build-student``.
"""
from .notebooks import (Course, CourseError, Exercise, build_student, default_tutorials_dir, list_exercises,
                        notebook_paths, prove_checks, strip_solutions, student_notebook)

__all__ = ["Course", "CourseError", "Exercise", "build_student", "default_tutorials_dir", "list_exercises",
           "notebook_paths", "prove_checks", "strip_solutions", "student_notebook"]
