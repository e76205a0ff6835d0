"""The course, as a lecturer runs it: the student edition and site leak no solution, nbgrader's
metadata is on every exercise, the feedback names the mistake, and ``minicnn course grade``
scores a folder of submissions.

1. nbgrader metadata: every solution and check cell carries it, consistently; ``course tag`` is
   rerunnable and leaves each file's formatting as it was.
2. The student edition (``build-student``): self-contained (every link resolves inside the folder),
   readable by everyone even under a private umask, check cells locked, and no line of any
   solution anywhere in it (``course.solution_text``: a text search, not a marker search). The
   student site's sources (``build-site --student``) the same, and executed outputs are kept only
   before the Exercises section.
3. The feedback: for each core exercise, each planted mistake is named (probes chosen so that the
   wrong answers differ), the right answer passes, the library's own function is refused.
4. ``minicnn course grade`` on a folder of submissions: a correct one, an empty one (the student
   edition), one with a planted mistake in every core exercise, one that calls the library, one
   that loops forever (an exercise's time limit; a notebook's), with the expected points and
   messages, one process per notebook.
"""
import ast
import copy
import csv
import json
import os
import pathlib
import re
import stat

import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F
from minicnn.cli import commands as cli
from minicnn.course import feedback, forbid, grading, site
from minicnn.course import notebooks as course

ROOT = pathlib.Path(__file__).resolve().parent.parent
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))


def exercise(stem, number):
    nb = course.read_notebook(ROOT / "tutorials" / f"{stem}.ipynb")
    return nb, course.exercise_section(nb, stem).exercises[number - 1]


def solution_namespace(stem, number):
    """The namespace after running the reference solution of an exercise (its function defined)."""
    nb, e = exercise(stem, number)
    scope = {"np": np, "mc": mc, "F": F}
    exec(course.source(nb["cells"][e.solution]), scope)
    return scope


# -----------------------------------------------------------------------------
# 1. nbgrader metadata
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_every_exercise_carries_nbgrader_metadata_and_tag_is_rerunnable(path):
    raw = path.read_text(encoding="utf-8")
    nb = json.loads(raw)
    assert course.metadata_problems(nb, path.name) == []
    found = course.exercise_section(nb, path.name)
    for e in found.exercises:
        solution = nb["cells"][e.solution]["metadata"]["nbgrader"]
        check = nb["cells"][e.check]["metadata"]["nbgrader"]
        assert (solution["solution"], solution["grade"], solution["locked"]) == (True, False, False)
        assert (check["solution"], check["grade"], check["locked"]) == (False, True, True) and check["points"] > 0
        assert solution["grade_id"] == f"ex{e.number}" and check["grade_id"] == f"ex{e.number}-check"
    tagged = course.notebook_text(course.tag_notebook(copy.deepcopy(nb), path.name), ascii_only=raw.isascii())
    assert tagged.rstrip("\n") == raw.rstrip("\n"), "course tag would change this notebook: run `minicnn course tag`"


def test_tag_adds_the_metadata_keeps_hand_set_points_and_the_formatting(tmp_path, capsys):
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["## Exercises"]},
                    {"cell_type": "code", "execution_count": None, "metadata": {"tags": ["x"]}, "outputs": [],
                     "source": ["### BEGIN SOLUTION\n", "x = 1\n", "### END SOLUTION"]},
                    {"cell_type": "code", "execution_count": None, "outputs": [], "source": ["assert x == 1, 'x · 1'"],
                     "metadata": {"nbgrader": {"points": 3}}}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "01_a.ipynb").write_text(json.dumps(nb, indent=1, ensure_ascii=True))     # no final newline
    assert cli.main(["course", "tag", "--tutorials", str(folder)]) == 0
    text = (folder / "01_a.ipynb").read_text()
    assert text.isascii() and not text.endswith("\n") and "\\u00b7" in text            # as it was written
    tagged = json.loads(text)
    assert tagged["cells"][1]["metadata"] == {"nbgrader": course.solution_metadata(1), "tags": ["x"]}
    assert tagged["cells"][2]["metadata"]["nbgrader"] == course.check_metadata(1, points=3)
    assert list(tagged["cells"][1]["metadata"]) == ["nbgrader", "tags"]                 # sorted, as Jupyter writes
    assert cli.main(["course", "tag", "--tutorials", str(folder)]) == 0
    assert (folder / "01_a.ipynb").read_text() == text
    assert "1 notebook(s) updated" in capsys.readouterr().out


