"""``minicnn course``: the exercises of the tutorials, and their student version (:mod:`minicnn.course`).

    minicnn course list                               # every exercise, notebook by notebook
    minicnn course build-student students/           # the tutorials with stubs instead of solutions
    minicnn course build-student students/ --tutorials my_course/
"""
from __future__ import annotations


def add_parser(subparsers):
    c = subparsers.add_parser("course", help="the tutorials' exercises; build the student version")
    sub = c.add_subparsers(dest="course_command", required=True)
    b = sub.add_parser("build-student", help="write the tutorials without solutions (stubs instead) to OUT_DIR")
    b.add_argument("out_dir", metavar="OUT_DIR")
    b.add_argument("--tutorials", default=None, metavar="DIR",
                   help="the notebooks with solutions (default: the repository's tutorials/ folder)")
    b.set_defaults(func=cmd_build_student)
    ls = sub.add_parser("list", help="list the exercises of every tutorial")
    ls.add_argument("--tutorials", default=None, metavar="DIR")
    ls.set_defaults(func=cmd_list)


def cmd_build_student(args):
    from . import notebooks as course
    from ..cli.commands import CLIError
    try:
        course.build_student(args.out_dir, args.tutorials)
    except course.CourseError as e:
        raise CLIError(str(e)) from None
    return 0


def cmd_list(args):
    from . import notebooks as course
    from ..cli.commands import CLIError
    try:
        rows = course.list_exercises(args.tutorials)
    except course.CourseError as e:
        raise CLIError(str(e)) from None
    current = None
    for name, e in rows:
        if name != current:
            print(name)
            current = name
        print(f"  {e.number}. {e.title}  (solution: cell {e.solution}, check: cell {e.check})")
    print(f"{len(rows)} exercises in {len({name for name, _ in rows})} notebooks")
    return 0
