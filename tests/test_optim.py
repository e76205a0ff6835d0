"""Optimizers and gradient utilities.

Each optimizer is checked step by step against values worked out by hand
from its update rule (the numbers in the comments), then — where PyTorch is
installed — against torch.optim for 20 steps with every option. The
gradient utilities (clipping, L1/L2 penalties) are checked the same way.
"""
import math
import pickle

import numpy as np
import pytest

import minicnn as mc
import minicnn.optim as optim
from minicnn import nn
from minicnn.nn.utils import clip_grad_norm_, clip_grad_value_, l1_penalty, l2_penalty

pytestmark = pytest.mark.tutorial06        # what tutorials/06_*.ipynb teaches (tests/README.md)


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
def param(values, dtype="float64"):
    return nn.Parameter(mc.tensor(np.asarray(values, dtype=np.float64), dtype=dtype))


def run_quadratic(make_optimizer, steps, w0=(1.0, -2.0), a=(1.0, 3.0), dtype="float64"):
    """Minimise f(w) = 0.5 * sum(a * w^2), whose gradient is a * w; return w after each step."""
    w = param(w0, dtype)
    a = mc.tensor(np.asarray(a), dtype=dtype)
    opt = make_optimizer([w])
    history = []
    for _ in range(steps):
        opt.zero_grad()
        loss = (0.5 * a * w * w).sum()
        loss.backward()
        opt.step()
        history.append(w.numpy())
    return history


def run_with_grads(make_optimizer, grads, w0=0.0, dtype="float64"):
    """Feed a fixed sequence of gradients to a one-element parameter; return w after each step."""
    w = param([w0], dtype)
    opt = make_optimizer([w])
    history = []
    for g in grads:
        w.grad = mc.tensor([g], dtype=dtype)
        opt.step()
        history.append(w.numpy()[0])
    return history


# ----------------------------------------------------------------------------
# SGD, by hand on f(w) = 0.5 * (1 * w0^2 + 3 * w1^2), w = (1, -2), gradient g = (w0, 3 w1)
# ----------------------------------------------------------------------------
def test_sgd_plain_by_hand():
    # w <- w - 0.1 * a * w = w * (1 - 0.1 a): (1, -2) -> (0.9, -1.4) -> (0.81, -0.98)
    w1, w2 = run_quadratic(lambda p: optim.SGD(p, lr=0.1), 2)
    np.testing.assert_allclose(w1, [0.9, -1.4], rtol=1e-14)
    np.testing.assert_allclose(w2, [0.81, -0.98], rtol=1e-14)


def test_sgd_momentum_by_hand():
    # step 1: g = (1, -6); the buffer starts at the gradient itself: b = (1, -6)
    #         w = (1, -2) - 0.1 * (1, -6) = (0.9, -1.4)
    # step 2: g = (0.9, -4.2); b = 0.9 * (1, -6) + (0.9, -4.2) = (1.8, -9.6)
    #         w = (0.9, -1.4) - 0.1 * (1.8, -9.6) = (0.72, -0.44)
    # step 3: g = (0.72, -1.32); b = 0.9 * (1.8, -9.6) + (0.72, -1.32) = (2.34, -9.96)
    #         w = (0.72, -0.44) - 0.1 * (2.34, -9.96) = (0.486, 0.556)
    w1, w2, w3 = run_quadratic(lambda p: optim.SGD(p, lr=0.1, momentum=0.9), 3)
    np.testing.assert_allclose(w1, [0.9, -1.4], rtol=1e-14)
    np.testing.assert_allclose(w2, [0.72, -0.44], rtol=1e-13)
    np.testing.assert_allclose(w3, [0.486, 0.556], rtol=1e-13)


def test_sgd_dampening_by_hand():
    # the first gradient enters the buffer undamped: b = (1, -6), w = (0.9, -1.4)
    # step 2: b = 0.9 * (1, -6) + (1 - 0.5) * (0.9, -4.2) = (1.35, -7.5)
    #         w = (0.9, -1.4) - 0.1 * (1.35, -7.5) = (0.765, -0.65)
    w1, w2 = run_quadratic(lambda p: optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.5), 2)
    np.testing.assert_allclose(w1, [0.9, -1.4], rtol=1e-14)
    np.testing.assert_allclose(w2, [0.765, -0.65], rtol=1e-13)


def test_sgd_nesterov_by_hand():
    # step 1: g = (1, -6), b = (1, -6), d = g + 0.9 b = (1.9, -11.4)
    #         w = (1, -2) - 0.1 * d = (0.81, -0.86)
    # step 2: g = (0.81, -2.58), b = 0.9 * (1, -6) + g = (1.71, -7.98)
    #         d = g + 0.9 b = (2.349, -9.762), w = (0.81, -0.86) - 0.1 d = (0.5751, 0.1162)
    w1, w2 = run_quadratic(lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True), 2)
    np.testing.assert_allclose(w1, [0.81, -0.86], rtol=1e-13)
    np.testing.assert_allclose(w2, [0.5751, 0.1162], rtol=1e-12)


@pytest.mark.tutorial07
def test_sgd_weight_decay_by_hand():
    # g = a w + 0.1 w, so w <- w * (1 - 0.1 (a + 0.1)): factors (0.89, 0.69)
    # (1, -2) -> (0.89, -1.38) -> (0.7921, -0.9522)
    w1, w2 = run_quadratic(lambda p: optim.SGD(p, lr=0.1, weight_decay=0.1), 2)
    np.testing.assert_allclose(w1, [0.89, -1.38], rtol=1e-14)
    np.testing.assert_allclose(w2, [0.7921, -0.9522], rtol=1e-13)


