"""The layers CS231n teaches, beside the ones the course's CNN needs (issue 26).

Layer norm, group norm, the multiclass SVM loss (``MultiMarginLoss``),
Adadelta (its step-by-step checks are in test_optim.py), the lazy layers, and
PyTorch's import path ``minicnn.nn.functional``. Each Function is gradchecked
in float64 on every backend and checked on a case worked out by hand; the
comparisons with PyTorch (values and gradients) are in test_torch_oracle.py,
Adadelta's in test_optim.py.
"""
import math

import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn
import minicnn.optim as optim


def t64(a, requires_grad=True):
    return mc.tensor(np.asarray(a, dtype=np.float64), requires_grad=requires_grad, dtype="float64")


def randn(*shape, seed=0):
    return t64(np.random.default_rng(seed).standard_normal(shape))


def zeros(*shape, dtype="float32"):
    return mc.tensor(np.zeros(shape), dtype=dtype)


# -- the import path ----------------------------------------------------------------
def test_nn_functional_is_the_functional_module():
    import minicnn.nn.functional as F1
    from minicnn.nn import functional as F2
    assert F1 is F2 is F is mc.functional
    assert F1.layer_norm is F.layer_norm


# -- layer norm ---------------------------------------------------------------------
LN_CASES = [((3, 5), (5,)), ((2, 3, 4), (4,)), ((2, 3, 4), (3, 4)), ((2, 3, 4, 5), (4, 5)),
            ((2, 3, 4, 5), (3, 4, 5))]


@pytest.mark.parametrize("shape,normalized_shape", LN_CASES)
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
def test_layer_norm_gradcheck(backend, shape, normalized_shape, affine):
    x = randn(*shape, seed=1)
    w = randn(*normalized_shape, seed=2) if affine != "none" else None
    b = randn(*normalized_shape, seed=3) if affine == "both" else None
    inputs = tuple(t for t in (x, w, b) if t is not None)

    def f(x, w=None, b=None):
        return F.layer_norm(x, normalized_shape, w, b)

    assert mc.gradcheck(f, inputs)


def test_layer_norm_by_hand():
    # one row (1, 2, 3): mean 2, biased variance 2/3, xhat = (-1, 0, 1) * sqrt(3/2)
    x = t64([[1.0, 2.0, 3.0]])
    y = F.layer_norm(x, 3, eps=0.0)
    np.testing.assert_allclose(y.numpy(), [[-math.sqrt(1.5), 0.0, math.sqrt(1.5)]], rtol=1e-12)
    # the output of a standardisation does not move when x shifts: sum(dx) = 0 for any gy
    y.backward(t64([[1.0, 0.0, 0.0]], requires_grad=False))
    assert abs(x.grad.numpy().sum()) < 1e-12
    # gamma and beta act per feature
    y2 = F.layer_norm(t64([[1.0, 2.0, 3.0]]), (3,), t64([2.0, 2.0, 2.0]), t64([0.0, 1.0, 0.0]), eps=0.0)
    np.testing.assert_allclose(y2.numpy(), [[-2 * math.sqrt(1.5), 1.0, 2 * math.sqrt(1.5)]], rtol=1e-12)


def test_layer_norm_module():
    m = nn.LayerNorm((3, 4))
    assert [(k, v.shape) for k, v in m.state_dict().items()] == [("weight", (3, 4)), ("bias", (3, 4))]
    np.testing.assert_allclose(m.weight.numpy(), 1.0)
    np.testing.assert_allclose(m.bias.numpy(), 0.0)
    assert nn.LayerNorm(4, bias=False).bias is None
    assert list(nn.LayerNorm(4, elementwise_affine=False).parameters()) == []
    x = mc.tensor(np.random.default_rng(0).standard_normal((2, 5, 3, 4)).astype(np.float32))
    y = m(x).numpy()
    np.testing.assert_allclose(y.mean(axis=(2, 3)), 0.0, atol=1e-6)
    m.eval()                                      # no running statistics: the same in eval mode
    np.testing.assert_allclose(m(x).numpy(), y)


def test_layer_norm_errors():
    x = randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"normalized_shape \(3,\) must be the trailing shape .* \(2, 3, 4\)"):
        F.layer_norm(x, 3)
    with pytest.raises(ValueError, match=r"weight should have shape \(4,\)"):
        F.layer_norm(x, 4, randn(3))
    with pytest.raises(ValueError, match="trailing shape"):
        nn.LayerNorm(5)(x)


# -- group norm ---------------------------------------------------------------------
GN_CASES = [((2, 6, 3, 3), 1), ((2, 6, 3, 3), 2), ((2, 6, 3, 3), 3), ((2, 6, 3, 3), 6), ((3, 4, 5), 2),
            ((4, 6), 3)]


