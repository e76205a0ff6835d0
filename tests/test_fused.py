"""The fused Conv2d -> ReLU -> MaxPool2d (functional/fused.py, nn/fusion.py) computes what
the three layers compute.

1. The reference kernels: ``bias_relu_max_pool2d_forward`` equals max_pool2d(relu(y + b))
   written with the unfused reference kernels, and its backward equals relu's and the pool's
   backward chained, on drawn shapes, ties included.
2. Every backend's fused kernels equal numpy_ref's (hypothesis shapes; the 2x2 / stride-2
   fast path of numba included).
3. ``conv2d_relu_max_pool2d`` passes gradcheck in float64 on every backend, over conv and
   pool options.
4. A model: Sequential fuses, and fused vs unfused give equal outputs, equal gradients and
   the same training run; a hook on any of the three layers turns fusion off for that block.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn
from minicnn import models
from minicnn.backend import BackendError, _load, to_host
from minicnn.functional.fused import conv2d_relu_max_pool2d
from minicnn.kernels import numpy_ref as ref

pytestmark = pytest.mark.tutorial09        # what tutorials/09_*.ipynb teaches (tests/README.md)

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def fused_cases(draw, integer_valued=False):
    """y (C, N, H, W), bias or None, window, stride; the window fits, no padding."""
    c, n = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(kh, 9)), draw(st.integers(kw, 9))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if draw(st.booleans()):                        # the fast path's shape, often
        kh = kw = 2
        stride = (2, 2)
        h, w = max(h, 2), max(w, 2)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if integer_valued:                             # ties, and many windows <= 0
        y = rng.integers(-2, 3, (c, n, h, w)).astype(dtype)
        bias = rng.integers(-1, 2, c).astype(dtype)
    else:
        y = rng.standard_normal((c, n, h, w)).astype(dtype)
        bias = rng.standard_normal(c).astype(dtype)
    return y, (bias if draw(st.booleans()) else None), kh, kw, stride


def _unfused_reference(y, bias, kh, kw, stride):
    """max_pool2d(relu(y + b)) with the unfused reference kernels, in (N, C, ...) order."""
    z = y if bias is None else y + bias.reshape(-1, 1, 1, 1)
    x = np.ascontiguousarray(z.transpose(1, 0, 2, 3))            # (N, C, H, W)
    r = np.maximum(x, 0)
    p, arg = ref.max_pool2d_forward(r, kh, kw, stride, (0, 0))
    return x, r, p, arg


# -- 1. the specification against the unfused layers --------------------------------------------
def _check_reference(case):
    y, bias, kh, kw, stride = case
    x, r, p_ref, arg_ref = _unfused_reference(y, bias, kh, kw, stride)
    p, arg = ref.bias_relu_max_pool2d_forward(y, bias, kh, kw, stride)
    np.testing.assert_array_equal(p, p_ref)
    # the winner where the window's max is positive; -1 (no gradient) where relu clipped it
    positive = p_ref > 0
    np.testing.assert_array_equal(arg[positive], arg_ref[positive])
    assert (arg[~positive] == -1).all()

    gp = np.random.default_rng(5).standard_normal(p.shape).astype(y.dtype)
    # unfused backward: the pool routes gp to its winner, relu passes it where x > 0
    dr = ref.max_pool2d_backward(gp, arg_ref, x.shape, kh, kw, stride, (0, 0))
    dx = dr * (x > 0)
    dy = ref.bias_relu_max_pool2d_backward(gp, arg, y.shape, kh, kw, stride)
    assert dy.shape == y.shape and dy.dtype == y.dtype
    np.testing.assert_array_equal(dy, dx.transpose(1, 0, 2, 3))


@SETTINGS
@given(case=fused_cases())
def test_reference_equals_relu_then_max_pool(case):
    _check_reference(case)


@SETTINGS
@given(case=fused_cases(integer_valued=True))
def test_reference_with_ties_and_clipped_windows(case):
    _check_reference(case)


def test_hand_computed_window():
    """One channel, one 2x2 window per row of this 2x4 plane, bias 1."""
    y = np.array([[[[1., 3., -5., -2.],
                    [3., 2., -4., -3.]]]])                   # (C=1, N=1, 2, 4)
    p, arg = ref.bias_relu_max_pool2d_forward(y, np.array([1.]), 2, 2, (2, 2))
    np.testing.assert_array_equal(p, [[[[4., 0.]]]])         # relu(max(y) + 1): 4, and relu(-1) = 0
    np.testing.assert_array_equal(arg, [[[[1, -1]]]])        # tap 1 (row 0, col 1) wins ties with tap 2
    dy = ref.bias_relu_max_pool2d_backward(np.array([[[[10., 20.]]]]), arg, y.shape, 2, 2, (2, 2))
    np.testing.assert_array_equal(dy, [[[[0., 10., 0., 0.], [0., 0., 0., 0.]]]])


# -- 2. every backend's kernels against the specification ----------------------------------------
@pytest.fixture(params=["numba", "simulator", "cupy"], scope="module")
def kernel_backend(request):
    try:
        xp, kernels = _load(request.param)
    except BackendError as e:
        if request.param != "cupy":
            raise
        pytest.skip(f"{request.param} backend unavailable here: {e}")
    return xp, kernels


def _on(kernel_backend, name, *args):
    xp, kernels = kernel_backend
    args = [xp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    out = getattr(kernels, name)(*args)
    return tuple(to_host(o) for o in out) if isinstance(out, tuple) else to_host(out)


def _check_backend(kernel_backend, case):
    y, bias, kh, kw, stride = case
    p_ref, arg_ref = ref.bias_relu_max_pool2d_forward(y, bias, kh, kw, stride)
    p, arg = _on(kernel_backend, "bias_relu_max_pool2d_forward", y, bias, kh, kw, stride)
    assert p.dtype == y.dtype and arg.dtype == arg_ref.dtype
    np.testing.assert_array_equal(p, p_ref)
    np.testing.assert_array_equal(arg, arg_ref)
    gp = np.random.default_rng(6).standard_normal(p.shape).astype(y.dtype)
    dy_ref = ref.bias_relu_max_pool2d_backward(gp, arg_ref, y.shape, kh, kw, stride)
    dy = _on(kernel_backend, "bias_relu_max_pool2d_backward", gp, arg_ref, y.shape, kh, kw, stride)
    assert dy.shape == y.shape and dy.dtype == y.dtype
    eps = np.finfo(y.dtype).eps
    np.testing.assert_allclose(dy, dy_ref, rtol=40 * eps, atol=40 * eps)


@SETTINGS
@given(case=fused_cases())
def test_backend_kernels_match_the_reference(kernel_backend, case):
    _check_backend(kernel_backend, case)


@SETTINGS
@given(case=fused_cases(integer_valued=True))
def test_backend_kernels_match_the_reference_with_ties(kernel_backend, case):
    _check_backend(kernel_backend, case)


@pytest.mark.parametrize("shape", [(32, 4, 26, 26), (64, 3, 11, 11), (5, 2, 7, 9)])
def test_backend_kernels_on_the_reference_cnns_shapes(kernel_backend, shape):
    rs = np.random.default_rng(7)
    y = rs.standard_normal(shape).astype(np.float32)
    _check_backend(kernel_backend, (y, rs.standard_normal(shape[0]).astype(np.float32), 2, 2, (2, 2)))


# -- 3. gradcheck through the Function -----------------------------------------------------------
OPTIONS = [
    dict(),
    dict(stride=2, padding=1),
    dict(padding=1, pool_kernel_size=3, pool_stride=2),             # overlapping windows
    dict(dilation=2, pool_kernel_size=(2, 1)),
    dict(groups=2, pool_kernel_size=2, pool_stride=1),
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("with_bias", [True, False])
def test_gradcheck(backend, options, with_bias):
    rs = np.random.default_rng(8)
    x = mc.tensor(rs.standard_normal((2, 4, 9, 8)), requires_grad=True, dtype="float64")
    w = mc.tensor(rs.standard_normal((6, 4 // options.get("groups", 1), 3, 3)), requires_grad=True,
                  dtype="float64")
    b = mc.tensor(rs.standard_normal(6), requires_grad=True, dtype="float64") if with_bias else None
    inputs = (x, w, b) if with_bias else (x, w)

    def f(x, w, b=None):
        return conv2d_relu_max_pool2d(x, w, b, **options)
    assert mc.gradcheck(f, inputs)


def test_the_function_equals_the_three_functions(cpu_backend):
    rs = np.random.default_rng(9)
    x = mc.tensor(rs.standard_normal((3, 2, 10, 10)), dtype="float64")
    w = mc.tensor(rs.standard_normal((5, 2, 3, 3)), dtype="float64")
    b = mc.tensor(rs.standard_normal(5), dtype="float64")
    fused = conv2d_relu_max_pool2d(x, w, b, padding=1, pool_kernel_size=2)
    unfused = F.max_pool2d(F.relu(F.conv2d(x, w, b, padding=1)), 2)
    np.testing.assert_array_equal(fused.numpy(), unfused.numpy())


def test_bad_arguments_are_named():
    x = mc.tensor(np.zeros((1, 1, 4, 4), np.float32))
    w = mc.tensor(np.zeros((2, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"conv2d_relu_max_pool2d: the kernel spans 3 .*output is \(2, 2\)"):
        conv2d_relu_max_pool2d(x, w, pool_kernel_size=3)
    with pytest.raises(ValueError, match="conv2d_relu_max_pool2d: expected a 4-D input"):
        conv2d_relu_max_pool2d(mc.tensor(np.zeros((4, 4), np.float32)), w)
    with pytest.raises(TypeError, match="pool_kernel_size"):
        conv2d_relu_max_pool2d(x, w, pool_kernel_size="2")


# -- 4. models -----------------------------------------------------------------------------------
def _step(model, x, y):
    for p in model.parameters():
        p.grad = None
    out = model(x)
    F.cross_entropy(out, y).backward()
    return out.numpy().copy(), [p.grad.numpy().copy() for p in model.parameters()]


def test_sequential_uses_the_fused_function_and_matches_unfused(cpu_backend):
    mc.manual_seed(0)
    model = models.get_model("reference").eval()
    rs = np.random.default_rng(10)
    x = mc.tensor(rs.standard_normal((6, 1, 28, 28)).astype(np.float32))
    y = mc.tensor(np.arange(6) % 10)
    out = model(x)
    kinds = set()
    stack = [out._ctx]
    while stack:                                   # the Functions the graph recorded
        fn = stack.pop()
        if fn is not None:
            kinds.add(type(fn).__name__)
            stack.extend(t._ctx for t in fn.inputs if t is not None)
    # the model's parameters require grad, so the graph is recorded even in eval mode
    assert "ConvReLUMaxPool2dFn" in kinds and "MaxPool2dFn" not in kinds
    fused_out, fused_grads = _step(model, x, y)
    with nn.fusion.disabled():
        plain_out, plain_grads = _step(model, x, y)
    assert nn.fusion.is_enabled()
    np.testing.assert_array_equal(fused_out, plain_out)
    for a, b in zip(fused_grads, plain_grads):
        # the same numbers into the same matrix products; BLAS may block them differently
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_training_runs_are_the_same_fused_or_not(cpu_backend):
    rs = np.random.default_rng(11)
    x = mc.tensor(rs.standard_normal((16, 1, 28, 28)), dtype="float64")
    y = mc.tensor(rs.integers(0, 10, 16))
    losses = []
    for fuse in (True, False):
        nn.fusion.set_enabled(fuse)
        try:
            mc.manual_seed(1)
            model = models.get_model("reference").double()
            opt = mc.optim.Adam(model.parameters(), lr=1e-3)
            run = []
            for _ in range(4):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                run.append(loss.item())
            losses.append(run)
        finally:
            nn.fusion.set_enabled(True)
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-12)


@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("kind", ["forward", "pre"])
def test_a_hooked_layer_is_never_fused(layer, kind):
    model = models.get_model("reference").eval()
    seen = []
    hook = (lambda m, inputs, output: seen.append(output.shape)) if kind == "forward" else \
        (lambda m, inputs: seen.append(inputs[0].shape))
    register = (model[layer].register_forward_hook if kind == "forward"
                else model[layer].register_forward_pre_hook)
    handle = register(hook)
    x = mc.tensor(np.zeros((2, 1, 28, 28), np.float32))
    model(x)
    assert len(seen) == 1                          # the hook ran: the block ran layer by layer
    handle.remove()
    seen.clear()
    model(x)
    assert seen == []


def test_what_is_not_fused():
    conv, relu, pool = nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2)
    assert nn.fusion.fusable(conv, relu, pool)
    assert not nn.fusion.fusable(conv, nn.LeakyReLU(), pool)
    assert not nn.fusion.fusable(conv, relu, nn.MaxPool2d(3, padding=1))
    assert not nn.fusion.fusable(conv, relu, nn.AvgPool2d(2))

    class MyConv(nn.Conv2d):                       # a subclass may compute something else
        pass
    assert not nn.fusion.fusable(MyConv(1, 2, 3), relu, pool)
    with pytest.raises(TypeError, match="True or False"):
        nn.fusion.set_enabled("yes")


def test_inference_records_no_graph():
    model = models.get_model("reference").eval()
    with mc.no_grad():
        out = model(mc.tensor(np.zeros((2, 1, 28, 28), np.float32)))
    assert out._ctx is None and out.shape == (2, 10)