@pytest.mark.tutorial07
def test_sgd_weight_decay_equals_l2_penalty_in_the_loss():
    """SGD(weight_decay=lam) takes the same steps as adding (lam/2) * l2_penalty to the loss."""
    lam = 0.3
    decayed = run_quadratic(lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=lam), 5)

    w = param([1.0, -2.0])
    a = mc.tensor([1.0, 3.0], dtype="float64")
    opt = optim.SGD([w], lr=0.1, momentum=0.9)
    for expected in decayed:
        opt.zero_grad()
        loss = (0.5 * a * w * w).sum() + (lam / 2) * l2_penalty([w])
        loss.backward()
        opt.step()
        np.testing.assert_allclose(w.numpy(), expected, rtol=1e-12)


# ----------------------------------------------------------------------------
# Adam / AdamW, by hand with betas = (0.5, 0.5), lr = 1, eps = 0, gradients 4 then 1
# ----------------------------------------------------------------------------
def test_adam_by_hand():
    # step 1: m = 0.5*4 = 2, v = 0.5*16 = 8; m^ = 2/0.5 = 4, v^ = 8/0.5 = 16
    #         w = 0 - 4/sqrt(16) = -1
    # step 2: m = 0.5*2 + 0.5*1 = 1.5, v = 0.5*8 + 0.5*1 = 4.5
    #         m^ = 1.5/(1 - 0.25) = 2, v^ = 4.5/0.75 = 6;  w = -1 - 2/sqrt(6)
    w1, w2 = run_with_grads(lambda p: optim.Adam(p, lr=1.0, betas=(0.5, 0.5), eps=0.0), [4, 1])
    assert w1 == pytest.approx(-1.0, rel=1e-14)
    assert w2 == pytest.approx(-1 - 2 / math.sqrt(6), rel=1e-14)


def test_adam_amsgrad_by_hand():
    # step 2 as above but v^ uses max(v_1, v_2) = max(8, 4.5) = 8: v^ = 8/0.75
    w1, w2 = run_with_grads(
        lambda p: optim.Adam(p, lr=1.0, betas=(0.5, 0.5), eps=0.0, amsgrad=True), [4, 1])
    assert w1 == pytest.approx(-1.0, rel=1e-14)
    assert w2 == pytest.approx(-1 - 2 / math.sqrt(8 / 0.75), rel=1e-14)


@pytest.mark.tutorial07
def test_adam_weight_decay_is_added_to_the_gradient():
    # w0 = 2, weight_decay 0.5
    # step 1: g = 4 + 0.5*2 = 5; m = 2.5, v = 12.5; m^ = 5, v^ = 25; w = 2 - 5/5 = 1
    # step 2: g = 1 + 0.5*1 = 1.5; m = 1.25 + 0.75 = 2, v = 6.25 + 1.125 = 7.375
    #         m^ = 2/0.75, v^ = 7.375/0.75; w = 1 - m^/sqrt(v^)
    w1, w2 = run_with_grads(
        lambda p: optim.Adam(p, lr=1.0, betas=(0.5, 0.5), eps=0.0, weight_decay=0.5),
        [4, 1], w0=2.0)
    assert w1 == pytest.approx(1.0, rel=1e-14)
    assert w2 == pytest.approx(1 - (2 / 0.75) / math.sqrt(7.375 / 0.75), rel=1e-14)


@pytest.mark.tutorial07
def test_adamw_decays_the_weights_directly():
    # w0 = 2, lr = 1, weight_decay 0.5: each step first multiplies w by 1 - 1*0.5
    # step 1: w = 2*0.5 = 1, then the Adam step with the plain gradient 4: w = 1 - 1 = 0
    # step 2: w = 0*0.5 = 0, then the Adam step of test_adam_by_hand: w = 0 - 2/sqrt(6)
    w1, w2 = run_with_grads(
        lambda p: optim.AdamW(p, lr=1.0, betas=(0.5, 0.5), eps=0.0, weight_decay=0.5),
        [4, 1], w0=2.0)
    assert w1 == pytest.approx(0.0, abs=1e-15)
    assert w2 == pytest.approx(-2 / math.sqrt(6), rel=1e-14)


def test_adamw_default_weight_decay():
    opt = optim.AdamW([param([1.0])])
    assert opt.param_groups[0]["weight_decay"] == 1e-2
    assert optim.Adam([param([1.0])]).param_groups[0]["weight_decay"] == 0


def test_adam_first_step_moves_every_weight_by_lr():
    """Bias correction makes m^ = g and v^ = g^2 at step 1: the step is lr * sign(g)."""
    (w1,) = run_quadratic(lambda p: optim.Adam(p, lr=0.1), 1, w0=(1.0, -2.0), a=(1e-3, 1e3))
    np.testing.assert_allclose(w1, [0.9, -1.9], rtol=2e-5)       # gradients 1e-3 and -2e3
    g = np.array([1e-3, -2e3])                                     # exactly: eps = 1e-8 shortens
    np.testing.assert_allclose(w1, [1.0, -2.0] - 0.1 * g / (np.abs(g) + 1e-8), rtol=1e-14)


def test_adam_default_betas_by_formula():
    # two steps of Adam's rule written out with the default betas on the quadratic
    w0, a, lr, b1, b2, eps = np.array([1.0, -2.0]), np.array([1.0, 3.0]), 0.1, 0.9, 0.999, 1e-8
    g1 = a * w0
    m1, v1 = (1 - b1) * g1, (1 - b2) * g1 ** 2
    w1 = w0 - lr * (m1 / (1 - b1)) / (np.sqrt(v1 / (1 - b2)) + eps)
    g2 = a * w1
    m2, v2 = b1 * m1 + (1 - b1) * g2, b2 * v1 + (1 - b2) * g2 ** 2
    w2 = w1 - lr * (m2 / (1 - b1 ** 2)) / (np.sqrt(v2 / (1 - b2 ** 2)) + eps)
    got1, got2 = run_quadratic(lambda p: optim.Adam(p, lr=lr), 2)
    np.testing.assert_allclose(got1, w1, rtol=1e-14)
    np.testing.assert_allclose(got2, w2, rtol=1e-14)