EXPECTED = {"want", "want_empty", "expected", "ref", "reference", "library"}


def shown_expected_values(check):
    """The expected values a check's assert messages print: ``{want}``, ``{want.ravel()[:3]}``... (a
    difference such as ``{np.abs(got - want).max()}`` or ``{want.shape}`` gives nothing away)."""
    shown = []
    for node in ast.walk(ast.parse(check)):
        if isinstance(node, ast.Assert) and node.msg is not None:
            for part in ast.walk(node.msg):
                if not isinstance(part, ast.FormattedValue):
                    continue
                root = part.value
                while isinstance(root, (ast.Attribute, ast.Subscript, ast.Call)):
                    if isinstance(root, ast.Attribute) and root.attr == "shape":
                        break
                    root = root.func if isinstance(root, ast.Call) else root.value
                if isinstance(root, ast.Name) and root.id in EXPECTED:
                    shown.append(ast.unparse(part.value))
    return shown


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_no_check_message_shows_the_expected_value(path):
    nb = course.read_notebook(path)
    for e in course.exercise_section(nb, path.name).exercises:
        shown = shown_expected_values(course.source(nb["cells"][e.check]))
        assert not shown, f"{path.name}, cell {e.check}: the check's message prints the answer: {shown}"


def test_the_message_rule_catches_a_leak():
    assert shown_expected_values('assert got == want, f"expected {want}, got {got}"') == ["want"]
    assert shown_expected_values('assert g == w, f"{want.ravel()[:3]} vs {np.abs(got - want).max()} {want.shape}"') == \
        ["want.ravel()[:3]"]


# -----------------------------------------------------------------------------
# 2. The student edition and the student site
# -----------------------------------------------------------------------------
def leaks(folder, suffixes=(".ipynb", ".md", ".html", ".txt")):
    """``[(file, solution line)]``: each tutorial's solution lines found in its own student files."""
    found = []
    for path in TUTORIALS:
        lines = course.solution_text(course.read_notebook(path), path.name)
        assert lines, f"{path.name}: no distinctive solution line to search for"
        for f in pathlib.Path(folder).rglob(path.stem + "*"):
            if f.is_file() and f.suffix in suffixes:
                text = f.read_text(encoding="utf-8")
                plain = re.sub(r"<[^>]+>", "", text)                          # a page: its text, not its tags
                found += [(f.name, line) for line in lines if line in text or line in plain]
    return found


def test_solution_text_finds_the_solutions_lines_only():
    nb, e = exercise("00_tour", 2)
    lines = course.solution_text(nb, "00_tour.ipynb")
    assert "e = np.exp(z - z.max(axis=1, keepdims=True))" in lines
    assert all(line not in course.source(nb["cells"][e.check]) for line in lines)


@pytest.fixture(scope="module")
def student_edition(tmp_path_factory):
    out = tmp_path_factory.mktemp("edition") / "students"
    old = os.umask(0o077)                          # a lecturer whose files are private by default
    try:
        course.build_student(str(out), log=lambda *a: None)
    finally:
        os.umask(old)
    return out


def test_the_student_edition_leaks_no_solution_and_locks_the_checks(student_edition):
    assert leaks(student_edition) == []
    for path in TUTORIALS:
        original = course.read_notebook(path)
        found = course.exercise_section(original, path.name)
        student = course.read_notebook(student_edition / path.name)
        for e in found.exercises:
            check = student["cells"][e.check]["metadata"]
            assert check["editable"] is False and check["deletable"] is False and check["nbgrader"]["locked"]
            assert student["cells"][e.solution]["metadata"]["nbgrader"]["grade_id"] == f"ex{e.number}"


