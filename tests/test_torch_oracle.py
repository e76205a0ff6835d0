"""Optional: minicnn against PyTorch (an oracle, not a dependency).

Skipped where torch is not installed (``pip install torch`` to run them).
Forward values and input/parameter gradients must agree in float64.
"""
import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn

torch = pytest.importorskip("torch")
tF = torch.nn.functional


def both(a):
    """The same float64 data as a minicnn tensor and a torch tensor, both requiring grad."""
    return mc.tensor(a, requires_grad=True, dtype="float64"), torch.tensor(a, requires_grad=True)


def check(ours, theirs, ours_inputs, theirs_inputs, atol=1e-10):
    np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), atol=atol, rtol=1e-9)
    g = np.random.default_rng(0).standard_normal(theirs.shape)
    ours.backward(mc.tensor(g, dtype="float64"))
    theirs.backward(torch.tensor(g))
    for a, b in zip(ours_inputs, theirs_inputs):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), atol=atol, rtol=1e-9)


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, 0, 1, 1), (2, 1, 1, 1), (3, 2, 2, 2), ((1, 2), (2, 1), (2, 1), 4), (2, 0, 1, 8)])
def test_conv2d_matches_torch(backend, stride, padding, dilation, groups):
    rs = np.random.default_rng(1)
    (x, tx), (w, tw), (b, tb) = both(rs.standard_normal((2, 8, 9, 7))), \
        both(rs.standard_normal((8, 8 // groups, 3, 2))), both(rs.standard_normal(8))
    check(F.conv2d(x, w, b, stride, padding, dilation, groups),
          tF.conv2d(tx, tw, tb, stride, padding, dilation, groups), (x, w, b), (tx, tw, tb))


@pytest.mark.parametrize("k,s,p", [(2, None, 0), (3, 2, 1), (3, 1, 1), ((2, 3), (1, 2), (1, 1))])
def test_pools_match_torch(backend, k, s, p):
    rs = np.random.default_rng(2)
    data = rs.permutation(2 * 3 * 8 * 7).reshape(2, 3, 8, 7) / 7.0
    (x, tx) = both(data)
    check(F.max_pool2d(x, k, s, p), tF.max_pool2d(tx, k, s, p), (x,), (tx,))
    for cip in (True, False):
        (x, tx) = both(data)
        check(F.avg_pool2d(x, k, s, p, cip), tF.avg_pool2d(tx, k, s, p, count_include_pad=cip), (x,), (tx,))


def test_max_pool_ties_match_torch(backend):
    data = np.random.default_rng(3).integers(0, 3, (2, 2, 6, 6)).astype(np.float64)
    (x, tx) = both(data)
    check(F.max_pool2d(x, 2), tF.max_pool2d(tx, 2), (x,), (tx,))
    (x, tx) = both(data)
    check(F.max_pool2d(x, 3, 1, 1), tF.max_pool2d(tx, 3, 1, 1), (x,), (tx,))


@pytest.mark.parametrize("in_hw,out", [((7, 5), (3, 2)), ((6, 6), 1), ((5, 7), 4), ((3, 3), 5)])
def test_adaptive_avg_pool_matches_torch(in_hw, out):
    (x, tx) = both(np.random.default_rng(4).standard_normal((2, 3, *in_hw)))
    check(F.adaptive_avg_pool2d(x, out), tF.adaptive_avg_pool2d(tx, out), (x,), (tx,))


@pytest.mark.parametrize("dims", [2, 4])
def test_batchnorm_training_steps_and_eval_match_torch(backend, dims):
    mc.manual_seed(0)
    ours = (nn.BatchNorm1d(3) if dims == 2 else nn.BatchNorm2d(3)).double()
    theirs = (torch.nn.BatchNorm1d(3) if dims == 2 else torch.nn.BatchNorm2d(3)).double()
    rs = np.random.default_rng(5)
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(rs.uniform(0.5, 2, 3)))
        theirs.bias.copy_(torch.tensor(rs.standard_normal(3)))
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    shape = (5, 3) if dims == 2 else (4, 3, 5, 2)
    for step in range(3):
        (x, tx) = both(rs.standard_normal(shape) * 2 + step)
        check(ours(x), theirs(tx), (x, ours.weight, ours.bias), (tx, theirs.weight, theirs.bias))
        ours.zero_grad()
        theirs.zero_grad()
    for k, v in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[k].numpy(), v.numpy(), rtol=1e-12, err_msg=k)
    ours.eval()
    theirs.eval()
    (x, tx) = both(rs.standard_normal(shape))
    check(ours(x), theirs(tx), (x,), (tx,))


ACTS = [("relu", F.relu, tF.relu), ("leaky_relu", lambda x: F.leaky_relu(x, 0.2), lambda x: tF.leaky_relu(x, 0.2)),
        ("sigmoid", F.sigmoid, torch.sigmoid), ("tanh", F.tanh, torch.tanh), ("silu", F.silu, tF.silu),
        ("mish", F.mish, tF.mish), ("gelu", F.gelu, tF.gelu),
        ("gelu_tanh", lambda x: F.gelu(x, "tanh"), lambda x: tF.gelu(x, approximate="tanh")),
        ("softplus", F.softplus, tF.softplus),
        ("softmax", lambda x: F.softmax(x, 1), lambda x: tF.softmax(x, 1)),
        ("log_softmax", lambda x: F.log_softmax(x, 0), lambda x: tF.log_softmax(x, 0))]


@pytest.mark.parametrize("name,ours,theirs", ACTS, ids=[a[0] for a in ACTS])
def test_activations_match_torch(name, ours, theirs):
    data = np.random.default_rng(6).standard_normal((4, 6)) * 4
    (x, tx) = both(data)
    check(ours(x), theirs(tx), (x,), (tx,))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_losses_match_torch(reduction):
    rs = np.random.default_rng(7)
    logits, target = rs.standard_normal((6, 5)) * 3, rs.integers(0, 5, 6)
    for ls in (0.0, 0.2):
        (z, tz) = both(logits)
        check(F.cross_entropy(z, mc.tensor(target), ls, reduction),
              tF.cross_entropy(tz, torch.tensor(target), label_smoothing=ls, reduction=reduction), (z,), (tz,))
    (z, tz) = both(logits)
    check(F.nll_loss(z, mc.tensor(target), reduction), tF.nll_loss(tz, torch.tensor(target), reduction=reduction),
          (z,), (tz,))
    a, b = rs.standard_normal((4, 3)), rs.standard_normal((4, 3))
    for ours, theirs in ((F.mse_loss, tF.mse_loss), (F.smooth_l1_loss, tF.smooth_l1_loss)):
        (x, tx), (t, tt) = both(a), both(b)
        check(ours(x, t, reduction), theirs(tx, tt, reduction=reduction), (x, t), (tx, tt))
    (x, tx), (t, tt) = both(a * 5), both(rs.uniform(0, 1, (4, 3)))
    check(F.binary_cross_entropy_with_logits(x, t, reduction),
          tF.binary_cross_entropy_with_logits(tx, tt, reduction=reduction), (x, t), (tx, tt))


def test_state_dict_loads_into_and_from_an_identical_torch_model(backend):
    ours = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 3 * 3, 10)).double()
    theirs = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                 torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(36, 10)).double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(ours.state_dict()[k].shape == tuple(v.shape) for k, v in theirs.state_dict().items())
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    ours.eval()
    theirs.eval()
    data = np.random.default_rng(8).standard_normal((3, 1, 8, 8))
    with torch.no_grad():
        expected = theirs(torch.tensor(data)).numpy()
    np.testing.assert_allclose(ours(mc.tensor(data, dtype="float64")).numpy(), expected, atol=1e-10)