# ----------------------------------------------------------------------------
# RMSprop, by hand with alpha = 0.5, lr = 1, eps = 0, gradients 4 then 1
# ----------------------------------------------------------------------------
def rmsprop(**options):
    return lambda p: optim.RMSprop(p, lr=1.0, alpha=0.5, eps=0.0, **options)


def test_rmsprop_by_hand():
    # step 1: v = 0.5*16 = 8, w = -4/sqrt(8);  step 2: v = 4 + 0.5 = 4.5, w -= 1/sqrt(4.5)
    w1, w2 = run_with_grads(rmsprop(), [4, 1])
    assert w1 == pytest.approx(-4 / math.sqrt(8), rel=1e-14)
    assert w2 == pytest.approx(-4 / math.sqrt(8) - 1 / math.sqrt(4.5), rel=1e-14)


def test_rmsprop_centered_by_hand():
    # step 1: v = 8, gbar = 2, s = sqrt(8 - 4) = 2, w = -4/2 = -2
    # step 2: v = 4.5, gbar = 1 + 0.5 = 1.5, s = sqrt(4.5 - 2.25) = 1.5, w = -2 - 1/1.5
    w1, w2 = run_with_grads(rmsprop(centered=True), [4, 1])
    assert w1 == pytest.approx(-2.0, rel=1e-14)
    assert w2 == pytest.approx(-2 - 1 / 1.5, rel=1e-14)


def test_rmsprop_momentum_by_hand():
    # b_1 = 4/sqrt(8), b_2 = 0.5 b_1 + 1/sqrt(4.5); w = -b_1, then -b_1 - b_2
    b1 = 4 / math.sqrt(8)
    b2 = 0.5 * b1 + 1 / math.sqrt(4.5)
    w1, w2 = run_with_grads(rmsprop(momentum=0.5), [4, 1])
    assert w1 == pytest.approx(-b1, rel=1e-14)
    assert w2 == pytest.approx(-b1 - b2, rel=1e-14)


def test_rmsprop_centered_momentum_by_hand():
    # s_1 = 2, s_2 = 1.5 (as centered); b_1 = 4/2 = 2, b_2 = 0.5*2 + 1/1.5
    w1, w2 = run_with_grads(rmsprop(centered=True, momentum=0.5), [4, 1])
    assert w1 == pytest.approx(-2.0, rel=1e-14)
    assert w2 == pytest.approx(-2 - (1 + 1 / 1.5), rel=1e-14)


def test_rmsprop_weight_decay_by_hand():
    # w0 = 2, weight_decay 0.5: g_1 = 4 + 1 = 5, v = 12.5, w_1 = 2 - 5/sqrt(12.5)
    w1_expected = 2 - 5 / math.sqrt(12.5)
    g2 = 1 + 0.5 * w1_expected
    v2 = 0.5 * 12.5 + 0.5 * g2 ** 2
    w1, w2 = run_with_grads(rmsprop(weight_decay=0.5), [4, 1], w0=2.0)
    assert w1 == pytest.approx(w1_expected, rel=1e-14)
    assert w2 == pytest.approx(w1_expected - g2 / math.sqrt(v2), rel=1e-14)


# ----------------------------------------------------------------------------
# Adagrad, by hand with lr = 1, eps = 0, gradients 3 then 4
# ----------------------------------------------------------------------------
def adagrad(**options):
    return lambda p: optim.Adagrad(p, lr=1.0, eps=0.0, **options)


def test_adagrad_by_hand():
    # G = 9, w = -3/3 = -1;  G = 9 + 16 = 25, w = -1 - 4/5 = -1.8
    assert run_with_grads(adagrad(), [3, 4]) == pytest.approx([-1.0, -1.8], rel=1e-14)


def test_adagrad_lr_decay_by_hand():
    # step 2 uses lr / (1 + 1 * lr_decay) = 0.5: w = -1 - 0.5 * 4/5 = -1.4
    assert run_with_grads(adagrad(lr_decay=1.0), [3, 4]) == pytest.approx([-1.0, -1.4], rel=1e-14)


# ----------------------------------------------------------------------------
# Adadelta, by hand with lr = 1, rho = 0.5, eps = 1 (eps sets the first step: u_0 = 0), gradients 3 then 1
# ----------------------------------------------------------------------------
def test_adadelta_by_hand():
    # step 1: v = 0.5*9 = 4.5, delta = sqrt(0 + 1)/sqrt(4.5 + 1) * 3, u = 0.5 * delta^2 = 4.5/5.5
    # step 2: v = 0.5*4.5 + 0.5*1 = 2.75, delta = sqrt(4.5/5.5 + 1)/sqrt(2.75 + 1) * 1
    d1 = 3 / math.sqrt(5.5)
    d2 = math.sqrt(4.5 / 5.5 + 1) / math.sqrt(3.75)
    w1, w2 = run_with_grads(lambda p: optim.Adadelta(p, lr=1.0, rho=0.5, eps=1.0), [3, 1])
    assert w1 == pytest.approx(-d1, rel=1e-14)
    assert w2 == pytest.approx(-d1 - d2, rel=1e-14)


def test_adadelta_weight_decay_and_lr_by_hand():
    # w0 = 2, weight_decay 0.5: g_1 = 3 + 1 = 4, v = 8, delta = 4/sqrt(9) = 4/3, lr 0.5 -> w = 2 - 2/3
    w1, = run_with_grads(lambda p: optim.Adadelta(p, lr=0.5, rho=0.5, eps=1.0, weight_decay=0.5), [3],
                         w0=2.0)
    assert w1 == pytest.approx(2 - 2 / 3, rel=1e-14)