def test_the_student_edition_stands_alone_and_everyone_can_read_it(student_edition):
    for f in [student_edition, *student_edition.rglob("*")]:
        mode = stat.S_IMODE(f.stat().st_mode)
        assert mode & 0o044 == 0o044, f"{f} is not readable by others ({oct(mode)})"
        if f.is_dir():
            assert mode & 0o011 == 0o011, f"{f}: others cannot enter it ({oct(mode)})"
    checked = 0
    for f in [*student_edition.glob("*.ipynb"), student_edition / "README.md"]:
        text = f.read_text(encoding="utf-8")
        if f.suffix == ".ipynb":                                             # the prose: its markdown cells
            text = "\n".join(course.source(c) for c in json.loads(text)["cells"] if c["cell_type"] == "markdown")
        for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+:", target):                               # https:, mailto:
                continue
            assert not target.startswith(".."), f"{f.name} links outside the edition: {target}"
            assert (f.parent / target).exists(), f"{f.name}: the link {target} leads nowhere"
            checked += 1
    assert checked > 50
    assert (student_edition / "source" / "minicnn" / "functional" / "conv.py").read_text() == \
        (ROOT / "minicnn" / "functional" / "conv.py").read_text()


def test_the_student_site_sources_leak_no_solution(tmp_path):
    stage = site.stage_student_sources(str(tmp_path / "stage"), execute=False, log=lambda *a: None)
    assert leaks(pathlib.Path(stage) / "tutorials") == []
    assert (tmp_path / "stage" / "docs" / "conf.py").exists() and not (tmp_path / "stage" / ".git").exists()
    assert sorted(p.name for p in (tmp_path / "stage" / "tutorials").glob("*.ipynb")) == [p.name for p in TUTORIALS]


def test_the_student_site_keeps_the_outputs_before_the_exercises_only():
    nb, e = exercise("00_tour", 2)
    ran = copy.deepcopy(nb)
    for cell in ran["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["printed\n"]}]
    ran["cells"][e.solution]["outputs"][0]["text"] = ["e = np.exp(z - z.max(axis=1, keepdims=True))\n"]
    student = site.student_site_notebook(nb, "00_tour.ipynb", outputs_from=ran)
    section = course.exercise_section(nb).section
    codes = [i for i, c in enumerate(student["cells"]) if c["cell_type"] == "code"]
    assert all(student["cells"][i]["outputs"] for i in codes if i < section)
    assert not any(student["cells"][i]["outputs"] for i in codes if i > section)
    assert "z.max(axis=1" not in json.dumps(student)


def test_the_student_site_takes_the_outputs_from_myst_nbs_cache(tmp_path):
    """A notebook whose code is in the execution cache is not run again: its cached outputs are used."""
    nbformat = pytest.importorskip("nbformat")
    jupyter_cache = pytest.importorskip("jupyter_cache")
    from jupyter_cache.base import CacheBundleIn
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("raise SystemExit('this would fail if it ran')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "x.ipynb")
    ran = copy.deepcopy(nb)
    ran.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="from the cache\n")]
    jupyter_cache.get_cache(str(tmp_path / "cache")).cache_notebook_bundle(CacheBundleIn(ran, str(tmp_path / "x.ipynb")),
                                                                           check_validity=False)
    out = site.executed(str(tmp_path / "x.ipynb"), cache_dir=str(tmp_path / "cache"))
    assert "".join(out["cells"][0]["outputs"][0]["text"]) == "from the cache\n"


# -----------------------------------------------------------------------------
# 3. Feedback that names the mistake
# -----------------------------------------------------------------------------
def rotated_correlation(g, w, p, flip=(True, True), swap=True, before=None, after=None):
    """The input gradient of a stride-1 convolution, right by default, wrong in the ways the arguments say."""
    k = w.shape[-1]
    w = w.transpose(1, 0, 2, 3) if swap else w
    w = w[:, :, ::-1 if flip[0] else 1, ::-1 if flip[1] else 1]
    return feedback.correlate(g, w, k - 1 - p if before is None else before, k - 1 - p if after is None else after)