# -- the layers CS231n teaches (tests/test_cs231n_layers.py has their gradchecks) ----------------
LN_CASES = [((3, 5), (5,)), ((2, 3, 4), (4,)), ((2, 3, 4), (3, 4)), ((2, 3, 4, 5), (4, 5)),
            ((2, 3, 4, 5), (3, 4, 5))]
GN_CASES = [((2, 6, 3, 3), 1), ((2, 6, 3, 3), 2), ((2, 6, 3, 3), 6), ((3, 4, 5), 2), ((4, 6), 3)]


@pytest.mark.parametrize("shape,normalized_shape", LN_CASES)
def test_layer_norm_matches_torch(backend, shape, normalized_shape):
    rs = np.random.default_rng(9)
    (x, tx), (w, tw), (b, tb) = (both(rs.standard_normal(s)) for s in (shape, normalized_shape, normalized_shape))
    check(F.layer_norm(x, normalized_shape, w, b, eps=1e-3), tF.layer_norm(tx, normalized_shape, tw, tb, eps=1e-3),
          (x, w, b), (tx, tw, tb))


@pytest.mark.parametrize("shape,groups", GN_CASES)
def test_group_norm_matches_torch(backend, shape, groups):
    rs = np.random.default_rng(10)
    (x, tx), (w, tw), (b, tb) = (both(rs.standard_normal(s)) for s in (shape, shape[1:2], shape[1:2]))
    check(F.group_norm(x, groups, w, b), tF.group_norm(tx, groups, tw, tb), (x, w, b), (tx, tw, tb))


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_multi_margin_loss_matches_torch(backend, p, reduction, weighted):
    rs = np.random.default_rng(11)
    x, tx = both(rs.standard_normal((6, 5)))
    target = rs.integers(0, 5, 6)
    weight = rs.uniform(0.5, 2.0, 5) if weighted else None
    tweight = None if weight is None else torch.tensor(weight)
    check(F.multi_margin_loss(x, target, p, 0.8, weight, reduction),
          tF.multi_margin_loss(tx, torch.tensor(target), p, 0.8, tweight, reduction=reduction), (x,), (tx,))


