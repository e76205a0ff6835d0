"""The projects' scoring (minicnn/course/projects.py, projects/evaluate.py): budgets, scores, leaderboard.

Tiny models on the embedded digits' test split (practice runs), so it runs in
seconds; the official path differs only in the dataset (full MNIST) and is what
``python projects/evaluate.py NAME CKPT --team T`` runs.
"""
import csv
import dataclasses
import os
import pathlib
import subprocess
import sys
import zlib

import numpy as np
import pytest

import minicnn as mc
from minicnn import compress, nn
from minicnn.course import projects
from minicnn.models import with_normalize
from minicnn.train import save_checkpoint

ROOT = pathlib.Path(__file__).resolve().parent.parent


def checkpoint(path, model):
    save_checkpoint(str(path), model, config={"model_name": "custom", "architecture": compress.architecture(model),
                                              "normalization": [0.1307, 0.3081]})
    return str(path)


def tiny(channels=4):
    mc.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, channels, 3), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(),
                         nn.Linear(channels * 6 * 6, 10))


def constant(cls):
    """A network whose answer is always ``cls``: zero weights, a bias that picks the class."""
    m = tiny()
    state = {name: np.zeros_like(value.numpy()) for name, value in m.state_dict().items()}
    state["4.bias"][cls] = 5.0
    m.load_state_dict(state)
    return m


def test_small_mnist_scores_accuracy_and_counts_parameters(tmp_path):
    path = checkpoint(tmp_path / "c.ckpt", constant(3))
    x, y = projects.held_out_arrays("digits", limit=300)
    assert x.shape == (300, 1, 28, 28) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    result = projects.evaluate("small-mnist", path, dataset="digits", limit=300)
    assert result["accuracy"] == pytest.approx(float(np.mean(y == 3)), abs=1e-4)     # it always says 3
    assert result["budget_value"] == 4 * 9 + 4 + 4 * 36 * 10 + 10 and not result["official"]


def test_small_mnist_refuses_a_model_over_budget(tmp_path):
    big = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))   # 50,890 parameters
    with pytest.raises(projects.ProjectError, match="50,890 parameters; the budget is 50,000"):
        projects.evaluate("small-mnist", checkpoint(tmp_path / "big.ckpt", big), dataset="digits", limit=10)


def test_compress_mnist_counts_zlib_bytes_so_zeros_are_cheap(tmp_path):
    dense = nn.Sequential(nn.Flatten(), nn.Linear(784, 40), nn.ReLU(), nn.Linear(40, 10))
    path = checkpoint(tmp_path / "dense.ckpt", dense)
    size = projects.compressed_size(path)
    assert size == len(zlib.compress(pathlib.Path(path).read_bytes(), 9)) > 40_000
    with pytest.raises(projects.ProjectError, match="compresses to .* bytes; the budget is 40,000"):
        projects.evaluate("compress-mnist", path, dataset="digits", limit=10)
    pruned = compress.make_permanent(compress.prune_to(dense, "global-l1", 0.9))
    small = checkpoint(tmp_path / "pruned.ckpt", pruned)
    result = projects.evaluate("compress-mnist", small, dataset="digits", limit=50)
    assert result["budget_value"] < 40_000 < size


def test_robust_correct_is_clean_accuracy_for_a_network_that_ignores_its_input():
    x, y = projects.held_out_arrays("digits", limit=40)
    const = with_normalize(constant(1), 0.1307, 0.3081).eval()
    ok = projects.robust_correct(const, x, y, eps=0.3, steps=3)
    np.testing.assert_array_equal(ok, y == 1)          # no gradient can move a constant answer


def test_robust_mnist_needs_the_clean_floor_then_scores_under_attack(tmp_path, monkeypatch):
    mc.manual_seed(0)
    model = tiny(8)
    path = checkpoint(tmp_path / "t.ckpt", model)
    with pytest.raises(projects.ProjectError, match="clean test accuracy .* at least 0.95 is required"):
        projects.evaluate("robust-mnist", path, dataset="digits", limit=100)
    monkeypatch.setitem(projects.PROJECTS, "robust-mnist",
                        dataclasses.replace(projects.PROJECTS["robust-mnist"], budget_limit=0.0))
    result = projects.evaluate("robust-mnist", path, dataset="digits", limit=100)
    assert 0 <= result["score"] <= result["accuracy"]


def test_leaderboard_ranks_official_entries_and_allows_one_per_team(tmp_path):
    board = str(tmp_path / "leaderboard.csv")
    entry = lambda score, official: {"score": score, "accuracy": score, "budget_value": 1, "budget_limit": 2,
                                      "test_images": 10_000, "dataset": "mnist", "official": official,
                                      "sha256": "x"}
    projects.append_to_leaderboard(board, "ada", entry(0.97, True))
    projects.append_to_leaderboard(board, "bob", entry(0.99, True))
    projects.append_to_leaderboard(board, "ada", entry(0.999, False), note="practice, with, commas")
    with pytest.raises(projects.ProjectError, match="already has an official entry"):
        projects.append_to_leaderboard(board, "ada", entry(0.98, True))
    with open(board, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["team"], r["official"]) for r in rows] == [("bob", "True"), ("ada", "True"), ("ada", "False")]
    assert rows[2]["note"] == "practice, with, commas"
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| 1 | bob | 0.9900 |" in md and "| 2 | ada | 0.9700 |" in md and "| practice | ada | 0.9990 |" in md


def test_the_script_scores_and_appends(tmp_path):
    path = checkpoint(tmp_path / "c.ckpt", constant(7))
    board = tmp_path / "lb.csv"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = lambda *extra: subprocess.run([sys.executable, str(ROOT / "projects" / "evaluate.py"), *extra],
                                        capture_output=True, text=True, env=env, timeout=300)
    ok = run("small-mnist", path, "--team", "t", "--dataset", "digits", "--limit", "100", "--leaderboard", str(board))
    assert ok.returncode == 0, ok.stderr
    assert "practice" in ok.stdout and board.exists() and (tmp_path / "lb.md").exists()
    bad = run("small-mnist", str(tmp_path / "missing.ckpt"), "--team", "t", "--dataset", "digits",
              "--leaderboard", str(board))
    assert bad.returncode == 2 and "no checkpoint at" in bad.stderr