MISTAKES = {   # (checker, (notebook, exercise), the function's name): [(a wrong answer, words of its message)]
    (feedback.check_softmax_rows, ("00_tour", 2), "softmax_rows"): [
        (feedback.softmax_literal, "maximum is not subtracted"),
        (feedback.softmax_global_max, "one maximum for the whole array"),
        (feedback.softmax_sum_without_keepdims, "without keepdims"),
        (feedback.softmax_over_columns, "down the columns"),
        (lambda z: F.softmax(mc.tensor(z), dim=1).numpy(), "compute it yourself"),
    ],
    (feedback.check_col2im, ("02_convolution", 1), "col2im_loops"): [
        (lambda *a: feedback.place_windows(*a, combine="set"), "overwrite"),
        (lambda *a: feedback.place_windows(*a, combine="mean"), "averaged instead of summed"),
        (lambda *a: feedback.place_windows(*a, crop="start"), "bottom and right only"),
        (lambda *a: feedback.place_windows(*a, use_stride=False), "stride is ignored"),
    ],
    (feedback.check_conv2d_direct, ("02_convolution", 4), "conv2d_direct"): [
        (lambda x, w, b, p: feedback.correlate(x, w[:, :, ::-1, ::-1], p) + b.reshape(1, -1, 1, 1), "kernel is flipped"),
        (lambda x, w, b, p: feedback.correlate(x, w, p, 0) + b.reshape(1, -1, 1, 1), "one side only"),
        (lambda x, w, b, p: feedback.correlate(x, w, 2 * p, 0) + b.reshape(1, -1, 1, 1), "all the padding went to one side"),
        (lambda x, w, b, p: feedback.correlate(x, w, p), "bias is left out"),
        (lambda x, w, b, p: F.conv2d(mc.tensor(x), mc.tensor(w), mc.tensor(b), padding=p).numpy(), "compute it yourself"),
    ],
    (feedback.check_conv2d_input_grad, ("02_convolution", 5), "conv2d_input_grad"): [
        (lambda g, w, p: rotated_correlation(g, w, p, flip=(False, False)), "not rotated by 180° (or rotated twice"),
        (lambda g, w, p: rotated_correlation(g, w, p, flip=(True, False)), "one axis only"),
        (lambda g, w, p: rotated_correlation(g, w, p, swap=False), "channel axes of the kernel are not swapped"),
        (lambda g, w, p: rotated_correlation(g, w, p, before=p, after=p), "padded by the forward pass's padding"),
        (lambda g, w, p: rotated_correlation(g, w, p, after=0), "padded on one side only"),
    ],
    (feedback.check_conv1x1, ("02_convolution", 3), "conv1x1"): [
        (feedback.conv1x1_channels_not_moved, "without moving the channel axis"),
        (feedback.conv1x1_output_not_moved, "without moving its axes back"),
        (lambda x, w: F.conv2d(mc.tensor(x, dtype="float64"), mc.tensor(w, dtype="float64")).numpy(), "compute it yourself"),
    ],
    (feedback.check_max_pool_backward, ("03_activations_pooling", 2), "max_pool_2x2_backward"): [
        (lambda x, g: feedback.pool_backward_with(x, g, feedback.last_max), "last maximum"),
        (lambda x, g: feedback.pool_backward_with(x, g, feedback.every_max), "every tied maximum"),
        (lambda x, g: feedback.pool_backward_with(x, g, feedback.first_max_column_by_column), "column by column"),
        (lambda x, g: feedback.pool_backward_with(x, g, lambda w: np.full(w.shape, 0.25)), "average pooling"),
        (lambda x, g: feedback.pool_backward_with(x, g, lambda w: np.ones(w.shape)), "copied to all four"),
    ],
    (feedback.check_batch_norm_eval, ("05_batchnorm_dropout", 1), "batch_norm_eval"): [
        (lambda x, m, v, g, b, e=1e-5: feedback.bn_eval_with(x, m, v, g, b, e, lambda v, e: np.sqrt(v) + e),
         "added to the standard deviation"),
        (lambda x, m, v, g, b, e=1e-5: feedback.bn_eval_with(x, m, v, g, b, e, lambda v, e: v + e), "divided by the variance"),
        (lambda x, m, v, g, b, e=1e-5: feedback.bn_eval_with(x, m, v, b, g, e, lambda v, e: np.sqrt(v + e)), "swapped"),
        (lambda x, m, v, g, b, e=1e-5: feedback.bn_eval_with(x, x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3)), g, b, e,
                                                             lambda v, e: np.sqrt(v + e)), "batch's own mean"),
    ],
    (feedback.check_running_stats, ("05_batchnorm_dropout", 2), "running_stats"): [
        (lambda b, mo: feedback.running_stats_with(b, mo, lambda x: x.var(axis=(0, 2, 3))), "biased variance (dividing by m)"),
        (lambda b, mo: feedback.running_stats_with(b, mo, feedback.unbiased, True), "Keras's convention"),
        (lambda b, mo: feedback.running_stats_with(b, mo, lambda x: x.var(axis=(2, 3), ddof=1).mean(axis=0)),
         "each image's variance"),
    ],
    (feedback.check_adam_path, ("06_optimizers_schedules", 1), "adam_path"): [
        (lambda *a: feedback.adam_with(*a, correct_m=False, correct_v=False), "bias correction is missing"),
        (lambda *a: feedback.adam_with(*a, correct_m=False), "only the second moment"),
        (lambda *a: feedback.adam_with(*a, correct_v=False), "only the first moment"),
        (lambda *a: feedback.adam_with(*a, eps_inside=True), "eps is inside the square root"),
        (lambda w, g, lr, b, e: feedback.adam_with(w, g, lr, (b[1], b[0]), e), "betas are swapped"),
    ],
}


