"""A NaN is never lost: planted in an input, it comes out where PyTorch's comes out.

Issue 30: max pooling used to drop a NaN (``[[nan, 1], [2, 3]]`` pooled to 3),
so one NaN pixel through Conv -> ReLU -> MaxPool gave a finite output and the
training loop's NaN guard never saw it. The rule now, everywhere (numpy_ref,
numba, the CUDA kernels, fused or not), is PyTorch's:

* max pooling: a window holding a NaN pools to NaN; its index is the window's
  last NaN (PyTorch's ``val > best || isnan(val)``), and the backward routes the
  gradient there;
* relu(nan) = nan, and relu's gradient passes at a NaN (``not x <= 0``);
* ``amax``: the whole slice's gradient is NaN (nothing equals NaN: 0/0);
  ``max()`` shares the gradient among the NaNs; ``max(dim)``/``min(dim)`` and
  ``argmax``/``argmin`` pick the first NaN;
* sums, means, matrix products, softmax, batch norm: NaN spreads as the
  arithmetic spreads it.

Each test plants NaNs, runs the same computation in PyTorch (float64), and
compares where the NaNs are and every finite number, forward and backward.
The CUDA kernels are checked the same way on the CPU in tests/test_cupy_kernels.py
(``test_cuda_pooling_nan_matches_pytorch_on_the_cpu``).
"""
import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn
from minicnn import models
from minicnn.backend import current, to_device, to_host

torch = pytest.importorskip("torch")
TF = torch.nn.functional
NAN = float("nan")


def planted(shape, where, seed=0):
    """Standard normal float64 with NaN at each index in ``where``."""
    x = np.random.default_rng(seed).standard_normal(shape)
    for index in where:
        x[index] = NAN
    return x


def assert_same(ours, theirs, what):
    """Equal NaN masks, equal finite values (float64: to 1e-10)."""
    ours = ours.numpy() if isinstance(ours, mc.Tensor) else np.asarray(ours)
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs PyTorch's {theirs.shape}"
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs),
                                  err_msg=f"{what}: NaNs in other places than PyTorch's")
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10, equal_nan=True, err_msg=what)


def compare(ours_fn, torch_fn, *arrays, grad_seed=1):
    """Run both on the same float64 inputs, backward with the same random output gradient
    (a plain ``sum`` would hide where the gradient goes), and compare outputs and gradients."""
    ours_in = [mc.tensor(a, dtype="float64", requires_grad=True) for a in arrays]
    torch_in = [torch.tensor(a, requires_grad=True) for a in arrays]
    ours, theirs = ours_fn(*ours_in), torch_fn(*torch_in)
    assert_same(ours, theirs, "forward")
    g = np.random.default_rng(grad_seed).standard_normal(theirs.shape)
    ours.backward(mc.tensor(g, dtype="float64"))
    theirs.backward(torch.tensor(g))
    for i, (a, b) in enumerate(zip(ours_in, torch_in)):
        assert_same(a.grad, b.grad, f"gradient of input {i}")


# -- pooling: the windows NaN used to lose ----------------------------------------------------------
def test_the_issue_example_pools_to_nan(cpu_backend):
    y = F.max_pool2d(mc.tensor([[[[NAN, 1.0], [2.0, 3.0]]]]), 2)
    assert np.isnan(y.numpy()).all()


# (kernel, stride, padding): 2x2/2, overlapping 3x3/1 padded, 3x2 strided unlike the window
POOLS = [(2, 2, 0), (3, 1, 1), ((3, 2), (2, 1), (1, 0))]


@pytest.mark.parametrize("k, s, p", POOLS)
def test_max_pool_nan_windows_match_pytorch(backend, k, s, p):
    # one NaN; two NaNs in one window (the last wins the index); a window of NaNs; a -inf window
    x = planted((2, 3, 7, 8), [(0, 0, 1, 1), (0, 1, 2, 2), (0, 1, 2, 3), (1, 2, 4, 5)])
    x[1, 0, :3, :3] = NAN
    x[1, 1, :3, :3] = -np.inf
    compare(lambda t: F.max_pool2d(t, k, s, p), lambda t: TF.max_pool2d(t, k, s, p), x)
    # the kernel's winners too: its tap i*kw + j of window (oy, ox) is the pixel
    # (oy*sh - ph + i, ox*sw - pw + j), the one PyTorch's flat index names
    (kh, kw), (sh, sw), (ph, pw) = (pair if isinstance(pair, tuple) else (pair, pair) for pair in (k, s, p))
    _, theirs = TF.max_pool2d(torch.tensor(x), k, s, p, return_indices=True)
    _, taps = current.kernels.max_pool2d_forward(to_device(x), kh, kw, (sh, sw), (ph, pw))
    taps = to_host(taps).astype(np.int64)
    oy, ox = np.indices(taps.shape[2:])
    rows, columns = oy * sh - ph + taps // kw, ox * sw - pw + taps % kw
    np.testing.assert_array_equal(rows * x.shape[3] + columns, theirs.numpy())