def test_adagrad_initial_accumulator_by_hand():
    # G starts at 16: G = 25, w = -3/5;  G = 41, w = -0.6 - 4/sqrt(41)
    got = run_with_grads(adagrad(initial_accumulator_value=16.0), [3, 4])
    assert got == pytest.approx([-0.6, -0.6 - 4 / math.sqrt(41)], rel=1e-14)


def test_adagrad_weight_decay_by_hand():
    # w0 = 1, weight_decay 1: g = 3 + 1 = 4, G = 16, w = 1 - 4/4 = 0
    # step 2: g = 4 + 0 = 4, G = 32, w = -4/sqrt(32)
    got = run_with_grads(adagrad(weight_decay=1.0), [3, 4], w0=1.0)
    assert got == pytest.approx([0.0, -4 / math.sqrt(32)], rel=1e-14, abs=1e-15)


# ----------------------------------------------------------------------------
# the Optimizer machinery: groups, skipping, zero_grad, closure, dtype
# ----------------------------------------------------------------------------
def test_param_groups_with_their_own_lr():
    w, b = param([1.0, -2.0]), param([3.0])
    opt = optim.SGD([{"params": [w]}, {"params": [b], "lr": 0.01}], lr=0.1, momentum=0.0)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[1]["lr"] == 0.01
    assert opt.param_groups[1]["momentum"] == 0.0          # filled in from the defaults
    w.grad = mc.tensor([1.0, 1.0], dtype="float64")
    b.grad = mc.tensor([1.0], dtype="float64")
    opt.step()
    np.testing.assert_allclose(w.numpy(), [0.9, -2.1])
    np.testing.assert_allclose(b.numpy(), [2.99])


def test_add_param_group():
    w, b = param([1.0]), param([1.0])
    opt = optim.Adam([w], lr=0.1)
    opt.add_param_group({"params": b, "lr": 0.5})
    assert len(opt.param_groups) == 2
    assert len(opt.param_groups[1]["params"]) == 1 and opt.param_groups[1]["params"][0] is b
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)
    w.grad, b.grad = mc.tensor([1.0], dtype="float64"), mc.tensor([1.0], dtype="float64")
    opt.step()
    assert w.numpy()[0] == pytest.approx(0.9) and b.numpy()[0] == pytest.approx(0.5)


def test_parameters_without_grad_are_skipped():
    used, unused = param([1.0]), param([5.0])
    opt = optim.SGD([used, unused], lr=0.1, momentum=0.9)
    used.grad = mc.tensor([1.0], dtype="float64")
    opt.step()
    assert unused.numpy()[0] == 5.0
    assert unused not in opt.state or not opt.state[unused]
    assert "momentum_buffer" in opt.state[used]


def test_zero_grad_sets_none_or_zeros():
    w = param([1.0, 2.0])
    opt = optim.SGD([w], lr=0.1)
    w.grad = mc.tensor([3.0, 4.0], dtype="float64")
    opt.zero_grad()
    assert w.grad is None
    w.grad = mc.tensor([3.0, 4.0], dtype="float64")
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(w.grad.numpy(), [0.0, 0.0])


def test_step_with_closure_returns_the_loss():
    w = param([2.0])

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    opt = optim.SGD([w], lr=0.25)
    loss = opt.step(closure)
    assert loss.item() == 4.0
    assert w.numpy()[0] == pytest.approx(1.0)          # 2 - 0.25 * 4


def test_step_does_not_modify_the_gradient():
    w = param([1.0, -2.0])
    opt = optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=0.1)
    w.grad = mc.tensor([1.0, 1.0], dtype="float64")
    opt.step()
    opt.step()
    np.testing.assert_array_equal(w.grad.numpy(), [1.0, 1.0])


def test_trains_a_real_model():
    mc.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    rs = np.random.default_rng(0)
    x = mc.tensor(rs.standard_normal((64, 2)))
    y = mc.tensor((x.numpy()[:, :1] * x.numpy()[:, 1:]))
    opt = optim.Adam(model.parameters(), lr=0.05)
    first = None
    for _ in range(100):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.2 * first


ALL_OPTIMIZERS = {
    "SGD": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "SGD-dampening": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1),
    "Adam": lambda p: optim.Adam(p, lr=0.01, weight_decay=0.01),
    "Adam-amsgrad": lambda p: optim.Adam(p, lr=0.01, amsgrad=True),
    "AdamW": lambda p: optim.AdamW(p, lr=0.01, amsgrad=True),
    "RMSprop": lambda p: optim.RMSprop(p, lr=0.01, momentum=0.9, weight_decay=0.01),
    "RMSprop-centered": lambda p: optim.RMSprop(p, lr=0.01, centered=True, momentum=0.5),
    "Adagrad": lambda p: optim.Adagrad(p, lr=0.1, lr_decay=0.01, weight_decay=0.01,
                                       initial_accumulator_value=0.1),
    "Adadelta": lambda p: optim.Adadelta(p, lr=0.5, rho=0.9, weight_decay=0.01),
}


@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(name, dtype):
    w = nn.Parameter(mc.tensor(np.ones((3, 2)), dtype=dtype))
    opt = ALL_OPTIMIZERS[name]([w])
    for _ in range(3):
        w.grad = mc.tensor(np.full((3, 2), 0.5), dtype=dtype)
        opt.step()
    assert w.dtype == dtype
    for key, value in opt.state[w].items():
        if hasattr(value, "dtype"):
            assert value.dtype == dtype, key


def test_numpy_float64_hyperparameters_do_not_upcast_float32():
    w = param([1.0, 2.0], dtype="float32")
    opt = optim.Adam([w], lr=np.float64(0.1), betas=(np.float64(0.9), np.float64(0.99)))
    w.grad = mc.tensor([1.0, 1.0])
    opt.step()
    assert w.dtype == np.float32
    assert opt.state[w]["exp_avg"].dtype == np.float32
    assert type(opt.param_groups[0]["lr"]) is float