@pytest.mark.parametrize("checker, where, name", list(MISTAKES), ids=lambda v: v if isinstance(v, str) else "")
def test_feedback_passes_the_solution_and_names_each_planted_mistake(checker, where, name):
    assert checker(solution_namespace(*where)[name]) is None
    for wrong, words in MISTAKES[checker, where, name]:
        message = checker(wrong)
        assert message is not None and words in message, f"{name}: expected a message naming '{words}', got {message!r}"
        assert not re.search(r"\d\.\d{4,}", message), f"a message should not show the numbers: {message}"
    scrambled = checker(lambda *a: np.asarray(solution_namespace(*where)[name](*a)) * 1.5 + 0.25)
    assert "none of the usual mistakes matches" in scrambled, scrambled

    def stub(*args):
        raise NotImplementedError("exercise: do it")

    with pytest.raises(NotImplementedError):                         # the stub fails as it says
        checker(stub)


def test_forbidden_refuses_the_library_inside_the_block_only_and_puts_everything_back():
    original = F.max_pool2d
    scope = {"mp": F.max_pool2d}
    x = mc.tensor(np.arange(16.0).reshape(1, 1, 4, 4))
    with forbid.forbidden(["minicnn.functional.max_pool2d"], namespaces=[scope]):
        for call in (lambda: F.max_pool2d(x, 2), lambda: scope["mp"](x, 2)):
            with pytest.raises(forbid.ForbiddenCall, match="minicnn.functional.max_pool2d is what this exercise"):
                call()
    assert F.max_pool2d is original and scope["mp"] is original
    assert F.max_pool2d(x, 2).numpy().ravel().tolist() == [5, 7, 13, 15]


def test_forbidden_an_inherited_method_is_refused_and_the_class_left_as_it_was():
    from minicnn import nn, optim
    assert "step" not in vars(optim.AdamW)                   # AdamW inherits Adam.step
    before = dict(vars(optim.AdamW))
    with forbid.forbidden(["minicnn.optim.AdamW.step"]):
        with pytest.raises(forbid.ForbiddenCall, match="minicnn.optim.AdamW.step"):
            optim.AdamW([nn.Parameter(mc.tensor(np.ones(2)))]).step()
    assert dict(vars(optim.AdamW)) == before