@pytest.mark.parametrize("k, s, p", POOLS)
def test_avg_pool_spreads_nan_as_pytorch(backend, k, s, p):
    x = planted((2, 2, 7, 8), [(0, 0, 3, 3), (1, 1, 0, 0)])
    compare(lambda t: F.avg_pool2d(t, k, s, p), lambda t: TF.avg_pool2d(t, k, s, p), x)
    compare(lambda t: F.avg_pool2d(t, k, s, p, count_include_pad=False),
            lambda t: TF.avg_pool2d(t, k, s, p, count_include_pad=False), x)


@pytest.mark.parametrize("size", [1, 3, (2, 5)])
def test_adaptive_avg_pool_spreads_nan_as_pytorch(backend, size):
    x = planted((2, 2, 7, 8), [(0, 1, 3, 4), (1, 0, 6, 7)])
    compare(lambda t: F.adaptive_avg_pool2d(t, size), lambda t: TF.adaptive_avg_pool2d(t, size), x)


# -- conv, relu, the fused block --------------------------------------------------------------------
def test_conv_and_relu_match_pytorch(backend):
    x = planted((2, 2, 6, 6), [(0, 0, 2, 3), (1, 1, 5, 5)])
    w = planted((3, 2, 3, 3), [], seed=2)
    b = planted((3,), [], seed=3)
    compare(lambda t, u, v: F.conv2d(t, u, v, padding=1), lambda t, u, v: TF.conv2d(t, u, v, padding=1),
            x, w, b)
    compare(F.relu, TF.relu, planted((4, 5), [(0, 0), (2, 3)]))
    compare(lambda t: F.leaky_relu(t, 0.1), lambda t: TF.leaky_relu(t, 0.1), planted((4, 5), [(1, 1)]))


@pytest.mark.parametrize("pool, bias", [((2, None), True), ((2, None), False), ((3, 2), True)])
def test_conv_relu_max_pool_fused_and_not_match_pytorch(backend, pool, bias):
    """The issue's second example: one NaN pixel through Conv -> ReLU -> MaxPool gives NaNs
    where PyTorch's are, fused or not; the gradients match PyTorch's too."""
    x = planted((2, 3, 9, 9), [(0, 1, 4, 4)])
    w = planted((4, 3, 3, 3), [], seed=2)
    b = planted((4,), [], seed=3) - 0.5
    k, s = pool
    arrays = (x, w, b) if bias else (x, w)

    def theirs(x, w, b=None):
        return TF.max_pool2d(TF.relu(TF.conv2d(x, w, b)), k, s)

    def unfused(x, w, b=None):
        return F.max_pool2d(F.relu(F.conv2d(x, w, b)), k, s)

    def fused(x, w, b=None):
        return F.conv2d_relu_max_pool2d(x, w, b, pool_kernel_size=k, pool_stride=s)

    assert torch.isnan(theirs(*(torch.tensor(a) for a in arrays))).any()    # there is a NaN to lose
    compare(unfused, theirs, *arrays)
    compare(fused, theirs, *arrays)


def test_mc_fuse_keeps_the_nan(backend):
    """``mc.fuse`` swaps Conv -> ReLU -> MaxPool for the fused module: the NaN still comes out."""
    model = models.TinyCNN().double().eval()
    fused = mc.fuse(model)
    assert any(type(m).__name__ == "ConvReLUMaxPool2d" for m in fused.modules())
    x = planted((3, 1, 28, 28), [(1, 0, 14, 14)])
    with mc.no_grad():
        a, b = model(mc.tensor(x, dtype="float64")).numpy(), fused(mc.tensor(x, dtype="float64")).numpy()
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    assert np.isnan(a[1]).all() and np.isfinite(a[[0, 2]]).all()
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, equal_nan=True)


# -- batch norm, linear, softmax, losses ------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_pytorch(backend, training):
    x = planted((4, 3, 5, 5), [(1, 0, 2, 2)])
    rm, rv = np.zeros(3), np.ones(3)
    weight, bias = planted((3,), [], seed=4), planted((3,), [], seed=5)
    compare(lambda t, w, b: F.batch_norm(t, mc.tensor(rm.copy(), dtype="float64"),
                                         mc.tensor(rv.copy(), dtype="float64"), w, b, training),
            lambda t, w, b: TF.batch_norm(t, torch.tensor(rm), torch.tensor(rv), w, b, training),
            x, weight, bias)


def test_linear_matches_pytorch(backend):
    compare(F.linear, TF.linear, planted((4, 6), [(2, 3)]), planted((5, 6), [], seed=2),
            planted((5,), [], seed=3))


def test_softmax_log_softmax_cross_entropy_match_pytorch(backend):
    x = planted((4, 5), [(1, 2)])
    compare(lambda t: F.softmax(t, 1), lambda t: TF.softmax(t, 1), x)
    compare(lambda t: F.log_softmax(t, 1), lambda t: TF.log_softmax(t, 1), x)
    target = np.array([0, 2, 4, 1])
    compare(lambda t: F.cross_entropy(t, mc.tensor(target)),
            lambda t: TF.cross_entropy(t, torch.tensor(target)), x)
    compare(lambda t: F.cross_entropy(t, mc.tensor(target), reduction="none"),
            lambda t: TF.cross_entropy(t, torch.tensor(target), reduction="none"), x)


