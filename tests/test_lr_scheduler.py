"""Learning-rate schedulers: hand-computed sequences, then PyTorch's values epoch by epoch."""
import math
import warnings

import numpy as np
import pytest

import minicnn as mc
import minicnn.optim as optim
from minicnn import nn

pytestmark = pytest.mark.tutorial06        # what tutorials/06_*.ipynb teaches (tests/README.md)

lr_scheduler = optim.lr_scheduler


def make_optimizer(lr=1.0, second_lr=None):
    """An SGD optimizer over one parameter (or two groups when second_lr is given)."""
    w = nn.Parameter(mc.tensor([1.0]))
    if second_lr is None:
        return optim.SGD([w], lr=lr)
    b = nn.Parameter(mc.tensor([1.0]))
    return optim.SGD([{"params": [w]}, {"params": [b], "lr": second_lr}], lr=lr)


def lr_sequence(optimizer, scheduler, epochs, metrics=None):
    """The learning rate of every group at epoch 0, 1, ..., epochs (the usual loop)."""
    history = [scheduler.get_last_lr()]
    for epoch in range(epochs):
        optimizer.step()                       # (no gradients: the parameters stay put)
        if metrics is None:
            scheduler.step()
        else:
            scheduler.step(metrics[epoch])
        history.append(scheduler.get_last_lr())
        assert history[-1] == [g["lr"] for g in optimizer.param_groups]
    return history


def first_group(history):
    return [lrs[0] for lrs in history]


# ----------------------------------------------------------------------------
# hand-computed sequences (base lr 1.0)
# ----------------------------------------------------------------------------
def test_step_lr_by_hand():
    opt = make_optimizer()
    s = lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    assert first_group(lr_sequence(opt, s, 7)) == pytest.approx([1, 1, 1, .5, .5, .5, .25, .25])


def test_multistep_lr_by_hand():
    # a milestone given twice (5) applies gamma twice
    opt = make_optimizer()
    s = lr_scheduler.MultiStepLR(opt, milestones=[5, 2, 5], gamma=0.1)
    assert first_group(lr_sequence(opt, s, 6)) == pytest.approx([1, 1, .1, .1, .1, .001, .001])


def test_exponential_lr_by_hand():
    opt = make_optimizer()
    s = lr_scheduler.ExponentialLR(opt, gamma=0.5)
    assert first_group(lr_sequence(opt, s, 3)) == pytest.approx([1, .5, .25, .125])


def test_cosine_annealing_by_hand():
    # (1 + cos(pi t / 4)) / 2 for t = 0..6: 1, 0.8536, 0.5, 0.1464, 0, then back up
    c = (1 + math.cos(math.pi / 4)) / 2
    opt = make_optimizer()
    s = lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    assert first_group(lr_sequence(opt, s, 6)) == pytest.approx([1, c, .5, 1 - c, 0, 1 - c, .5],
                                                                abs=1e-15)


def test_cosine_annealing_eta_min():
    opt = make_optimizer(lr=0.5)
    s = lr_scheduler.CosineAnnealingLR(opt, T_max=2, eta_min=0.1)
    # 0.1 + 0.4 * (1 + cos(pi t / 2)) / 2: 0.5, 0.3, 0.1
    assert first_group(lr_sequence(opt, s, 2)) == pytest.approx([0.5, 0.3, 0.1])


def test_linear_lr_warm_up_by_hand():
    # factor 0.25 -> 1 over 3 epochs: 0.25, 0.5, 0.75, 1, then held; times base lr 0.8
    opt = make_optimizer(lr=0.8)
    s = lr_scheduler.LinearLR(opt, start_factor=0.25, end_factor=1.0, total_iters=3)
    assert first_group(lr_sequence(opt, s, 5)) == pytest.approx([.2, .4, .6, .8, .8, .8])
    assert opt.param_groups[0]["initial_lr"] == 0.8