def test_forbidden_only_from_student_code_lets_the_check_call_the_library():
    student = compile("def mine(x):\n    return F.softmax(x, dim=1)\n", "<student: exercise 1>", "exec")
    scope = {"F": F}
    exec(student, scope)
    x = mc.tensor(np.zeros((1, 3)))
    with forbid.forbidden(["minicnn.functional.softmax"], namespaces=[scope], only_from="<student"):
        assert np.allclose(F.softmax(x, dim=1).numpy(), 1 / 3)          # the check's own call
        with pytest.raises(forbid.ForbiddenCall):
            scope["mine"](x)


def test_every_answer_name_exists():
    missing = [name for table in forbid.ANSWERS.values() for names in table.values() for name in names
               if name.startswith("minicnn.") and forbid.resolve(name) is None]
    assert missing == []


# -----------------------------------------------------------------------------
# 4. minicnn course grade
# -----------------------------------------------------------------------------
PLANTED = {    # notebook: {exercise: (the text in its solution, replaced by, words of the grade's message)}
    "00_tour": {1: ("p.data -= lr", "p.data += lr", "should be w - lr * grad"),
                2: ("np.exp(z - z.max(axis=1, keepdims=True))", "np.exp(z)", "maximum is not subtracted")},
    "02_convolution": {1: ("] += window", "] = window", "overwrite each other"),
                       4: ("np.tensordot(window, w,", "np.tensordot(window, w[:, :, ::-1, ::-1],", "kernel is flipped"),
                       5: ("w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]", "w.transpose(1, 0, 2, 3)", "not rotated by 180°"),
                       3: ("x.transpose(1, 0, 2, 3).reshape(C, -1)", "x.reshape(C, -1)", "without moving the channel axis")},
    "03_activations_pooling": {2: ("winner = windows.argmax(axis=-1)", "winner = 3 - windows[..., ::-1].argmax(axis=-1)",
                                   "last maximum")},
    "05_batchnorm_dropout": {1: ("np.sqrt(running_var.reshape(shape) + eps)", "(np.sqrt(running_var.reshape(shape)) + eps)",
                                 "added to the standard deviation"),
                             2: (" * m / (m - 1)", "", "biased variance")},
    "06_optimizers_schedules": {1: ("m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)", "m_hat, v_hat = m, v",
                                    "bias correction is missing"),
                                2: ("return 2.0 / max(curvatures)", "return 0.04", "just below the true limit")},
}


