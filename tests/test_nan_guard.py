"""The non-finite guard in fit (stop / skip-batch / ignore) and mc.detect_anomaly()."""
import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn
from minicnn import optim
from minicnn.autograd.anomaly import AnomalyError
from minicnn.cli import main
from minicnn.data import DataLoader
from minicnn.train import NonFiniteLossError, fit, load_checkpoint
from conftest import quadrant_images

pytestmark = pytest.mark.tutorial01        # what tutorials/01_*.ipynb teaches (tests/README.md)


def _setup(momentum=0.9):
    mc.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(64, 4))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    return model, opt, DataLoader(quadrant_images(96), batch_size=16, shuffle=True)   # 6 batches/epoch


def _poisoned(at_call, poison=float("nan")):
    """cross_entropy, except that call number ``at_call`` (1-based) is multiplied by ``poison``."""
    calls = [0]

    def loss_fn(out, y):
        calls[0] += 1
        loss = F.cross_entropy(out, y)
        return loss * poison if calls[0] == at_call else loss
    return loss_fn


def _weights(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def test_stop_names_where_and_leaves_the_last_finite_checkpoints(tmp_path):
    model, opt, loader = _setup()
    val = DataLoader(quadrant_images(32, seed=1), batch_size=16)
    with pytest.raises(NonFiniteLossError) as e:   # call 11 = epoch 2, step 3 (6 steps + 2 val batches per epoch)
        fit(model, opt, loader, epochs=3, val_loader=val, out_dir=tmp_path, loss_fn=_poisoned(11),
            progress=False, log=lambda *_: None)
    message = str(e.value)
    assert "loss became nan at epoch 2, step 3, learning rate 0.1" in message
    assert "last finite loss was" in message and "(epoch 2, step 2)" in message
    assert "left as they were after epoch 1" in message and "--lr" in message and "detect_anomaly" in message
    for name in ("last.ckpt", "best.ckpt"):
        state = load_checkpoint(tmp_path / name)
        assert state["epoch"] == 1
        assert all(np.isfinite(v).all() for v in state["model"].values())
    assert not np.isfinite(model[0].weight.numpy()).all()       # the live model did diverge


def test_skip_batch_undoes_exactly_that_update():
    # Plain SGD: skipping a batch must equal a step with a zero gradient (no change at all).
    model, opt, loader = _setup(momentum=0.0)
    logs = []
    history = fit(model, opt, loader, epochs=2, loss_fn=_poisoned(4, float("inf")), progress=False,
                  log=logs.append, nan_policy="skip-batch")
    skipped = _weights(model)
    assert any("skipped a batch whose loss was inf (epoch 1, step 4" in m for m in logs)
    assert np.isfinite(history["train_loss"]).all()

    model, opt, loader = _setup(momentum=0.0)
    fit(model, opt, loader, epochs=2, loss_fn=_poisoned(4, 0.0), progress=False, log=lambda *_: None)
    for k, v in _weights(model).items():
        np.testing.assert_array_equal(skipped[k], v, err_msg=k)


def test_skip_batch_restores_the_optimizer_state_too():
    model, opt, loader = _setup(momentum=0.9)
    fit(model, opt, loader, epochs=2, loss_fn=_poisoned(5), progress=False, log=lambda *_: None,
        nan_policy="skip-batch")
    assert all(np.isfinite(v).all() for v in _weights(model).values())
    assert all(np.isfinite(s["momentum_buffer"]).all() for s in opt.state_dict()["state"].values()
               if "momentum_buffer" in s)


def test_ignore_trains_on_with_one_warning_and_bad_policies_are_refused():
    model, opt, loader = _setup()
    logs = []
    history = fit(model, opt, loader, epochs=1, loss_fn=_poisoned(2), progress=False, log=logs.append,
                  nan_policy="ignore")
    assert sum("warning: the loss is nan" in m for m in logs) == 1
    assert np.isnan(history["train_loss"][0])
    with pytest.raises(ValueError, match="nan_policy must be one of"):
        fit(model, opt, loader, epochs=1, progress=False, nan_policy="retry")


def test_cli_divergence_exits_3_with_the_diagnosis(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--optimizer", "sgd", "--lr", "1000", "--limit-train", "320", "--limit-test", "32",
                 "--batch-size", "16", "--epochs", "2", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "training stopped: the loss became" in err and "learning rate 1e+03" in err and "--lr" in err
    assert not (out / "history.json").exists() and not (out / ".minicnn.lock").exists()


# -- detect_anomaly ---------------------------------------------------------------------------
def test_detect_anomaly_names_log_of_zero_and_the_line_that_made_it():
    x = mc.tensor([1.0, 0.0, 2.0], requires_grad=True)
    with pytest.raises(AnomalyError) as e:
        with mc.detect_anomaly():
            y = x.log()  # noqa: F841   the line the error must quote
    message = str(e.value)
    assert "Function LogFn" in message and "(3,)" in message and "-inf" in message
    assert "y = x.log()" in message and "test_nan_guard.py" in message
    assert "all its inputs were finite" in message
    assert x.log().shape == (3,)              # outside the context: no checks


def test_detect_anomaly_catches_a_backward_gradient_and_says_when_inputs_were_bad():
    x = mc.tensor([0.0, 4.0], requires_grad=True)
    with mc.detect_anomaly():
        y = x.sqrt().sum()                    # forward finite: sqrt(0) = 0
        with pytest.raises(AnomalyError, match=r"(?s)Function SqrtFn: the gradient it returned for input 0"
                                               r".*inf.*y = x\.sqrt\(\)\.sum\(\)"):
            y.backward()                      # d sqrt(x)/dx = 1 / (2 sqrt(0)) = inf
    bad = mc.tensor([np.nan, 1.0])
    with pytest.raises(AnomalyError, match="already non-finite"):
        with mc.detect_anomaly():
            bad * 2.0
    with mc.detect_anomaly(check_forward=False):
        z = (x.log() * 0.0).sum()              # -inf * 0 = nan, only the backward is checked
        with pytest.raises(AnomalyError, match="Function LogFn: the gradient"):
            z.backward()


def test_detect_anomaly_finds_the_layer_in_a_model():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    model[2].weight.array[0, 0] = np.inf
    x = mc.tensor(np.ones((1, 3)))
    with pytest.raises(AnomalyError, match="created at .*test_nan_guard.py.*model\\(x\\)"):
        with mc.detect_anomaly():
            model(x)
