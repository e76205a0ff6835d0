"""``minicnn course``: the exercises of the tutorials, the student edition, grading (:mod:`minicnn.course`).

    minicnn course list                               # every exercise, notebook by notebook
    minicnn course build-student students/           # the tutorials with stubs instead of solutions
    minicnn course build-student students/ --tutorials my_course/
    minicnn course build-site site/ --student        # the web site without solutions
    minicnn course tag                                # (re)write nbgrader's metadata in the tutorials
    minicnn course grade submitted/ --out grades.csv  # run the checks on every student's notebooks
"""
from __future__ import annotations


def add_parser(subparsers):
    c = subparsers.add_parser("course", help="the tutorials' exercises; the student edition; grading")
    sub = c.add_subparsers(dest="course_command", required=True)
    b = sub.add_parser("build-student", help="write the tutorials without solutions (stubs instead) to OUT_DIR")
    b.add_argument("out_dir", metavar="OUT_DIR")
    b.add_argument("--tutorials", default=None, metavar="DIR",
                   help="the notebooks with solutions (default: the repository's tutorials/ folder)")
    b.set_defaults(func=cmd_build_student)
    ls = sub.add_parser("list", help="list the exercises of every tutorial")
    ls.add_argument("--tutorials", default=None, metavar="DIR")
    ls.set_defaults(func=cmd_list)
    t = sub.add_parser("tag", help="add nbgrader's metadata (grade ids, points, locked checks) to the tutorials")
    t.add_argument("--tutorials", default=None, metavar="DIR")
    t.set_defaults(func=cmd_tag)
    g = sub.add_parser("grade", help="run the checks on a folder of submissions (one subfolder per student)")
    g.add_argument("submissions", metavar="SUBMISSIONS")
    g.add_argument("--out", default="grades.csv", metavar="CSV", help="where to write the grades (default grades.csv)")
    g.add_argument("--tutorials", default=None, metavar="DIR", help="the notebooks with solutions and checks")
    g.add_argument("--timeout", type=float, default=300, metavar="S", help="seconds per notebook (default 300)")
    g.add_argument("--exercise-timeout", type=float, default=60, metavar="S",
                   help="seconds per exercise (default 60)")
    g.set_defaults(func=cmd_grade)
    s = sub.add_parser("build-site", help="build the web site (with --student: without solutions)")
    s.add_argument("out_dir", metavar="OUT_DIR")
    s.add_argument("--student", action="store_true", help="the student edition: no solution anywhere")
    s.add_argument("--execute", choices=["cache", "force", "off"], default="cache",
                   help="run the notebooks (cache: only those whose code changed; off: prose only)")
    s.set_defaults(func=cmd_build_site)


def run(action):
    """Call ``action()``, turning a CourseError into the CLI's one-line error."""
    from .notebooks import CourseError
    from ..cli.commands import CLIError
    try:
        return action()
    except CourseError as e:
        raise CLIError(str(e)) from None


def cmd_build_student(args):
    from . import notebooks as course
    run(lambda: course.build_student(args.out_dir, args.tutorials))
    return 0


def cmd_tag(args):
    from . import notebooks as course
    run(lambda: course.tag_tutorials(args.tutorials))
    return 0


def cmd_grade(args):
    from . import grading
    from ..cli.commands import CLIError
    if args.timeout <= 0 or args.exercise_timeout <= 0:
        raise CLIError(f"--timeout and --exercise-timeout must be positive, got {args.timeout} and "
                       f"{args.exercise_timeout}")
    run(lambda: grading.grade(args.submissions, args.out, args.tutorials, args.timeout, args.exercise_timeout))
    return 0


def cmd_build_site(args):
    from . import site
    return run(lambda: site.build_site(args.out_dir, student=args.student, execute=args.execute))


def cmd_list(args):
    from . import notebooks as course
    rows = run(lambda: course.list_exercises(args.tutorials))
    current = None
    for name, e in rows:
        if name != current:
            print(name)
            current = name
        print(f"  {e.number}. {e.title}  (solution: cell {e.solution}, check: cell {e.check})")
    print(f"{len(rows)} exercises in {len({name for name, _ in rows})} notebooks")
    return 0