@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
def test_same_results_on_every_backend(name, backend):
    """The update rules use only xp array operations: every backend agrees with numpy."""
    def run():
        w = nn.Parameter(mc.tensor(np.linspace(-1, 1, 6).reshape(2, 3), dtype="float64"))
        opt = ALL_OPTIMIZERS[name]([w])
        for t in range(5):
            w.grad = mc.tensor(np.cos(np.arange(6.0) + t).reshape(2, 3), dtype="float64")
            opt.step()
        return w.numpy(), opt.state_dict()

    got, state = run()
    mc.set_backend("numpy")
    expected, _ = run()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    for saved in state["state"][0].values():      # checkpoints hold host arrays
        assert not hasattr(saved, "shape") or isinstance(saved, np.ndarray)


ADAM_VARIANTS = {
    "adam": lambda ps: optim.Adam(ps, lr=3e-3),
    "adam-l2": lambda ps: optim.Adam(ps, lr=3e-3, weight_decay=1e-2),
    "amsgrad": lambda ps: optim.Adam(ps, lr=3e-3, amsgrad=True, betas=(0.8, 0.95)),
    "adamw": lambda ps: optim.AdamW(ps, lr=3e-3, weight_decay=0.1),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ADAM_VARIANTS)
def test_numba_adam_kernel_equals_the_numpy_update_bit_for_bit(name, dtype):
    """kernels/numba_cpu.py: adam_step_ does Adam.update_param's arithmetic in one pass.
    Same operations, same order, same dtype: the weights must be *equal*, not close."""
    rs = np.random.default_rng(0)
    w0 = rs.standard_normal((3, 5, 7))
    grads = [rs.standard_normal(w0.shape) * 10.0 ** rs.integers(-3, 2) for _ in range(6)]

    def run(backend):
        mc.set_backend(backend)
        w = nn.Parameter(mc.tensor(w0.copy(), dtype=dtype))     # (float64: no copy otherwise)
        opt = ADAM_VARIANTS[name]([w])
        for g in grads:
            w.grad = mc.tensor(g, dtype=dtype)
            opt.step()
        return w.numpy().copy(), {k: np.array(v) for k, v in opt.state[w].items()}

    previous = mc.get_backend()
    try:
        fast_w, fast_state = run("numba")
        ref_w, ref_state = run("numpy")
    finally:
        mc.set_backend(previous)
    np.testing.assert_array_equal(fast_w, ref_w)
    for key in ref_state:
        np.testing.assert_array_equal(fast_state[key], ref_state[key])


def test_numba_adam_kernel_declines_what_it_cannot_update_in_place():
    from minicnn.kernels import numba_cpu
    w = np.zeros((4, 4), np.float32)[:, ::2]          # a strided view
    m, v = np.zeros_like(w), np.zeros_like(w)
    assert numba_cpu.adam_step_(w, np.ones_like(w), m, v, None, 1e-3, (0.9, 0.999), 1e-8, 0, False, 1) is False
    assert (w == 0).all()


# ----------------------------------------------------------------------------
# state_dict / load_state_dict
# ----------------------------------------------------------------------------
def _two_params(values_w=None, values_b=None):
    w = param(np.arange(6.0).reshape(2, 3) / 5 - 0.4 if values_w is None else values_w)
    b = param(np.array([0.5, -0.5]) if values_b is None else values_b)
    return w, b


def _grads_for(t, w, b):
    # a gradient that depends on the current weights, so any divergence shows
    gw = np.array([1.0, 2.0, 3.0]) * w.numpy() + np.sin(t + np.arange(6.0)).reshape(2, 3)
    w.grad = mc.tensor(gw, dtype="float64")
    b.grad = mc.tensor(b.numpy() * 2 + np.cos(t), dtype="float64")


@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
def test_state_dict_round_trip_resumes_identically(name):
    make = ALL_OPTIMIZERS[name]
    w, b = _two_params()
    opt = make([{"params": [w]}, {"params": [b], "lr": 0.05}])
    for t in range(3):
        _grads_for(t, w, b)
        opt.step()

    saved = pickle.loads(pickle.dumps(opt.state_dict()))      # as a checkpoint on disk would
    w2, b2 = _two_params(w.numpy(), b.numpy())
    resumed = make([{"params": [w2]}, {"params": [b2], "lr": 0.9}])
    resumed.load_state_dict(saved)
    assert resumed.param_groups[1]["lr"] == 0.05                # options come from the checkpoint

    for t in range(3, 7):
        _grads_for(t, w, b)
        opt.step()
        _grads_for(t, w2, b2)
        resumed.step()
        np.testing.assert_array_equal(w2.numpy(), w.numpy())
        np.testing.assert_array_equal(b2.numpy(), b.numpy())


def test_state_dict_format_and_snapshot():
    w, b = _two_params()
    opt = optim.SGD([{"params": [w]}, {"params": [b]}], lr=0.1, momentum=0.9)
    _grads_for(0, w, b)
    opt.step()
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    assert set(sd["state"]) == {0, 1}
    buf = sd["state"][0]["momentum_buffer"]
    assert isinstance(buf, np.ndarray)
    before = buf.copy()
    _grads_for(1, w, b)
    opt.step()                                                  # later steps leave it alone
    np.testing.assert_array_equal(buf, before)


def test_load_state_dict_casts_to_the_parameter_dtype():
    w = param([1.0, 2.0])
    opt = optim.Adam([w], lr=0.1)
    w.grad = mc.tensor([1.0, 1.0], dtype="float64")
    opt.step()
    w32 = param(w.numpy(), dtype="float32")
    opt32 = optim.Adam([w32], lr=0.1)
    opt32.load_state_dict(opt.state_dict())
    assert opt32.state[w32]["exp_avg"].dtype == np.float32
    assert opt32.state[w32]["step"] == 1