@pytest.mark.parametrize("shape,groups", GN_CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_gradcheck(backend, shape, groups, affine):
    C = shape[1]
    x = randn(*shape, seed=4)
    inputs = (x, randn(C, seed=5), randn(C, seed=6)) if affine else (x,)
    assert mc.gradcheck(lambda x, w=None, b=None: F.group_norm(x, groups, w, b), inputs)


def test_group_norm_special_cases_are_layer_norm():
    """One group is layer norm over (C, H, W); one group per channel is instance norm."""
    x = randn(2, 4, 3, 3, seed=7)
    np.testing.assert_allclose(F.group_norm(x, 1).numpy(), F.layer_norm(x, (4, 3, 3)).numpy(), atol=1e-12)
    per_channel = F.layer_norm(x.reshape(2, 4, 9), 9).numpy().reshape(2, 4, 3, 3)
    np.testing.assert_allclose(F.group_norm(x, 4).numpy(), per_channel, atol=1e-12)


def test_group_norm_module_and_errors():
    m = nn.GroupNorm(2, 6)
    assert [(k, v.shape) for k, v in m.state_dict().items()] == [("weight", (6,)), ("bias", (6,))]
    assert list(nn.GroupNorm(2, 6, affine=False).parameters()) == []
    with pytest.raises(ValueError, match=r"num_channels \(6\) must be divisible by num_groups \(4\)"):
        nn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"num_channels \(6\) must be divisible by num_groups \(4\)"):
        F.group_norm(randn(2, 6, 3, 3), 4)
    with pytest.raises(ValueError, match="num_groups must be a positive integer"):
        F.group_norm(randn(2, 6), 0)
    with pytest.raises(ValueError, match=r"input has 4 channels, expected 6"):
        m(randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match=r"weight should have shape \(6,\)"):
        F.group_norm(randn(2, 6), 3, randn(3))


# -- the multiclass SVM loss --------------------------------------------------------
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_multi_margin_loss_gradcheck(backend, p, reduction, weighted):
    # scores spread out so no margin sits at the kink (max(0, m) is not differentiable at m = 0)
    x = t64(np.random.default_rng(8).permutation(20).reshape(4, 5) * 0.37)
    target = np.array([0, 3, 1, 4])
    weight = np.array([0.5, 1.0, 2.0, 1.5, 0.7]) if weighted else None
    assert mc.gradcheck(lambda x: F.multi_margin_loss(x, target, p=p, margin=1.3, weight=weight,
                                                      reduction=reduction), (x,))


def test_multi_margin_loss_by_hand():
    # CS231n's example: scores (3.2, 5.1, -1.7), correct class 0, margin 1:
    # max(0, 5.1 - 3.2 + 1) + max(0, -1.7 - 3.2 + 1) = 2.9 + 0, divided by C = 3 (PyTorch's convention)
    x = t64([[3.2, 5.1, -1.7]])
    loss = F.multi_margin_loss(x, np.array([0]))
    assert loss.item() == pytest.approx(2.9 / 3, rel=1e-12)
    loss.backward()
    # only class 1 violates the margin: +1/3 to it, -1/3 to the correct class
    np.testing.assert_allclose(x.grad.numpy(), [[-1 / 3, 1 / 3, 0.0]], atol=1e-15)
    x2 = t64([[3.2, 5.1, -1.7]])
    loss2 = F.multi_margin_loss(x2, np.array([0]), p=2)      # squared hinge: 2.9^2 / 3
    assert loss2.item() == pytest.approx(2.9 ** 2 / 3, rel=1e-12)
    loss2.backward()
    np.testing.assert_allclose(x2.grad.numpy(), [[-2 * 2.9 / 3, 2 * 2.9 / 3, 0.0]], rtol=1e-12)
    # a single sample as a 1-D input; reduction='none' gives a 0-d loss
    one = F.multi_margin_loss(t64([3.2, 5.1, -1.7]), np.array(0), reduction="none")
    assert one.shape == () and one.item() == pytest.approx(2.9 / 3, rel=1e-12)


def test_multi_margin_loss_module_and_errors():
    crit = nn.MultiMarginLoss(p=2, margin=0.5, weight=[1.0, 2.0, 3.0], reduction="sum")
    assert isinstance(crit, nn.layers._Loss) and crit.reduction == "sum"
    assert "weight" in crit.state_dict()
    assert "weight" not in nn.MultiMarginLoss().state_dict()
    x = randn(2, 3)
    assert crit(x, np.array([2, 0])).item() == pytest.approx(
        F.multi_margin_loss(x, np.array([2, 0]), 2, 0.5, np.array([1.0, 2.0, 3.0]), "sum").item())
    with pytest.raises(ValueError, match=r"only p == 1 and p == 2 are supported, got p=3"):
        nn.MultiMarginLoss(p=3)
    with pytest.raises(ValueError, match="reduction must be one of"):
        F.multi_margin_loss(x, np.array([0, 1]), reduction="avg")
    with pytest.raises(IndexError, match="target class 3 is out of range for 3 classes"):
        F.multi_margin_loss(x, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"weight should have one value per class, shape \(3,\)"):
        F.multi_margin_loss(x, np.array([0, 1]), weight=np.ones(4))


