"""`minicnn prune` (global / structured + shrink, gradual) and `minicnn train --teacher` on the
embedded digits; `minicnn evaluate` reads their checkpoints."""
import json

import pytest

from minicnn.cli import main
from minicnn.train import load_checkpoint

pytestmark = pytest.mark.tutorial12        # what tutorials/12_*.ipynb teaches (tests/README.md)

TINY = ["--limit-train", "300", "--limit-test", "100", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    assert main(["train", "--epochs", "1", "--model", "reference-bn", "--out", str(out)] + TINY) == 0
    return out / "best.ckpt"


def test_prune_structured_shrink_then_evaluate(trained, tmp_path, capsys):
    out = tmp_path / "f50"
    assert main(["prune", str(trained), "--method", "ln-structured", "--amount", "0.5", "--shrink",
                 "--finetune-epochs", "0.3", "--out", str(out)] + TINY) == 0
    report = json.loads((out / "prune_report.json").read_text())
    assert report["after"]["parameters"] < 0.6 * report["before"]["parameters"]
    assert report["after"]["macs"] < 0.35 * report["before"]["macs"]
    assert set(report["sensitivity"]["layers"]) == {"0", "4"}
    assert (out / "sensitivity.png").stat().st_size > 1000
    state = load_checkpoint(out / "pruned.ckpt")
    convs = [s for s in state["config"]["architecture"] if s["type"] == "Conv2d"]
    assert [c["out_channels"] for c in convs] == [16, 32]
    capsys.readouterr()
    assert main(["evaluate", str(out / "pruned.ckpt"), "--limit-test", "100"]) == 0
    acc = float(capsys.readouterr().out.split("accuracy ")[-1].split()[0])
    assert acc == pytest.approx(report["after"]["test_acc"])


def test_prune_global_gradual(trained, tmp_path, capsys):
    out = tmp_path / "g90"
    assert main(["prune", str(trained), "--method", "global-l1", "--amount", "0.9", "--schedule", "gradual",
                 "--steps", "2", "--finetune-epochs", "0.2", "--no-sensitivity", "--out", str(out)] + TINY) == 0
    report = json.loads((out / "prune_report.json").read_text())
    assert report["sparsity"]["global_sparsity"] == pytest.approx(0.9, abs=1e-5)
    assert [r["step"] for r in report["gradual"]] == [1, 2]
    assert report["after"]["sparse_bytes"] < 0.25 * report["after"]["dense_bytes"]
    text = (out / "sparsity.txt").read_text()
    assert "90.00%" in text
    assert main(["evaluate", str(out / "pruned.ckpt"), "--limit-test", "50"]) == 0


def test_train_with_teacher(trained, tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["train", "--epochs", "1", "--model", "lenet5", "--teacher", str(trained), "--temperature", "2",
                 "--alpha", "0.5", "--out", str(out)] + TINY) == 0
    assert "distillation: teacher reference-bn" in capsys.readouterr().out
    cfg = load_checkpoint(out / "last.ckpt")["config"]
    assert cfg["distillation"]["temperature"] == 2.0 and cfg["model_name"] == "lenet5"


@pytest.mark.parametrize("argv, message", [
    (["train", "--temperature", "2"], "--temperature and --alpha need --teacher"),
    (["train", "--teacher", "nope.ckpt"], "checkpoint not found"),
    (["prune", "nope.ckpt"], "checkpoint not found"),
])
def test_cli_errors(argv, message, capsys):
    assert main(argv + ["--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_prune_bad_amount(trained, capsys):
    assert main(["prune", str(trained), "--amount", "1.5"]) == 2
    assert "--amount must be a fraction" in capsys.readouterr().err