# ----------------------------------------------------------------------------
# bad input gives clear errors
# ----------------------------------------------------------------------------
def test_error_empty_parameter_list():
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    model = nn.Linear(2, 2)
    params = model.parameters()
    optim.SGD(params, lr=0.1)
    with pytest.raises(ValueError, match="already used up"):
        optim.SGD(params, lr=0.1)


@pytest.mark.parametrize("make", [
    lambda p: optim.SGD(p, lr=-0.1),
    lambda p: optim.Adam(p, lr=-0.1),
    lambda p: optim.AdamW(p, lr=-0.1),
    lambda p: optim.RMSprop(p, lr=-0.1),
    lambda p: optim.Adagrad(p, lr=-0.1),
    lambda p: optim.Adadelta(p, lr=-0.1),
])
def test_error_negative_lr(make):
    with pytest.raises(ValueError, match=r"lr must be >= 0, got -0.1"):
        make([param([1.0])])


def test_error_negative_lr_in_a_group():
    with pytest.raises(ValueError, match=r"lr must be >= 0, got -1"):
        optim.SGD([{"params": [param([1.0])], "lr": -1}], lr=0.1)


def test_error_parameter_twice():
    w = param([1.0])
    with pytest.raises(ValueError, match="more than once in one parameter group"):
        optim.SGD([w, w], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [w]}, {"params": [w]}], lr=0.1)
    opt = optim.SGD([w], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [w]})