# -- reductions -------------------------------------------------------------------------------------
REDUCTION_INPUT = [(1, 1), (1, 3), (2, 0)]       # row 1: two NaNs (first one picked), row 2: one


@pytest.mark.parametrize("name, ours, theirs", [
    ("amax()", lambda t: t.amax(), lambda t: t.amax()),
    ("amax(1)", lambda t: t.amax(1), lambda t: t.amax(1)),
    ("amin(0)", lambda t: t.amin(0), lambda t: t.amin(0)),
    ("max()", lambda t: t.max(), lambda t: t.max()),
    ("min()", lambda t: t.min(), lambda t: t.min()),
    ("max(1).values", lambda t: t.max(1).values, lambda t: t.max(1).values),
    ("min(1).values", lambda t: t.min(1).values, lambda t: t.min(1).values),
    ("max(0, keepdim).values", lambda t: t.max(0, keepdim=True)[0], lambda t: t.max(0, keepdim=True)[0]),
    ("mc.max(x, 1).values", lambda t: mc.max(t, 1)[0], lambda t: torch.max(t, 1)[0]),
    ("sum(1)", lambda t: t.sum(1), lambda t: t.sum(1)),
    ("mean(0)", lambda t: t.mean(0), lambda t: t.mean(0)),
])
def test_reductions_match_pytorch(backend, name, ours, theirs):
    compare(ours, theirs, planted((4, 5), REDUCTION_INPUT))


def test_arg_reductions_pick_the_first_nan_as_pytorch(backend):
    x = planted((4, 5), REDUCTION_INPUT)
    ours, theirs = mc.tensor(x, dtype="float64"), torch.tensor(x)
    for op in ("argmax", "argmin"):
        for dim in (0, 1):
            np.testing.assert_array_equal(getattr(ours, op)(dim).numpy(), getattr(theirs, op)(dim).numpy())
        assert getattr(ours, op)().item() == getattr(theirs, op)().item()
    for op in ("max", "min"):
        np.testing.assert_array_equal(getattr(ours, op)(1).indices.numpy(), getattr(theirs, op)(1).indices.numpy())


# -- whole models -----------------------------------------------------------------------------------
def torch_sequential(model):
    """The same network in PyTorch, layer by layer, with our weights (Sequential models only)."""
    layers = []
    for m in model:
        name = type(m).__name__
        if name == "Conv2d":
            t = torch.nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                                m.dilation, m.groups, bias=m.bias is not None)
        elif name == "Linear":
            t = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        elif name in ("BatchNorm1d", "BatchNorm2d"):
            t = getattr(torch.nn, name)(m.num_features, m.eps, m.momentum)
        elif name in ("MaxPool2d", "AvgPool2d"):
            t = getattr(torch.nn, name)(m.kernel_size, m.stride, m.padding)
        else:                                          # ReLU, Tanh, Flatten, Dropout: no options that matter
            t = getattr(torch.nn, name)()
        t.load_state_dict({k: torch.tensor(v.numpy()) for k, v in m.state_dict().items()})
        layers.append(t)
    return torch.nn.Sequential(*layers).double()


@pytest.mark.parametrize("name", ["reference", "reference-bn", "lenet5", "tiny"])
def test_sequential_models_match_pytorch(cpu_backend, name):
    model = models.get_model(name).double().eval()
    twin = torch_sequential(model).eval()
    x = planted((3, 1, 28, 28), [(1, 0, 10, 12)])
    compare(model, twin, x)
    compare(mc.fuse(model), twin, x)


def residual_and_other_models():
    return [n for n in models.MODELS if n not in ("reference", "reference-bn", "lenet5", "tiny")]


@pytest.mark.parametrize("name", residual_and_other_models())
def test_every_other_model_keeps_the_nan_in_its_image(name):
    """The models whose forward is not a plain Sequential: in eval mode one NaN pixel makes
    its own image's logits NaN (a convolution spreads it, pooling keeps it, global average
    pooling mixes it into every channel) and leaves the other images exactly as they were;
    in training mode batch norm's batch mean carries it into every image — as in PyTorch."""
    model = models.get_model(name, input_size=28).double().eval()
    clean = planted((3, 1, 28, 28), [])
    poisoned = clean.copy()
    poisoned[1, 0, 13, 13] = NAN
    with mc.no_grad():
        a = model(mc.tensor(clean, dtype="float64")).numpy()
        b = model(mc.tensor(poisoned, dtype="float64")).numpy()
    assert np.isfinite(a).all()
    assert np.isnan(b[1]).all(), f"{name}: the poisoned image's logits {b[1]}"
    np.testing.assert_array_equal(b[[0, 2]], a[[0, 2]])
    if any(type(m).__name__.startswith("BatchNorm") for m in model.modules()):
        with mc.no_grad():
            assert np.isnan(model.train()(mc.tensor(poisoned, dtype="float64")).numpy()).all()
