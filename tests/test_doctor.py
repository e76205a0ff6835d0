"""The training doctor: each finding is triggered by its planted fault, a healthy run reports none,
and the doctor changes nothing of the model, the optimizer or the random generator."""
import math

import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn
from minicnn import doctor, optim
from minicnn.cli import main
from minicnn.data import DataLoader, get_dataset
from minicnn.data.transforms import Normalize
from minicnn.train import evaluate

pytestmark = pytest.mark.tutorial18       # what tutorials/18_*.ipynb teaches (tests/README.md)


@pytest.fixture(scope="module")
def digits():
    x, y = get_dataset("digits", train=True).arrays()
    return x[:256], y[:256]


def loader_of(x, y, normalize=True, batch_size=32):
    return DataLoader((x, y), batch_size=batch_size, shuffle=True,
                      transform=Normalize(0.1307, 0.3081) if normalize else None)


def mlp(hidden=64, activation=nn.ReLU, depth=1):
    layers, width = [nn.Flatten()], 784
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), activation()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, 10))


def diagnose(model, loader, optimizer=None, **kw):
    kw.setdefault("steps", 6)
    kw.setdefault("overfit_steps", 50)           # an MLP with Adam memorises 10 images in 50 steps
    return doctor.diagnose(model, loader, optimizer=optimizer or optim.Adam(model.parameters(), lr=1e-3), **kw)


def test_a_healthy_mlp_reports_nothing_and_quotes_its_numbers(digits):
    mc.manual_seed(0)
    report = diagnose(mlp(), loader_of(*digits))
    assert report.ok and len(report) == 0, str(report)
    m = report.measurements
    assert abs(m["input_mean"]) < 0.2 and 0.7 < m["input_std"] < 1.3
    assert abs(m["initial_loss"] - math.log(10)) < 0.25 * math.log(10)
    assert m["overfit_accuracy"] == 1.0
    assert set(m["layers"]) == {"2", "1.weight", "3.weight"}         # the ReLU and both weights
    assert "no problems found" in str(report)


def test_the_full_width_reference_cnn_on_digits_reports_nothing(digits):
    """The course's network as `minicnn train` builds it (the test below uses a quarter width)."""
    mc.manual_seed(0)
    model = mc.models.get_model("reference")
    report = doctor.diagnose(model, loader_of(*digits), optimizer=optim.Adam(model.parameters(), lr=1e-3),
                             steps=5)
    assert report.ok, str(report)


def test_a_healthy_reference_cnn_on_digits_reports_nothing_and_is_left_as_it_was(digits):
    mc.manual_seed(0)
    model = mc.models.get_model("reference", width=0.25)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    x0 = mc.randn(4, 1, 28, 28)
    model(x0).sum().backward()                         # a gradient in place: it must survive
    opt.step()                                         # and an optimizer state (Adam's moments)
    model.eval()
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    grads = [p.grad.numpy().copy() for p in model.parameters()]
    opt_state = opt.state_dict()
    rng_before = mc.rng.get_rng_state()
    report = doctor.diagnose(model, loader_of(*digits), optimizer=opt, steps=5,
                             eval_fn=lambda m, loader: evaluate(m, loader))
    assert report.ok, str(report)
    assert "batchnorm_eval" not in report.checks     # no BatchNorm in this model
    for k, v in model.state_dict().items():
        assert np.array_equal(v.numpy(), before[k]), f"diagnose changed {k}"
    for p, g in zip(model.parameters(), grads):
        assert np.array_equal(p.grad.numpy(), g), "diagnose changed a gradient"
    after = opt.state_dict()
    assert after["param_groups"] == opt_state["param_groups"]
    for i, s in opt_state["state"].items():
        for key, value in s.items():
            assert np.array_equal(np.asarray(after["state"][i][key]), np.asarray(value)), f"optimizer {key}"
    assert not model.training, "diagnose changed the model's mode"
    assert mc.rng.generator().random() == (mc.rng.set_rng_state(rng_before) or mc.rng.generator().random())


def test_deep_sigmoid_net_has_vanishing_gradients(digits):
    mc.manual_seed(0)
    model = mlp(activation=nn.Sigmoid, depth=8)
    report = diagnose(model, loader_of(*digits), optim.SGD(model.parameters(), lr=0.1))
    f = next(f for f in report if f.name == "vanishing_gradients")
    ratios = report.measurements["layers"]
    assert f.layer == "1.weight" and f.measured == pytest.approx(ratios["1.weight"]["grad_ratio"] / max(
        r["grad_ratio"] for r in ratios.values() if "grad_ratio" in r))
    assert f.measured < 1e-3 and "section 5" in f.tutorial
    assert "cannot_overfit" in report.names()