def test_error_wrong_kinds_of_params():
    w = param([1.0])
    with pytest.raises(TypeError, match="wrap it in a list"):
        optim.SGD(w, lr=0.1)
    with pytest.raises(TypeError, match="can only optimize Tensors, but one of the params is a l"):
        optim.SGD([[w]], lr=0.1)
    with pytest.raises(TypeError, match="ordered collection"):
        optim.SGD([{"params": {w}}], lr=0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([w * 2], lr=0.1)
    with pytest.raises(TypeError, match="must be a dict"):
        optim.SGD([{"params": [w]}, param([2.0])], lr=0.1)
    with pytest.raises(ValueError, match="needs a 'params' entry"):
        optim.SGD([{"lr": 0.1}], lr=0.1)
    with pytest.raises(TypeError, match="lr must be a number, got str"):
        optim.SGD([w], lr="0.1")


def test_error_bad_hyperparameters():
    w = param([1.0])
    with pytest.raises(ValueError, match="nesterov=True requires momentum > 0 and dampening = 0"):
        optim.SGD([w], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="nesterov=True requires"):
        optim.SGD([w], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="momentum must be >= 0, got -0.9"):
        optim.SGD([w], lr=0.1, momentum=-0.9)
    with pytest.raises(ValueError, match=r"beta2 must be in \[0, 1\), got 1.0"):
        optim.Adam([w], betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="betas must be a pair"):
        optim.Adam([w], betas=0.9)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        optim.RMSprop([w], eps=-1e-8)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        optim.AdamW([w], weight_decay=-0.01)
    with pytest.raises(ValueError, match="lr_decay must be >= 0"):
        optim.Adagrad([w], lr_decay=-1)
    with pytest.raises(ValueError, match=r"rho must be in \[0, 1\], got 1.5"):
        optim.Adadelta([w], rho=1.5)


def test_error_gradient_shape():
    w = param([1.0, 2.0])
    opt = optim.SGD([w], lr=0.1)
    w.grad = mc.tensor([1.0, 2.0, 3.0], dtype="float64")
    with pytest.raises(ValueError, match=r"shape \(2,\) has a gradient of shape \(3,\)"):
        opt.step()


def test_error_load_state_dict_mismatch():
    w, b = _two_params()
    opt = optim.SGD([{"params": [w]}, {"params": [b]}], lr=0.1, momentum=0.9)
    _grads_for(0, w, b)
    opt.step()
    sd = opt.state_dict()

    with pytest.raises(ValueError, match=r"state has 2 parameter group\(s\), this optimizer has 1"):
        optim.SGD([w, b], lr=0.1, momentum=0.9).load_state_dict(sd)
    with pytest.raises(ValueError, match="group 0 has 1 parameters in the saved state but 2"):
        optim.SGD([{"params": [w, param([1.0])]}, {"params": [b]}], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"lacks the option\(s\) \['betas'"):
        optim.Adam([{"params": [w]}, {"params": [b]}]).load_state_dict(sd)
    wrong_shape = optim.SGD([{"params": [param([1.0, 2.0, 3.0])]}, {"params": [b]}], lr=0.1)
    with pytest.raises(ValueError, match=r"'momentum_buffer' has shape \(2, 3\) but its "
                                         r"parameter has shape \(3,\)"):
        wrong_shape.load_state_dict(sd)
    with pytest.raises(TypeError, match="expected a dict with keys 'state' and 'param_groups'"):
        opt.load_state_dict({"state": {}})


def test_repr_lists_the_groups():
    text = repr(optim.SGD([param([1.0])], lr=0.1, momentum=0.9))
    assert text.startswith("SGD (") and "lr: 0.1" in text and "momentum: 0.9" in text


# ----------------------------------------------------------------------------
# gradient clipping and penalties
# ----------------------------------------------------------------------------
def _with_grads(*grads, dtype="float64"):
    params = []
    for g in grads:
        p = param(np.zeros(len(g)), dtype)
        p.grad = mc.tensor(g, dtype=dtype)
        params.append(p)
    return params


def test_clip_grad_norm_by_hand():
    # joint gradient (3, 4, 12) has norm 13; clipping to 6.5 halves every element
    a, b = _with_grads([3.0, 4.0], [12.0])
    total = clip_grad_norm_([a, b], max_norm=6.5)
    assert isinstance(total, mc.Tensor) and total.item() == pytest.approx(13.0)
    coef = 6.5 / (13.0 + 1e-6)
    np.testing.assert_allclose(a.grad.numpy(), [3 * coef, 4 * coef], rtol=1e-14)
    np.testing.assert_allclose(b.grad.numpy(), [12 * coef], rtol=1e-14)


def test_clip_grad_norm_leaves_small_gradients_alone():
    a, b = _with_grads([3.0, 4.0], [12.0])
    assert clip_grad_norm_(iter([a, b]), max_norm=100.0).item() == pytest.approx(13.0)
    np.testing.assert_array_equal(a.grad.numpy(), [3.0, 4.0])


def test_clip_grad_norm_other_norms():
    a, b = _with_grads([3.0, -4.0], [2.0])
    assert clip_grad_norm_([a, b], 100.0, norm_type=1).item() == pytest.approx(9.0)
    assert clip_grad_norm_([a, b], 2.0, norm_type=float("inf")).item() == pytest.approx(4.0)
    np.testing.assert_allclose(a.grad.numpy(), [1.5, -2.0], rtol=1e-6)      # scaled by 2/4


def test_clip_grad_norm_ignores_missing_gradients_and_keeps_dtype():
    (a,) = _with_grads([6.0, 8.0], dtype="float32")
    no_grad = param([1.0, 1.0], dtype="float32")
    total = clip_grad_norm_([a, no_grad], 5.0)
    assert total.item() == pytest.approx(10.0)
    assert a.grad.dtype == np.float32 and total.dtype == np.float32
    np.testing.assert_allclose(a.grad.numpy(), [3.0, 4.0], rtol=1e-6)
    assert no_grad.grad is None
    assert clip_grad_norm_([no_grad], 1.0).item() == 0.0


def test_clip_grad_norm_nonfinite():
    (a,) = _with_grads([np.nan, 1.0])
    with pytest.raises(RuntimeError, match="non-finite|nan"):
        clip_grad_norm_([a], 1.0, error_if_nonfinite=True)


def test_clip_grad_value():
    a, b = _with_grads([3.0, -4.0, 0.5], [-0.2])
    clip_grad_value_([a, b], 1.0)
    np.testing.assert_array_equal(a.grad.numpy(), [1.0, -1.0, 0.5])
    np.testing.assert_array_equal(b.grad.numpy(), [-0.2])


def test_clip_errors():
    (a,) = _with_grads([1.0])
    with pytest.raises(ValueError, match="max_norm must be >= 0, got -1.0"):
        clip_grad_norm_([a], -1)
    with pytest.raises(ValueError, match="norm_type must be a number > 0"):
        clip_grad_norm_([a], 1.0, norm_type=0)
    with pytest.raises(ValueError, match="clip_value must be >= 0"):
        clip_grad_value_([a], -0.5)
    with pytest.raises(TypeError, match="pass model.parameters()"):
        clip_grad_norm_(nn.Linear(2, 2), 1.0)
    with pytest.raises(TypeError, match="one of the parameters is a float"):
        clip_grad_value_([a, 1.0], 1.0)


@pytest.mark.tutorial07
def test_l1_and_l2_penalty_values():
    a, b = param([1.0, -2.0]), param([[3.0], [-0.5]])
    assert l1_penalty([a, b]).item() == pytest.approx(6.5)
    assert l2_penalty([a, b]).item() == pytest.approx(1 + 4 + 9 + 0.25)
    assert l2_penalty(a).item() == pytest.approx(5.0)


@pytest.mark.tutorial07
def test_l1_and_l2_penalty_gradients():
    rs = np.random.default_rng(0)
    # keep every element away from 0, where |w| has a kink
    a = mc.tensor(rs.uniform(0.5, 2.0, (3, 2)) * rs.choice([-1, 1], (3, 2)),
                  requires_grad=True, dtype="float64")
    b = mc.tensor(rs.uniform(0.5, 2.0, (4,)) * rs.choice([-1, 1], 4),
                  requires_grad=True, dtype="float64")
    assert mc.gradcheck(lambda x, y: l1_penalty([x, y]), [a, b])
    assert mc.gradcheck(lambda x, y: l2_penalty([x, y]), [a, b])
    l1_penalty([a, b]).backward()
    np.testing.assert_array_equal(a.grad.numpy(), np.sign(a.numpy()))     # d|w|/dw = sign(w)
    a.grad = None
    l2_penalty([a]).backward()
    np.testing.assert_allclose(a.grad.numpy(), 2 * a.numpy())             # d(w^2)/dw = 2w


def test_penalty_errors():
    with pytest.raises(ValueError, match="got no parameters"):
        l1_penalty([])
    with pytest.raises(TypeError, match="pass model.parameters()"):
        l2_penalty(nn.Linear(2, 2))


# ----------------------------------------------------------------------------
# oracle: PyTorch (optional; torch is not a dependency)
# ----------------------------------------------------------------------------
ORACLE_CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.05)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("RMSprop", dict()),
    ("RMSprop", dict(lr=0.01, alpha=0.9, momentum=0.9, weight_decay=0.01)),
    ("RMSprop", dict(lr=0.01, centered=True)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5, eps=1e-4)),
    ("Adagrad", dict()),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.5,
                     eps=1e-6)),
    ("Adadelta", dict()),
    ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1)),
]


