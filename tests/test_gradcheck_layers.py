"""Every differentiable function and layer passes mc.gradcheck in float64,
over a grid of options, on every backend (the simulator and a GPU included)."""
import itertools

import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn


def t64(a, requires_grad=True):
    return mc.tensor(np.asarray(a, dtype=np.float64), requires_grad=requires_grad, dtype="float64")


def randn(*shape, seed=0):
    return t64(np.random.default_rng(seed).standard_normal(shape))


# -- convolution: stride 1-3 x padding 0-2 x dilation 1-2 x groups 1/2/depthwise x bias ----
CONV_GRID = list(itertools.product([1, 2, 3], [0, 1, 2], [1, 2], [1, 2, 4], [True, False]))


@pytest.mark.parametrize("stride,padding,dilation,groups,bias", CONV_GRID,
                         ids=[f"s{s}-p{p}-d{d}-g{g}-{'b' if b else 'nob'}" for s, p, d, g, b in CONV_GRID])
@pytest.mark.tutorial02
def test_conv2d_gradcheck_grid(backend, stride, padding, dilation, groups, bias):
    # non-square input (6x5) and kernel (3x2); groups=4 with 4 channels is depthwise
    x = randn(2, 4, 6, 5, seed=1)
    w = randn(4, 4 // groups, 3, 2, seed=2)
    b = randn(4, seed=3) if bias else None
    inputs = (x, w, b) if bias else (x, w)

    def f(x, w, b=None):
        return F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)

    assert mc.gradcheck(f, inputs)


@pytest.mark.parametrize("config", [
    dict(stride=(1, 2), padding=(2, 0), dilation=(2, 1)),       # per-axis options
    dict(stride=(3, 1), padding=(0, 1), dilation=(1, 3)),
    dict(groups=8),                                            # depthwise with channel multiplier 2
])
@pytest.mark.tutorial02
def test_conv2d_asymmetric_options(backend, config):
    groups = config.get("groups", 1)
    x = randn(1, 8 if groups == 8 else 3, 7, 9, seed=4)
    w = randn(16 if groups == 8 else 5, 1 if groups == 8 else 3, 2, 3, seed=5)
    assert mc.gradcheck(lambda x, w: F.conv2d(x, w, **config), (x, w))


@pytest.mark.tutorial02
def test_conv2d_equals_the_simple_version_and_direct_loops(backend):
    rs = np.random.default_rng(6)
    x, w, b = rs.standard_normal((2, 3, 7, 6)), rs.standard_normal((4, 3, 3, 2)), rs.standard_normal(4)
    X, Wt, B = (mc.tensor(a, dtype="float64") for a in (x, w, b))
    y = F.conv2d(X, Wt, B, stride=2, padding=1).numpy()
    y_simple = F.conv2d_simple(X, Wt, B, stride=2, padding=1).numpy()
    # direct loops: the definition of (cross-)correlation
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros_like(y)
    for n, o, i, j in itertools.product(range(2), range(4), range(y.shape[2]), range(y.shape[3])):
        ref[n, o, i, j] = (xp[n, :, 2 * i:2 * i + 3, 2 * j:2 * j + 2] * w[o]).sum() + b[o]
    np.testing.assert_allclose(y, ref, atol=1e-12)
    np.testing.assert_allclose(y_simple, ref, atol=1e-12)


@pytest.mark.tutorial02
def test_conv2d_simple_and_unfold_gradcheck(backend):
    x, w = randn(2, 2, 5, 5, seed=7), randn(3, 2, 3, 3, seed=8)
    assert mc.gradcheck(lambda x, w: F.conv2d_simple(x, w, stride=2, padding=1), (x, w))
    assert mc.gradcheck(lambda x: F.unfold(x, (2, 3), stride=(1, 2), padding=1, dilation=(2, 1)), (x,))


# -- pooling -----------------------------------------------------------------------
POOL_GRID = [  # (kernel, stride, padding): non-overlapping, overlapping, padded, non-square
    (2, None, 0), (2, 1, 0), (3, 2, 1), (3, 1, 1), ((2, 3), (2, 1), (1, 1)), (3, 3, 0), ((3, 2), 2, (1, 0)),
]


@pytest.mark.parametrize("kernel,stride,padding", POOL_GRID, ids=str)
@pytest.mark.tutorial03
def test_max_pool2d_gradcheck(backend, kernel, stride, padding):
    # distinct values: a tie at the max makes the function non-differentiable there
    vals = np.random.default_rng(9).permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6) / 10.0
    x = t64(vals)
    assert mc.gradcheck(lambda x: F.max_pool2d(x, kernel, stride, padding), (x,))