def test_sequential_warm_up_then_cosine_by_hand():
    # epochs 0-2: LinearLR 0.25, 0.5, 0.75; from epoch 3 the cosine starts at its own epoch 0
    c = (1 + math.cos(math.pi / 4)) / 2
    opt = make_optimizer()
    warmup = lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=3)
    cosine = lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    s = lr_scheduler.SequentialLR(opt, [warmup, cosine], milestones=[3])
    expected = [.25, .5, .75, 1, c, .5, 1 - c, 0]
    assert first_group(lr_sequence(opt, s, 7)) == pytest.approx(expected, abs=1e-15)
    assert s.last_epoch == 7 and cosine.last_epoch == 4


def test_reduce_on_plateau_by_hand():
    # patience 1, factor 0.5, cooldown 1, threshold 10% (rel): "better" means < 0.9 * best
    # epoch 1: 10 -> best 10             epoch 2: 9.5 not < 9: bad 1
    # epoch 3: 9.2 bad 2 > 1: lr 0.5, cooldown 1
    # epoch 4: 8 < 9: best 8, cooldown ends  epoch 5: bad 1
    # epoch 6: bad 2 > 1: lr 0.25, cooldown 1
    # epoch 7: bad, but in cooldown: not counted   epoch 8: bad 1   epoch 9: bad 2: lr 0.125
    opt = make_optimizer()
    s = lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1, threshold=0.1, cooldown=1)
    metrics = [10, 9.5, 9.2, 8, 8, 8, 8, 8, 8]
    got = first_group(lr_sequence(opt, s, 9, metrics))
    assert got == pytest.approx([1, 1, 1, .5, .5, .5, .25, .25, .25, .125])


def test_reduce_on_plateau_max_mode_abs_threshold_and_min_lr():
    # mode max, abs threshold 0.5: "better" means > best + 0.5; patience 0
    opt = make_optimizer(lr=0.1)
    s = lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.1, patience=0,
                                       threshold=0.5, threshold_mode="abs", min_lr=0.005)
    metrics = [1.0, 2.0, 2.4, 3.0, 3.1, 3.2]
    # better, better, bad -> 0.01, better (3.0 > 2.5), bad -> max(0.001, 0.005), bad -> stays
    got = first_group(lr_sequence(opt, s, 6, metrics))
    assert got == pytest.approx([.1, .1, .1, .01, .01, .005, .005])


def test_reduce_on_plateau_accepts_a_tensor_metric():
    opt = make_optimizer()
    s = lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    s.step(mc.tensor(2.0))
    s.step(mc.tensor(3.0))
    assert s.get_last_lr() == [pytest.approx(0.1)]


def test_every_group_follows_its_own_base_lr():
    opt = make_optimizer(lr=1.0, second_lr=0.1)
    s = lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    assert lr_sequence(opt, s, 2) == [[1.0, 0.1], [0.5, 0.05], [0.25, 0.025]]
    assert s.base_lrs == [1.0, 0.1]


def test_warns_when_the_scheduler_steps_before_the_optimizer():
    opt = make_optimizer()
    s = lr_scheduler.StepLR(opt, step_size=1)
    with pytest.warns(UserWarning, match=r"before optimizer.step\(\)"):
        s.step()
    opt = make_optimizer()
    s = lr_scheduler.StepLR(opt, step_size=1)
    opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.step()


# ----------------------------------------------------------------------------
# state_dict: a resumed scheduler continues identically
# ----------------------------------------------------------------------------
SCHEDULERS = {
    "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=4, gamma=0.3),
    "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, milestones=[3, 9, 9, 20], gamma=0.5),
    "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=0.01),
    "LinearLR": lambda o: lr_scheduler.LinearLR(o),
    "LinearLR-decay": lambda o: lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=0.1,
                                                      total_iters=12),
    "SequentialLR": lambda o: lr_scheduler.SequentialLR(
        o, [lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=5),
            lr_scheduler.CosineAnnealingLR(o, T_max=25)], milestones=[5]),
    "SequentialLR-3": lambda o: lr_scheduler.SequentialLR(
        o, [lr_scheduler.LinearLR(o, start_factor=0.5, total_iters=4),
            lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
            lr_scheduler.ExponentialLR(o, gamma=0.8)], milestones=[4, 15]),
}


