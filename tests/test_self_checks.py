"""Each self-check listed in tutorials/self_checks.toml fails when its subject is broken, and passes as written.

The exercises' checks are proven against their stubs in tests/test_course.py; the
self-checks in the body of the notebooks have no stub, so tutorials/self_checks.toml
says how to break each one's subject (minicnn/course/selfchecks.py). One fresh
kernel per notebook runs its code cells once, and at each listed check the broken
variant (must fail with AssertionError) then the cells as written (must pass).
Notebooks that train a network first are marked slow.
"""
import json
import pathlib

import pytest

from minicnn.course import selfchecks
from minicnn.course.notebooks import read_notebook

pytest.importorskip("nbclient", reason="nbclient comes with the dev extra: pip install -e '.[dev]'")

TUTORIALS = pathlib.Path(__file__).resolve().parent.parent / "tutorials"
BREAKAGES = selfchecks.load_breakages(str(TUTORIALS))
NOTEBOOKS = sorted({b.notebook for b in BREAKAGES})
SLOW = {"00_tour.ipynb", "05_batchnorm_dropout.ipynb", "06_optimizers_schedules.ipynb",
        "07_regularization.ipynb", "08_mnist_case_study.ipynb", "10_architectures.ipynb",
        "11_transfer_learning.ipynb", "12_pruning_distillation.ipynb", "14_adversarial_examples.ipynb",
        "15_interpretability.ipynb", "16_hyperparameter_tuning.ipynb",
        "18_debugging_training.ipynb"}                          # they train networks


def test_every_breakage_finds_its_cells_and_its_text():
    for name in NOTEBOOKS:
        nb = read_notebook(str(TUTORIALS / name))
        proof = selfchecks.proof_notebook(nb, [b for b in BREAKAGES if b.notebook == name], name)
        roles = [c["metadata"]["selfcheck"]["role"] for c in proof["cells"]]
        assert roles.count("check on broken") == roles.count("check") == sum(b.notebook == name for b in BREAKAGES)
    assert len({(b.notebook, b.check, b.replace) for b in BREAKAGES}) == len(BREAKAGES), "a breakage is listed twice"


def test_every_self_check_has_a_breakage():
    """No self-check of any tutorial is left unproven (a new one needs its entry in self_checks.toml)."""
    missing = selfchecks.unproven_self_checks(str(TUTORIALS))
    assert not missing, f"self-check cells (by index) that no breakage in tutorials/self_checks.toml names: {missing}"


def test_a_check_that_passes_on_its_broken_subject_is_reported(tmp_path):
    """The proof itself can fail: a check that does not look at what was broken."""
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": "x = 2\ny = x + 1", "outputs": [],
                     "execution_count": None},
                    {"cell_type": "code", "metadata": {}, "source": "assert x > 0  # weak check", "outputs": [],
                     "execution_count": None},
                    {"cell_type": "code", "metadata": {}, "source": "assert y == 3  # strong check", "outputs": [],
                     "execution_count": None}],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "t.ipynb"
    path.write_text(json.dumps(nb))
    breakages = [selfchecks.Breakage("t.ipynb", "weak check", "y wrong", "y = x + 1", "y = x + 2", cell="y = x"),
                 selfchecks.Breakage("t.ipynb", "strong check", "y wrong", "y = x + 1", "y = x + 2", cell="y = x")]
    problems, _ = selfchecks.prove_self_checks(str(path), breakages, timeout=60)
    assert len(problems) == 1 and "'weak check' passes on its broken subject" in problems[0], problems


def fashion_mnist_available():
    """Whether Fashion-MNIST is here (MINICNN_DATA_DIR, the cache) or downloadable: tutorial 11 needs it."""
    from minicnn.data import DownloadError, get_dataset
    try:
        for train in (True, False):
            get_dataset("fashion-mnist", train=train, download=True)
    except DownloadError:
        return False
    return True


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in NOTEBOOKS])
def test_self_checks_fail_on_a_broken_subject(name):
    if name.startswith("11_") and not fashion_mnist_available():
        pytest.skip("tutorial 11 needs Fashion-MNIST (MINICNN_DATA_DIR, the cache, or a download), as the docs build")
    problems, seconds = selfchecks.prove_self_checks(str(TUTORIALS / name),
                                                     [b for b in BREAKAGES if b.notebook == name])
    assert not problems, "\n".join(problems)