@pytest.mark.parametrize("kernel,stride,padding", POOL_GRID, ids=str)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.tutorial03
def test_avg_pool2d_gradcheck(backend, kernel, stride, padding, count_include_pad):
    x = randn(2, 3, 7, 6, seed=10)
    assert mc.gradcheck(lambda x: F.avg_pool2d(x, kernel, stride, padding, count_include_pad), (x,))


@pytest.mark.parametrize("in_hw,out", [((6, 6), 1), ((6, 6), 3), ((7, 5), (3, 2)), ((5, 7), (4, 4)),
                                       ((4, 4), (None, 2)), ((3, 3), 5)], ids=str)
@pytest.mark.tutorial03
def test_adaptive_avg_pool2d_gradcheck(backend, in_hw, out):
    x = randn(2, 3, *in_hw, seed=11)
    assert mc.gradcheck(lambda x: F.adaptive_avg_pool2d(x, out), (x,))


# -- batch norm ----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5, 2)], ids=["1d", "2d"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.tutorial05
def test_batch_norm_gradcheck(backend, shape, training, affine):
    x = randn(*shape, seed=12)
    C = shape[1]
    rm = mc.tensor(np.random.default_rng(13).standard_normal(C), dtype="float64")
    rv = mc.tensor(np.random.default_rng(14).uniform(0.5, 2, C), dtype="float64")
    w, b = (randn(C, seed=15), randn(C, seed=16)) if affine else (None, None)
    inputs = (x, w, b) if affine else (x,)

    def f(x, w=None, b=None):
        return F.batch_norm(x, rm, rv, w, b, training=training)

    assert mc.gradcheck(f, inputs)


@pytest.mark.parametrize("layer", ["1d", "2d"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.tutorial05
def test_batchnorm_layers_gradcheck_with_parameters(backend, layer, training):
    m = (nn.BatchNorm1d(4) if layer == "1d" else nn.BatchNorm2d(4)).double()
    m.weight.array = mc.tensor(np.linspace(0.5, 2, 4), dtype="float64").array     # host -> backend
    m.bias.array = mc.tensor(np.linspace(-1, 1, 4), dtype="float64").array
    m.train(training)
    x = randn(*((5, 4) if layer == "1d" else (3, 4, 3, 3)), seed=17)
    assert mc.gradcheck(m, (x,))


# -- activations ---------------------------------------------------------------------------
ACTIVATIONS = {
    "relu": F.relu, "leaky_relu": lambda x: F.leaky_relu(x, 0.1), "sigmoid": F.sigmoid,
    "tanh": F.tanh, "silu": F.silu, "mish": F.mish, "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "softplus": F.softplus,
    "softmax": F.softmax, "softmax_dim0": lambda x: F.softmax(x, dim=0),
    "log_softmax": F.log_softmax, "log_softmax_dim0": lambda x: F.log_softmax(x, dim=0),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.tutorial03
def test_activation_gradcheck(backend, name):
    vals = np.random.default_rng(18).standard_normal((4, 5)) * 3
    vals[np.abs(vals) < 1e-3] = 0.5          # stay away from the kinks of relu / leaky_relu
    assert mc.gradcheck(ACTIVATIONS[name], (t64(vals),))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.tutorial03
def test_activations_are_stable_for_huge_inputs(backend, name):
    x = mc.tensor([[-1e4, -50.0, 0.0, 50.0, 1e4]], requires_grad=True)
    y = ACTIVATIONS[name](x)
    y.sum().backward()
    assert np.isfinite(y.numpy()).all() and np.isfinite(x.grad.numpy()).all(), name


# -- losses -----------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.tutorial00
def test_cross_entropy_gradcheck(backend, reduction, label_smoothing):
    logits = randn(5, 4, seed=19)
    target = mc.tensor([0, 3, 1, 1, 2])
    assert mc.gradcheck(lambda z: F.cross_entropy(z, target, label_smoothing, reduction), (logits,))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_other_losses_gradcheck(backend, reduction):
    x, t = randn(4, 3, seed=20), randn(4, 3, seed=21)
    target = mc.tensor([2, 0, 1, 1])
    probs = t64(np.random.default_rng(22).uniform(0, 1, (4, 3)))
    assert mc.gradcheck(lambda x: F.nll_loss(F.log_softmax(x), target, reduction), (x,))
    assert mc.gradcheck(lambda x, t: F.mse_loss(x, t, reduction), (x, t))
    assert mc.gradcheck(lambda x, t: F.smooth_l1_loss(x, t, reduction, beta=0.7), (x, t))
    assert mc.gradcheck(lambda x, p: F.binary_cross_entropy_with_logits(x, p, reduction), (x, probs))


@pytest.mark.tutorial00
def test_losses_are_stable_for_huge_logits(backend):
    z = mc.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]], requires_grad=True)
    loss = F.cross_entropy(z, mc.tensor([0, 2]))
    loss.backward()
    assert np.isfinite(loss.item()) and loss.item() == pytest.approx((0 + 1e4 - 5) / 2, rel=1e-6)
    assert np.isfinite(z.grad.numpy()).all()
    x = mc.tensor([1e4, -1e4, 100.0], requires_grad=True)
    bce = F.binary_cross_entropy_with_logits(x, mc.tensor([0.0, 1.0, 1.0]))
    bce.backward()
    assert bce.item() == pytest.approx((1e4 + 1e4 + 0) / 3, rel=1e-6)
    assert np.isfinite(x.grad.numpy()).all()