def _oracle_run(name, options, dtype, steps=20):
    """Same start, same (weight-dependent) gradients, two param groups; compare every step."""
    torch = pytest.importorskip("torch")
    rs = np.random.default_rng(7)
    w0, b0 = rs.standard_normal((3, 4)), rs.standard_normal(4)
    scale = rs.uniform(0.1, 3.0, (3, 4))
    noise = rs.standard_normal((steps, 3, 4))
    np_dtype = np.dtype(dtype)
    torch_dtype = {np.float32: torch.float32, np.float64: torch.float64}[np_dtype.type]

    w, b = param(w0, dtype), param(b0, dtype)
    tw = torch.tensor(w0, dtype=torch_dtype, requires_grad=True)
    tb = torch.tensor(b0, dtype=torch_dtype, requires_grad=True)
    ours = getattr(optim, name)([{"params": [w]}, {"params": [b], "lr": 0.03}], **options)
    theirs = getattr(torch.optim, name)([{"params": [tw]}, {"params": [tb], "lr": 0.03}], **options)

    for t in range(steps):
        gw = (scale * w.numpy() + noise[t]).astype(np_dtype)
        gb = (np.sin(b.numpy() + t)).astype(np_dtype)
        w.grad, b.grad = mc.tensor(gw, dtype=dtype), mc.tensor(gb, dtype=dtype)
        tw.grad, tb.grad = (torch.tensor((scale * tw.detach().numpy() + noise[t]).astype(np_dtype)),
                            torch.tensor(np.sin(tb.detach().numpy() + t).astype(np_dtype)))
        ours.step()
        theirs.step()
        yield t, (w.numpy(), b.numpy()), (tw.detach().numpy(), tb.detach().numpy())


@pytest.mark.parametrize("name,options", ORACLE_CASES,
                         ids=[f"{n}-{'-'.join(o) or 'defaults'}" for n, o in ORACLE_CASES])
def test_matches_pytorch_float64(name, options):
    for t, ours, theirs in _oracle_run(name, options, "float64"):
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"step {t}")


@pytest.mark.parametrize("name,options", ORACLE_CASES,
                         ids=[f"{n}-{'-'.join(o) or 'defaults'}" for n, o in ORACLE_CASES])
def test_matches_pytorch_float32(name, options):
    for t, ours, theirs in _oracle_run(name, options, "float32"):
        for a, b in zip(ours, theirs):
            assert a.dtype == np.float32
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=f"step {t}")


def test_state_dict_loads_pytorch_layout():
    """Our state_dict has PyTorch's layout: same group/param numbering and state names."""
    torch = pytest.importorskip("torch")
    w, b = _two_params()
    tw = torch.tensor(w.numpy(), requires_grad=True)
    tb = torch.tensor(b.numpy(), requires_grad=True)
    ours = optim.Adam([{"params": [w]}, {"params": [b], "lr": 0.5}], amsgrad=True)
    theirs = torch.optim.Adam([{"params": [tw]}, {"params": [tb], "lr": 0.5}], amsgrad=True)
    _grads_for(0, w, b)
    tw.grad, tb.grad = torch.tensor(w.grad.numpy()), torch.tensor(b.grad.numpy())
    ours.step()
    theirs.step()
    mine, ref = ours.state_dict(), theirs.state_dict()
    assert [g["params"] for g in mine["param_groups"]] == [g["params"] for g in ref["param_groups"]]
    assert set(mine["state"]) == set(ref["state"])
    for i in mine["state"]:
        assert set(mine["state"][i]) == set(ref["state"][i])


def test_adadelta_state_dict_has_torch_names():
    torch = pytest.importorskip("torch")
    w = param(np.ones(3))
    tw = torch.ones(3, dtype=torch.float64, requires_grad=True)
    ours, theirs = optim.Adadelta([w], weight_decay=0.1), torch.optim.Adadelta([tw], weight_decay=0.1)
    w.grad, tw.grad = mc.tensor(np.full(3, 0.5), dtype="float64"), torch.full((3,), 0.5, dtype=torch.float64)
    ours.step()
    theirs.step()
    mine, ref = ours.state_dict(), theirs.state_dict()
    assert set(mine["state"][0]) == set(ref["state"][0])               # step, square_avg, acc_delta
    for key in ("square_avg", "acc_delta"):
        np.testing.assert_allclose(mine["state"][0][key], ref["state"][0][key].numpy())
    assert set(mine["param_groups"][0]) <= set(ref["param_groups"][0])


def test_clip_grad_norm_matches_pytorch():
    torch = pytest.importorskip("torch")
    rs = np.random.default_rng(3)
    arrays = [rs.standard_normal((4, 5)), rs.standard_normal(7) * 10]
    for norm_type in (2.0, 1.0, 3.0, float("inf")):
        params = _with_grads(*[a.ravel() for a in arrays])
        tparams = [torch.zeros(a.size, dtype=torch.float64, requires_grad=True) for a in arrays]
        for tp, a in zip(tparams, arrays):
            tp.grad = torch.tensor(a.ravel())
        total = clip_grad_norm_(params, 2.5, norm_type=norm_type)
        ttotal = torch.nn.utils.clip_grad_norm_(tparams, 2.5, norm_type=norm_type)
        assert total.item() == pytest.approx(ttotal.item(), rel=1e-12)
        for p, tp in zip(params, tparams):
            np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=1e-12)


def test_clip_grad_value_matches_pytorch():
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(4).standard_normal(20) * 3
    (p,) = _with_grads(g)
    tp = torch.zeros(20, dtype=torch.float64, requires_grad=True)
    tp.grad = torch.tensor(g)
    clip_grad_value_([p], 1.5)
    torch.nn.utils.clip_grad_value_([tp], 1.5)
    np.testing.assert_array_equal(p.grad.numpy(), tp.grad.numpy())


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad", "adadelta"])
def test_every_cli_optimizer_builds_and_steps(name):
    """``minicnn train --optimizer NAME``: each name builds its optimizer (adadelta: PyTorch's MNIST example's)."""
    from minicnn.cli.commands import OPTIMIZERS, build_optimizer
    assert name in OPTIMIZERS
    w = nn.Parameter(mc.tensor(np.ones((3, 2), dtype=np.float32)))
    opt = build_optimizer(name, [w], lr=1.0 if name == "adadelta" else 0.1)
    w.grad = mc.tensor(np.full((3, 2), 0.5, dtype=np.float32))
    opt.step()
    assert float(np.abs(w.numpy() - 1).max()) > 0