def with_solution(nb, stem, number, text):
    nb = copy.deepcopy(nb)
    e = course.exercise_section(nb, stem).exercises[number - 1]
    nb["cells"][e.solution]["source"] = course.as_lines(text)
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """One `minicnn course grade` run over five students (one process per notebook: 26, ~2 min on 2 cores)."""
    base = tmp_path_factory.mktemp("grading")
    subs = base / "submitted"
    tutorials = {stem: course.read_notebook(ROOT / "tutorials" / f"{stem}.ipynb") for stem in PLANTED}
    edition = base / "edition"
    course.build_student(str(edition), log=lambda *a: None)

    def hand_in(student, stem, nb):
        folder = subs / student / "assignment1"                  # nbgrader's submitted/<student>/<assignment>/
        folder.mkdir(parents=True, exist_ok=True)
        course.write_notebook(nb, folder / f"{stem}.ipynb")

    for path in TUTORIALS:                    # every reference solution: no forbidden name blocks one of them
        hand_in("correct", path.stem, course.read_notebook(path))
    hand_in("empty", "06_optimizers_schedules", course.read_notebook(edition / "06_optimizers_schedules.ipynb"))
    (subs / "empty" / "assignment1" / "00_tour.ipynb").write_text("")            # an empty file
    (subs / "empty" / "assignment1" / "my_notes.ipynb").write_text("{}")         # not a notebook of the course
    for stem, planted in PLANTED.items():
        nb = tutorials[stem]
        for number, (old, new, _) in planted.items():
            e = course.exercise_section(nb, stem).exercises[number - 1]
            text = course.source(nb["cells"][e.solution])
            assert old in text, f"{stem} exercise {number}: the planted mistake no longer applies"
            nb = with_solution(nb, stem, number, text.replace(old, new))
        hand_in("mistakes", stem, nb)
    library = with_solution(tutorials["00_tour"], "00_tour", 2, "from minicnn.functional import softmax as sm\n"
                            "def softmax_rows(z):\n    return sm(mc.tensor(z, dtype='float64'), dim=1).numpy()\n")
    library = with_solution(library, "00_tour", 1, "def sgd_step(model, x, y, lr):\n"
                            "    loss = F.cross_entropy(model(x), y)\n    model.zero_grad()\n    loss.backward()\n"
                            "    mc.optim.SGD(model.parameters(), lr=lr).step()\n    return loss.item()\n")
    hand_in("library", "00_tour", library)
    hand_in("endless", "06_optimizers_schedules", with_solution(tutorials["06_optimizers_schedules"], "06_optimizers_schedules",
                                                                1, "def adam_path(*args, **kwargs):\n    while True:\n        pass\n"))
    out = base / "grades.csv"
    assert cli.main(["course", "grade", str(subs), "--out", str(out), "--timeout", "120", "--exercise-timeout", "4"]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    return {(r["student"], r["notebook"][:-len(".ipynb")], int(r["exercise"])): r for r in rows}


@pytest.mark.slow
def test_grade_scores_a_correct_and_an_empty_submission(graded):
    correct = [row for key, row in graded.items() if key[0] == "correct"]
    assert len(correct) == len(course.list_exercises())
    for row in correct:
        assert (row["points"], row["message"]) == (row["max_points"], "passed"), row
    for number in (1, 2):
        blank = graded["empty", "00_tour", number]
        assert blank["points"] == "0" and "not graded" in blank["message"] and "not a readable notebook" in blank["message"]
    assert "not a notebook of this course" in graded["empty", "my_notes", 0]["message"]
    for number in (1, 2):
        empty = graded["empty", "06_optimizers_schedules", number]
        assert empty["points"] == "0" and "not done" in empty["message"]
    assert graded["correct", "06_optimizers_schedules", 1]["title"] == "Adam by hand"


@pytest.mark.slow
def test_grade_names_each_planted_mistake(graded):
    for stem, planted in PLANTED.items():
        for number, (_, _, words) in planted.items():
            row = graded["mistakes", stem, number]
            assert row["points"] == "0" and words in row["message"], f"{stem} exercise {number}: {row['message']}"
    assert "0.04" not in graded["mistakes", "06_optimizers_schedules", 2]["message"]          # the answer is not leaked
    untouched = graded["mistakes", "02_convolution", 2]                                       # no mistake planted there
    assert untouched["points"] == "1", untouched["message"]


@pytest.mark.slow
def test_grade_refuses_the_librarys_answer(graded):
    for number, name in ((1, "minicnn.optim.SGD.step"), (2, "minicnn.functional.softmax")):
        row = graded["library", "00_tour", number]
        assert row["points"] == "0" and f"{name} is what this exercise asks you to write" in row["message"], row


@pytest.mark.slow
def test_grade_stops_endless_loops_and_keeps_the_other_grades(graded):
    loop = graded["endless", "06_optimizers_schedules", 1]
    assert loop["points"] == "0" and "stopped after 4 s" in loop["message"]
    assert graded["endless", "06_optimizers_schedules", 2]["points"] == "1"      # the next exercise still graded


@pytest.mark.slow
def test_grade_kills_a_notebook_that_outlives_its_time_limit(tmp_path):
    """A cell that swallows the exercise's alarm: the notebook's own limit kills its process."""
    nb = course.read_notebook(ROOT / "tutorials" / "06_optimizers_schedules.ipynb")
    hang = with_solution(nb, "06_optimizers_schedules", 1, "import time\ntry:\n    time.sleep(600)\n"
                         "except BaseException:\n    time.sleep(600)\n")
    (tmp_path / "subs" / "hangs").mkdir(parents=True)
    course.write_notebook(hang, tmp_path / "subs" / "hangs" / "06_optimizers_schedules.ipynb")
    grades = grading.grade(str(tmp_path / "subs"), str(tmp_path / "g.csv"), timeout=10, exercise_timeout=2,
                           log=lambda *a: None)
    assert [(g.exercise, g.points) for g in grades] == [(1, 0), (2, 0)]
    assert "ran out of its 10 s while this exercise ran" in grades[0].message
    assert "not graded: the notebook ran out of its 10 s before this exercise" in grades[1].message


def test_grade_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["course", "grade", str(tmp_path / "nowhere")]) == 2
    assert "no submissions folder" in capsys.readouterr().err
    (tmp_path / "subs").mkdir()
    assert cli.main(["course", "grade", str(tmp_path / "subs")]) == 2
    assert "no notebooks under" in capsys.readouterr().err
    assert cli.main(["course", "grade", str(tmp_path / "subs"), "--timeout", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
    (tmp_path / "subs" / "02_convolution.ipynb").write_text("{}")
    assert cli.main(["course", "grade", str(tmp_path / "subs")]) == 2
    err = capsys.readouterr().err
    assert "whose is it?" in err and os.path.join("<student>", "02_convolution.ipynb") in err and err.count("\n") == 1


# -----------------------------------------------------------------------------
# 5. Hidden tests (nbgrader's ### BEGIN HIDDEN TESTS), on a hand-made course
# -----------------------------------------------------------------------------
def hand_made_course(folder):
    """A one-exercise course whose check has a hidden test."""
    def cell(kind, text):
        c = {"cell_type": kind, "metadata": {}, "source": course.as_lines(text)}
        return c if kind == "markdown" else {**c, "execution_count": None, "outputs": []}

    nb = {"cells": [cell("markdown", "## Exercises"), cell("markdown", "### Exercise 1 — double it"),
                    cell("code", "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"),
                    cell("code", "assert double(2) == 4, 'double(2) is not right'\n### BEGIN HIDDEN TESTS\n"
                                 "assert double(5) == 10 and double(-1) == -2, 'double is not right (a hidden test)'\n"
                                 "### END HIDDEN TESTS\nprint('ok')")],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    folder.mkdir(parents=True)
    course.write_notebook(course.tag_notebook(nb, "01_double.ipynb"), folder / "01_double.ipynb")
    return nb


def test_hidden_tests_stay_out_of_the_student_edition_and_grade_the_submission(tmp_path):
    nb = hand_made_course(tmp_path / "course")
    course.build_student(str(tmp_path / "students"), str(tmp_path / "course"), log=lambda *a: None)
    text = (tmp_path / "students" / "01_double.ipynb").read_text()
    assert "HIDDEN" not in text and "double(5)" not in text and "double(2) == 4" in text and "print('ok')" in text
    assert course.solution_text(nb) >= {"return 2 * x", "assert double(5) == 10 and double(-1) == -2, 'double is not right (a hidden test)'"}
    for student, answer in (("honest", "return 2 * x"), ("fits_the_visible_check", "return 4 if x == 2 else 0")):
        folder = tmp_path / "subs" / student
        folder.mkdir(parents=True)
        mine = copy.deepcopy(nb)
        mine["cells"][2]["source"] = course.as_lines(f"def double(x):\n    {answer}\n")
        course.write_notebook(mine, folder / "01_double.ipynb")
    grades = grading.grade(str(tmp_path / "subs"), str(tmp_path / "g.csv"), str(tmp_path / "course"), log=lambda *a: None)
    assert [(g.student, g.points, g.message) for g in grades] == [
        ("fits_the_visible_check", 0, "check failed: double is not right (a hidden test)"), ("honest", 1, "passed")]


def test_hidden_tests_outside_a_check_cell_are_an_error():
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["## Exercises"]},
                    {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                     "source": course.as_lines("### BEGIN HIDDEN TESTS\nassert True, 'x'\n### END HIDDEN TESTS")}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    with pytest.raises(course.CourseError, match="hw.ipynb, cell 1: hidden tests .* belong in a check cell"):
        course.exercise_section(nb, "hw.ipynb")