# -- lazy layers ---------------------------------------------------------------------
def test_lazy_layers_become_conv2d_and_linear():
    net = nn.Sequential(nn.LazyConv2d(6, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    assert list(net.parameters()) == [] and len(net.state_dict()) == 0      # nothing before the forward
    assert "LazyConv2d(0, 6" in repr(net) and "LazyLinear(in_features=0, out_features=10" in repr(net)
    out = net(zeros(2, 3, 8, 8))
    assert out.shape == (2, 10)
    assert type(net[0]) is nn.Conv2d and type(net[3]) is nn.Linear          # cls_to_become
    assert (net[0].in_channels, net[3].in_features) == (3, 6 * 8 * 8)
    reference = nn.Sequential(nn.Conv2d(3, 6, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(384, 10))
    assert [(k, v.shape, v.dtype) for k, v in net.state_dict().items()] == \
        [(k, v.shape, v.dtype) for k, v in reference.state_dict().items()]
    assert repr(net) == repr(reference)
    net.load_state_dict(reference.state_dict())                             # interchangeable
    np.testing.assert_array_equal(net(zeros(1, 3, 8, 8) + 1).numpy(), reference(zeros(1, 3, 8, 8) + 1).numpy())
    # the second forward goes straight to Conv2d.forward: the inference hook is gone
    assert not net[0]._forward_pre_hooks and not net[3]._forward_pre_hooks
    assert mc.summary(net, (1, 3, 8, 8)).total_params == reference.num_parameters()


def test_lazy_layers_initialise_like_conv2d_and_linear():
    conv = nn.LazyConv2d(16, 3, groups=2, bias=False)
    conv(zeros(1, 8, 5, 5))
    bound = 1 / math.sqrt(8 // 2 * 3 * 3)
    assert conv.weight.shape == (16, 4, 3, 3) and conv.bias is None
    assert np.abs(conv.weight.numpy()).max() <= bound and np.abs(conv.weight.numpy()).max() > 0.8 * bound
    lin = nn.LazyLinear(7)
    lin(zeros(3, 2, 50))                       # Linear acts on the last axis
    assert lin.weight.shape == (7, 50) and lin.bias.shape == (7,)
    assert np.abs(lin.weight.numpy()).max() <= 1 / math.sqrt(50)


def test_lazy_layers_dtype_summary_and_training():
    lin = nn.LazyLinear(3).double()            # the dtype is remembered for the first forward
    lin(zeros(2, 5, dtype="float64"))
    assert lin.weight.dtype == np.float64
    # summary of a model that was never run: its forward creates the parameters, the totals count them
    fresh = nn.Sequential(nn.LazyConv2d(4, 3), nn.Flatten(), nn.LazyLinear(2))
    assert mc.summary(fresh, (1, 1, 6, 6)).total_params == (4 * 9 + 4) + (4 * 16 * 2 + 2)
    # the documented way: a dummy forward, then the optimizer; then it trains
    net = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(2))
    net(zeros(1, 4))
    opt = optim.SGD(net.parameters(), lr=0.1)
    x = mc.tensor(np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32))
    y = mc.tensor((x.numpy()[:, 0] > 0).astype(np.int64))
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first


def test_lazy_layers_errors():
    # an optimizer before the first forward has nothing to hold: a clear error, naming the cause
    with pytest.raises(ValueError, match="lazy layers.*first forward"):
        optim.SGD(nn.Sequential(nn.LazyLinear(3)).parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"expected a 4-D input \(N, C, H, W\)"):
        nn.LazyConv2d(4, 3)(zeros(2, 3))
    with pytest.raises(ValueError, match=r"groups=3 must divide out_channels \(4\)"):
        nn.LazyConv2d(4, 3, groups=3)
    conv = nn.LazyConv2d(4, 3, groups=2)
    with pytest.raises(ValueError, match=r"groups=2 must divide in_channels \(3\)"):
        conv(zeros(1, 3, 5, 5))
    assert type(conv) is nn.LazyConv2d and list(conv.parameters()) == []   # still lazy after a bad input
    conv(zeros(1, 4, 5, 5))
    assert type(conv) is nn.Conv2d and conv.weight.shape == (4, 2, 3, 3)