def test_norm_modules_and_lazy_conv_match_torch_modules():
    """Same parameter names and shapes as PyTorch's modules; loaded weights give the same output."""
    rs = np.random.default_rng(12)
    pairs = [(nn.LayerNorm((4, 5)), torch.nn.LayerNorm((4, 5))), (nn.GroupNorm(3, 6), torch.nn.GroupNorm(3, 6)),
             (nn.LayerNorm(5, elementwise_affine=False), torch.nn.LayerNorm(5, elementwise_affine=False)),
             (nn.LayerNorm(5, bias=False), torch.nn.LayerNorm(5, bias=False))]
    for ours, theirs in pairs:
        sd = theirs.state_dict()
        assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == \
            [(k, tuple(v.shape)) for k, v in sd.items()]
        sd = {k: rs.standard_normal(tuple(v.shape)) for k, v in sd.items()}
        theirs.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in sd.items()})
        ours.load_state_dict(sd)
        x = rs.standard_normal((2, 6, 4, 5)).astype(np.float32)
        np.testing.assert_allclose(ours(mc.tensor(x)).numpy(), theirs(torch.tensor(x)).detach().numpy(),
                                   atol=1e-5)
    lazy, tlazy = nn.LazyConv2d(4, 3, stride=2), torch.nn.LazyConv2d(4, 3, stride=2)
    lazy(mc.tensor(np.zeros((1, 2, 7, 7), dtype=np.float32)))
    tlazy(torch.zeros(1, 2, 7, 7))
    assert type(tlazy) is torch.nn.Conv2d and type(lazy) is nn.Conv2d        # both become Conv2d
    assert [(k, tuple(v.shape)) for k, v in lazy.state_dict().items()] == \
        [(k, tuple(v.shape)) for k, v in tlazy.state_dict().items()]