def test_negative_bias_init_kills_the_relus(digits):
    mc.manual_seed(0)
    model = mlp()
    nn.init.constant_(model[1].bias, -10.0)            # every hidden unit starts below zero
    report = diagnose(model, loader_of(*digits))
    f = next(f for f in report if f.name == "dead_relu")
    assert f.measured == 1.0 and f.layer == "2" and "0 for every image" in f.message
    assert "cannot_overfit" in report.names()
    # the layer below the dead ReLUs gets exactly no gradient, so its updates are 0
    assert report.measurements["layers"]["1.weight"]["grad_ratio"] == 0.0


def test_saturated_tanh_from_a_too_large_init(digits):
    mc.manual_seed(0)
    model = mlp(activation=nn.Tanh)
    nn.init.normal_(model[1].weight, std=1.0)        # 30x the default scale
    f = next(f for f in diagnose(model, loader_of(*digits)) if f.name == "saturated_tanh")
    assert f.measured > 0.5 and f.layer == "2"


def test_weights_growing_layer_by_layer_explode_the_gradients(digits):
    def deep(gain):
        mc.manual_seed(0)
        layers, width = [nn.Flatten()], 784
        for i in range(10):
            linear = nn.Linear(width, 64)
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            nn.init.zeros_(linear.bias)
            if i > 0:
                with mc.no_grad():
                    linear.weight.mul_(gain)              # each layer multiplies the signal by ~gain
            layers += [linear, nn.ReLU()]
            width = 64
        model = nn.Sequential(*layers, nn.Linear(64, 10))
        return diagnose(model, loader_of(*digits), optim.SGD(model.parameters(), lr=0.01), steps=3,
                        overfit_steps=5, lr_test=False)
    report = deep(2.0)                                    # 2^9 through nine scaled layers
    f = next(f for f in report if f.name == "exploding_gradients")
    assert f.measured > 1e3 and f.measured == report.measurements["layers"][f.layer]["grad_ratio"]
    assert "exploding_gradients" not in deep(1.0).names()  # He initialisation: gain 1


def test_a_tiny_learning_rate_gives_tiny_updates(digits):
    mc.manual_seed(0)
    model = mlp()
    one_batch = loader_of(*digits, batch_size=256)        # both probe steps see the same 256 images
    report = diagnose(model, one_batch, optim.SGD(model.parameters(), lr=1e-5), steps=2)
    f = next(f for f in report if f.name == "update_ratio")
    rows = report.measurements["layers"]
    assert f.measured == min(rows[n]["update_ratio"] for n in ("1.weight", "3.weight")) < 1e-5
    # one plain SGD step changes W by lr * grad: the ratio is lr * |grad| / |W| (the second step, on the
    # same batch with weights moved by 1e-6 of their size, has the same gradient to a few digits)
    for n in ("1.weight", "3.weight"):
        assert rows[n]["update_ratio"] == pytest.approx(1e-5 * rows[n]["grad_ratio"], rel=1e-3)
    mc.manual_seed(0)
    model = mlp()
    assert "update_ratio" not in diagnose(model, loader_of(*digits), optim.SGD(model.parameters(), lr=0.05)).names()


def test_lr_10_makes_the_loss_jump_and_the_range_test_suggests_less(digits):
    mc.manual_seed(0)
    model = mlp()
    report = diagnose(model, loader_of(*digits), optim.SGD(model.parameters(), lr=10.0))
    f = next(f for f in report if f.name == "loss_jump")
    assert f.measured > 2.0 and "lr 10" in f.message
    suggestion = report.measurements["lr_find_suggestion"]
    assert 1e-6 <= suggestion < 1.0 and f"{suggestion:.1e}" in f.message


def test_unnormalised_0_255_inputs(digits):
    x, y = digits
    mc.manual_seed(0)
    report = diagnose(mlp(), loader_of(x.astype(np.float32), y, normalize=False))   # floats stay 0..255
    f = next(f for f in report if f.name == "inputs_not_normalized")
    assert f.measured == pytest.approx(x.astype(np.float64)[:96].mean(), rel=0.3) and f.measured > 10
    assert "initial_loss" in report.names()
    assert report.measurements["input_max"] == 255.0


def test_a_frozen_layer_is_reported_unless_frozen_on_purpose(digits):
    mc.manual_seed(0)
    model = mlp()
    model[1].requires_grad_(False)
    report = diagnose(model, loader_of(*digits))
    f = next(f for f in report if f.name == "frozen_parameters")
    assert f.measured == 2 and "1.weight" in f.message and "1.bias" in f.message
    assert "frozen_parameters" not in diagnose(model, loader_of(*digits), expect_frozen=["1"]).names()


class WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp()
        self.extra = nn.Linear(10, 10)                 # built, never called

    def forward(self, x):
        return self.body(x)


def test_an_unused_parameter_and_one_missing_from_the_optimizer(digits):
    mc.manual_seed(0)
    model = WithUnused()
    report = diagnose(model, loader_of(*digits))
    f = next(f for f in report if f.name == "unused_parameters")
    assert f.measured == 2 and "extra.weight" in f.message and "extra.bias" in f.message
    model = mlp()
    opt = optim.Adam(list(model[1].parameters()), lr=1e-3)     # the last layer left out
    f = next(f for f in diagnose(model, loader_of(*digits), opt) if f.name == "not_optimized_parameters")
    assert "3.weight" in f.message and "3.bias" in f.message


def test_a_constant_label_dataset(digits):
    x, y = digits
    mc.manual_seed(0)
    report = diagnose(mlp(), loader_of(x, np.full_like(y, 3)))
    f = next(f for f in report if f.name == "labels_imbalanced")
    assert math.isinf(f.measured) and "9 of the 10 classes never occur" in f.message
    assert report.measurements["label_counts"][3] == len(y)


class BNNet(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(784, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def forgetful_eval(model, loader):
    """An evaluation that forgets model.eval(): BatchNorm normalises with each batch's statistics."""
    with mc.no_grad():
        return [float((model(x).numpy().argmax(1) == y.numpy()).mean()) for x, y in loader]


def test_batchnorm_left_in_train_mode_at_evaluation(digits):
    mc.manual_seed(0)
    model = BNNet()
    report = diagnose(model, loader_of(*digits), eval_fn=forgetful_eval)
    f = next(f for f in report if f.name == "batchnorm_train_mode_at_eval")
    assert f.measured == 1.0 and f.layer == "2" and "running_mean moved" in f.message
    assert report.measurements["batchnorm_eval_calls"] == {"train": 8, "all": 8}    # 256 images / 32
    good = diagnose(model, loader_of(*digits), eval_fn=lambda m, loader: evaluate(m, loader))
    assert "batchnorm_train_mode_at_eval" not in good.names() and "batchnorm_eval" in good.checks


class LogOfReLU(nn.Module):
    """A planted NaN source: log of a ReLU output is -inf wherever the unit is off."""

    def forward(self, x):
        return F.relu(x).log()


def test_the_first_nan_is_traced_to_its_operation(digits):
    mc.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), LogOfReLU(), nn.Linear(16, 10))
    report = diagnose(model, loader_of(*digits))
    f = next(f for f in report if f.name == "nan")
    assert f.measured == 0 and "LogFn" in f.message and "-inf" in f.message
    assert "created at" in f.message and "F.relu(x).log()" in f.message      # the line of the planted bug
    assert "created at" in report.measurements["anomaly"] and "test_doctor.py" in report.measurements["anomaly"]
    # non-finite before any update: not the learning rate, and no gradient to measure
    assert "loss_jump" not in report.names() and "exploding_gradients" not in report.names()


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="expected an nn.Module"):
        doctor.diagnose("model", [])
    with pytest.raises(ValueError, match="unknown threshold"):
        doctor.diagnose(mlp(), [], thresholds={"dead": 0.1})
    with pytest.raises(ValueError, match="no batches"):
        doctor.diagnose(mlp(), [])


@pytest.mark.slow
def test_cli_doctor_exit_status_and_train_doctor(tmp_path, capsys):
    common = ["--model", "tiny", "--limit-train", "96", "--limit-test", "32", "--batch-size", "32",
              "--val-split", "0.2", "--doctor-steps", "3", "--no-progress"]
    assert main(["doctor", *common, "--optimizer", "sgd", "--lr", "1e-7"]) == 1
    out = capsys.readouterr().out
    assert "update_ratio" in out and "problem(s) found" in out and "cannot_overfit" in out
    main(["doctor", *common, "--freeze", "0"])             # frozen with --freeze: on purpose, not reported
    out = capsys.readouterr().out
    assert "training doctor:" in out and "frozen_parameters" not in out
    assert main(["train", "--doctor", *common, "--epochs", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "training doctor:" in out and "test accuracy" in out        # the report, then training
    status = main(["doctor", str(tmp_path / "last.ckpt"), "--limit-train", "96", "--doctor-steps", "3"])
    out = capsys.readouterr().out
    assert status in (0, 1) and "training doctor:" in out and "initial loss" not in out