@pytest.mark.parametrize("name", SCHEDULERS)
def test_state_dict_round_trip(name, tmp_path):
    import minicnn as mc
    opt = make_optimizer(lr=0.5, second_lr=0.2)
    s = SCHEDULERS[name](opt)
    lr_sequence(opt, s, 7)
    # through a safetensors file, as a checkpoint stores them (ReduceLROnPlateau's best may be inf)
    saved = mc.load(mc.save({"opt": opt.state_dict(), "sched": s.state_dict()}, tmp_path / "s.safetensors"))
    opt_state, sched_state = saved["opt"], saved["sched"]

    resumed_opt = make_optimizer(lr=0.5, second_lr=0.2)
    resumed = SCHEDULERS[name](resumed_opt)
    resumed_opt.load_state_dict(opt_state)
    resumed.load_state_dict(sched_state)
    assert resumed.last_epoch == 7
    assert lr_sequence(resumed_opt, resumed, 20) == lr_sequence(opt, s, 20)


def test_reduce_on_plateau_state_dict_round_trip():
    metrics = [5, 4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3]
    opt = make_optimizer()
    s = lr_scheduler.ReduceLROnPlateau(opt, patience=2, cooldown=1, factor=0.5)
    lr_sequence(opt, s, 4, metrics)
    opt2 = make_optimizer()
    s2 = lr_scheduler.ReduceLROnPlateau(opt2, patience=2, cooldown=1, factor=0.5)
    opt2.load_state_dict(opt.state_dict())
    s2.load_state_dict(s.state_dict())
    assert lr_sequence(opt2, s2, 8, metrics[4:]) == lr_sequence(opt, s, 8, metrics[4:])


# ----------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------
def test_errors():
    opt = make_optimizer()
    with pytest.raises(TypeError, match="expected a minicnn optimizer"):
        lr_scheduler.StepLR([1.0], step_size=1)
    with pytest.raises(ValueError, match="step_size must be an integer >= 1, got 0"):
        lr_scheduler.StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match="T_max must be an integer >= 1, got 2.5"):
        lr_scheduler.CosineAnnealingLR(opt, T_max=2.5)
    with pytest.raises(ValueError, match=r"start_factor must be in \(0, 1\], got 0.0"):
        lr_scheduler.LinearLR(opt, start_factor=0)
    with pytest.raises(ValueError, match=r"end_factor must be in \[0, 1\], got 1.5"):
        lr_scheduler.LinearLR(opt, end_factor=1.5)
    with pytest.raises(ValueError, match="milestone must be an integer >= 0, got -1"):
        lr_scheduler.MultiStepLR(opt, milestones=[-1])
    with pytest.raises(TypeError, match="gamma must be a number, got str"):
        lr_scheduler.ExponentialLR(opt, gamma="0.9")


def test_sequential_errors():
    opt = make_optimizer()
    a = lr_scheduler.LinearLR(opt)
    b = lr_scheduler.ExponentialLR(opt, gamma=0.9)
    with pytest.raises(ValueError, match="2 schedulers and 2 milestones"):
        lr_scheduler.SequentialLR(opt, [a, b], milestones=[2, 4])
    with pytest.raises(ValueError, match="at least one scheduler"):
        lr_scheduler.SequentialLR(opt, [], milestones=[])
    with pytest.raises(ValueError, match="does not support ReduceLROnPlateau"):
        lr_scheduler.SequentialLR(opt, [a, lr_scheduler.ReduceLROnPlateau(opt)], milestones=[2])
    other = lr_scheduler.ExponentialLR(make_optimizer(), gamma=0.9)
    with pytest.raises(ValueError, match="scheduler 1 .* different optimizer"):
        lr_scheduler.SequentialLR(opt, [a, other], milestones=[2])
    with pytest.raises(ValueError, match="milestones must be increasing"):
        lr_scheduler.SequentialLR(opt, [a, b, b], milestones=[4, 2])