# -- linear, dropout, layers, a CNN end to end ---------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_shape", [(5,), (2, 3)], ids=str)
@pytest.mark.tutorial01
def test_linear_gradcheck(backend, bias, batch_shape):
    x = randn(*batch_shape, 4, seed=23)
    w, b = randn(3, 4, seed=24), (randn(3, seed=25) if bias else None)
    assert mc.gradcheck(lambda x, w, b=None: F.linear(x, w, b), (x, w, b) if bias else (x, w))


@pytest.mark.tutorial05
def test_dropout_gradcheck_with_fixed_mask(backend):
    x = randn(4, 6, seed=26)

    def f(x):
        mc.manual_seed(7)                    # same mask on every evaluation
        return F.dropout(x, 0.4, training=True)

    assert mc.gradcheck(f, (x,))


@pytest.mark.parametrize("make", [
    lambda: nn.Linear(4, 3), lambda: nn.Conv2d(2, 4, 3, padding=1, stride=2),
    lambda: nn.Conv2d(4, 4, (3, 2), groups=4, bias=False), lambda: nn.LeakyReLU(0.2),
    lambda: nn.Sequential(nn.Conv2d(2, 3, 2), nn.Tanh(), nn.AvgPool2d(2)),
], ids=["linear", "conv", "depthwise", "leaky", "seq"])
@pytest.mark.tutorial01
def test_layers_gradcheck_with_parameters(backend, make):
    m = make().double()
    x = randn(*((3, 4) if isinstance(m, nn.Linear) else (2, m[0].in_channels if isinstance(m, nn.Sequential)
                                                            else getattr(m, "in_channels", 2), 5, 5)),
              seed=27)
    assert mc.gradcheck(m, (x,))


@pytest.mark.tutorial01
def test_small_cnn_end_to_end_gradcheck(backend):
    mc.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, groups=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 5), nn.Mish(), nn.Dropout(0.3), nn.Linear(5, 3),
    ).double()
    x = t64(np.random.default_rng(28).standard_normal((4, 1, 8, 8)), requires_grad=False)
    target = mc.tensor([0, 2, 1, 2])

    # gradcheck a Module and it checks the parameters too: wrap model + loss in one
    wrapper = _LossModule(model, target)
    assert mc.gradcheck(wrapper, (x,))


class _LossModule(nn.Module):
    def __init__(self, model, target):
        super().__init__()
        self.model, self.target = model, target

    def forward(self, x):
        mc.manual_seed(11)
        return F.cross_entropy(self.model(x), self.target)


# -- the checker itself must catch a wrong backward -----------------------------------
class _WrongSquareFn(mc.Function):
    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, gy):
        return gy * 2.1 * self.x            # should be 2x


@pytest.mark.tutorial01
def test_gradcheck_catches_a_wrong_backward_and_names_the_worst_element():
    x = t64([[1.0, -2.0], [3.0, 0.5]])
    with pytest.raises(mc.GradcheckError, match=r"input 0 .* at index \(1, 0\): analytic .* vs numeric"):
        mc.gradcheck(lambda x: _WrongSquareFn.apply(x), (x,))


@pytest.mark.tutorial01
def test_gradcheck_requires_float64_and_something_to_check():
    with pytest.raises(TypeError, match="float64"):
        mc.gradcheck(lambda x: x * 2, (mc.tensor([1.0], requires_grad=True),))
    with pytest.raises(ValueError, match="nothing to check"):
        mc.gradcheck(lambda x: x * 2, (mc.tensor([1.0], dtype="float64"),))


@pytest.mark.tutorial01
def test_gradcheck_verbose_prints_the_errors(capsys):
    mc.gradcheck(lambda x: (x * x).sum(), (t64([1.0, 2.0]),), verbose=True)
    assert "max relative error" in capsys.readouterr().out