def test_reduce_on_plateau_errors():
    opt = make_optimizer(second_lr=0.1)
    with pytest.raises(ValueError, match="mode must be 'min' or 'max', got 'minimum'"):
        lr_scheduler.ReduceLROnPlateau(opt, mode="minimum")
    with pytest.raises(ValueError, match="threshold_mode must be 'rel' or 'abs'"):
        lr_scheduler.ReduceLROnPlateau(opt, threshold_mode="relative")
    with pytest.raises(ValueError, match=r"factor must be in \[0, 1\)"):
        lr_scheduler.ReduceLROnPlateau(opt, factor=1.0)
    with pytest.raises(ValueError, match="expected 2 min_lr values"):
        lr_scheduler.ReduceLROnPlateau(opt, min_lr=[0.1])
    with pytest.raises(ValueError, match="patience must be an integer >= 0"):
        lr_scheduler.ReduceLROnPlateau(opt, patience=-1)
    s = lr_scheduler.ReduceLROnPlateau(opt)
    with pytest.raises(TypeError, match="expected the monitored metric as a number"):
        s.step("low")


# ----------------------------------------------------------------------------
# oracle: PyTorch's lr_scheduler, 40 epochs (optional; torch is not a dependency)
# ----------------------------------------------------------------------------
def _torch_schedulers(torch):
    S = torch.optim.lr_scheduler
    return {
        "StepLR": lambda o: S.StepLR(o, step_size=4, gamma=0.3),
        "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[3, 9, 9, 20], gamma=0.5),
        "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.9),
        "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=10, eta_min=0.01),
        "LinearLR": lambda o: S.LinearLR(o),
        "LinearLR-decay": lambda o: S.LinearLR(o, start_factor=1.0, end_factor=0.1,
                                               total_iters=12),
        "SequentialLR": lambda o: S.SequentialLR(
            o, [S.LinearLR(o, start_factor=0.1, total_iters=5),
                S.CosineAnnealingLR(o, T_max=25)], milestones=[5]),
        "SequentialLR-3": lambda o: S.SequentialLR(
            o, [S.LinearLR(o, start_factor=0.5, total_iters=4),
                S.StepLR(o, step_size=3, gamma=0.5),
                S.ExponentialLR(o, gamma=0.8)], milestones=[4, 15]),
    }


def _torch_lr_sequence(torch, make, epochs, metrics=None):
    w = torch.zeros(1, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([{"params": [w]}, {"params": [b], "lr": 0.2}], lr=0.5)
    s = make(opt)
    history = [list(s.get_last_lr())]
    for epoch in range(epochs):
        opt.step()
        if metrics is None:
            s.step()
        else:
            s.step(metrics[epoch])
        history.append(list(s.get_last_lr()))
    return history


@pytest.mark.parametrize("name", SCHEDULERS)
def test_matches_pytorch(name):
    torch = pytest.importorskip("torch")
    expected = _torch_lr_sequence(torch, _torch_schedulers(torch)[name], 40)
    opt = make_optimizer(lr=0.5, second_lr=0.2)
    got = lr_sequence(opt, SCHEDULERS[name](opt), 40)
    np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-12, atol=1e-15)


PLATEAU_CASES = [
    dict(),
    dict(mode="min", factor=0.5, patience=2, threshold=0.01, cooldown=2),
    dict(mode="min", factor=0.3, patience=1, threshold=0.05, threshold_mode="abs", min_lr=0.01),
    dict(mode="max", factor=0.5, patience=3, threshold=0.02, cooldown=1, min_lr=[0.05, 0.001]),
    dict(mode="max", factor=0.7, patience=0, threshold=0.1, threshold_mode="abs", eps=1e-3),
]


@pytest.mark.parametrize("options", PLATEAU_CASES,
                         ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_reduce_on_plateau_matches_pytorch(options):
    torch = pytest.importorskip("torch")
    rs = np.random.default_rng(11)
    # a noisy curve that improves, plateaus, improves again and plateaus for good
    trend = np.concatenate([np.linspace(2, 1, 10), np.full(15, 1.0), np.linspace(1, 0.5, 10),
                            np.full(25, 0.5)])
    metrics = (trend + 0.02 * rs.standard_normal(trend.size)).tolist()
    if options.get("mode") == "max":
        metrics = [-m for m in metrics]
    expected = _torch_lr_sequence(
        torch, lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, **options), 60, metrics)
    opt = make_optimizer(lr=0.5, second_lr=0.2)
    got = lr_sequence(opt, lr_scheduler.ReduceLROnPlateau(opt, **options), 60, metrics)
    np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-12)
    assert len({tuple(g) for g in got}) > 2          # the schedule did change several times
