"""The kernels that make every built-in network fast (the speed-for-every-network issue),
proven equal to what they replace.

* Depthwise convolution computed directly (``F.depthwise_conv2d``,
  ``nn.DepthwiseConv2d``, kernels ``depthwise_conv2d_forward`` / ``_backward``):
  the same numbers as ``conv2d(..., groups=C)`` through im2col, on every
  backend; a float64 gradcheck; the numba kernels against numpy_ref on drawn
  shapes and with the same bits on any number of threads.
* Batch norm's one-pass training kernels (``batch_norm_train_forward`` /
  ``_backward``, numba's fast path): equal to numpy_ref (the composition
  BatchNormFn runs without them), running statistics included.
* ``mc.fuse`` swaps a depthwise ``Conv2d`` — a Sequential's child or another
  module's attribute — for ``nn.DepthwiseConv2d``, and leaves every other
  grouped or hooked conv alone.
* The benchmark's PyTorch twins compute what the minicnn models compute.
"""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn
from minicnn.autograd.gradcheck import gradcheck
from minicnn.kernels import numba_cpu
from minicnn.kernels import numpy_ref as ref
from minicnn.models import MODELS, get_model

pytestmark = pytest.mark.tutorial09        # what tutorials/09_*.ipynb teaches (tests/README.md)


def tol(dtype, terms):
    eps = np.finfo(dtype).eps
    return dict(rtol=8 * terms * eps, atol=8 * terms * eps)


# -----------------------------------------------------------------------------
# Depthwise convolution
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("stride, padding, dilation, bias", [
    (1, 1, 1, False), (2, 1, 1, True), ((1, 2), (0, 2), (2, 1), True), (1, 0, 1, False)])
def test_depthwise_conv_equals_grouped_conv2d(backend, stride, padding, dilation, bias):
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((3, 4, 9, 8))
    w0 = rng.standard_normal((4, 1, 3, 3))
    b0 = rng.standard_normal(4) if bias else None
    results = []
    for fn in (lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups=4),
               lambda x, w, b: F.depthwise_conv2d(x, w, b, stride, padding, dilation)):
        x = mc.tensor(x0, dtype="float64", requires_grad=True)
        w = mc.tensor(w0, dtype="float64", requires_grad=True)
        b = None if b0 is None else mc.tensor(b0, dtype="float64", requires_grad=True)
        y = fn(x, w, b)
        y.backward(mc.tensor(np.cos(np.arange(y.numel())).reshape(y.shape), dtype="float64"))
        results.append([y.numpy(), x.grad.numpy(), w.grad.numpy()] + ([b.grad.numpy()] if bias else []))
    for want, got in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_depthwise_conv_gradcheck(cpu_backend):
    rng = np.random.default_rng(1)
    x = mc.tensor(rng.standard_normal((2, 3, 6, 5)), dtype="float64", requires_grad=True)
    w = mc.tensor(rng.standard_normal((3, 1, 3, 2)), dtype="float64", requires_grad=True)
    b = mc.tensor(rng.standard_normal(3), dtype="float64", requires_grad=True)
    assert gradcheck(lambda x, w, b: F.depthwise_conv2d(x, w, b, stride=(2, 1), padding=1), (x, w, b))


def test_depthwise_conv_bad_weight_is_a_clear_error():
    x = mc.tensor(np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"expected a weight of shape \(3, 1, kh, kw\).*got \(3, 2, 3, 3\)"):
        F.depthwise_conv2d(x, mc.tensor(np.zeros((3, 2, 3, 3), np.float32)))


@st.composite
def depthwise_cases(draw):
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    assume(dilation[0] * (kh - 1) + 1 <= h + 2 * padding[0])
    assume(dilation[1] * (kw - 1) + 1 <= w + 2 * padding[1])
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return (rng.standard_normal((n, c, h, w)).astype(dtype), rng.standard_normal((c, 1, kh, kw)).astype(dtype),
            stride, padding, dilation)


@settings(max_examples=40, deadline=None)
@given(case=depthwise_cases())
def test_numba_depthwise_kernels_match_the_reference(case):
    x, w, stride, padding, dilation = case
    y = numba_cpu.depthwise_conv2d_forward(x, w, stride, padding, dilation)
    y_ref = ref.depthwise_conv2d_forward(x, w, stride, padding, dilation)
    np.testing.assert_array_equal(y, y_ref)                  # the same products added in the same order
    gy = np.random.default_rng(0).standard_normal(y.shape).astype(x.dtype)
    dx, dw = numba_cpu.depthwise_conv2d_backward(gy, x, w, stride, padding, dilation)
    dx_ref, dw_ref = ref.depthwise_conv2d_backward(gy, x, w, stride, padding, dilation)
    np.testing.assert_allclose(dx, dx_ref, **tol(x.dtype, w.size))
    np.testing.assert_allclose(dw, dw_ref, **tol(x.dtype, gy[:, 0].size))


def _on_threads(threads, fn):
    import numba
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(threads)
        return fn()
    finally:
        numba.set_num_threads(before)


def test_numba_fast_kernels_give_the_same_bits_on_any_number_of_threads():
    import numba
    rng = np.random.default_rng(2)
    x = rng.standard_normal((9, 12, 10, 10)).astype(np.float32)
    w = rng.standard_normal((12, 1, 3, 3)).astype(np.float32)
    gamma, beta = rng.standard_normal(12).astype(np.float32), rng.standard_normal(12).astype(np.float32)

    def run():
        y = numba_cpu.depthwise_conv2d_forward(x, w, (2, 2), (1, 1), (1, 1))
        dx, dw = numba_cpu.depthwise_conv2d_backward(y, x, w, (2, 2), (1, 1), (1, 1))
        out = numba_cpu.batch_norm_train_forward(x, gamma, beta, 1e-5)
        grads = numba_cpu.batch_norm_train_backward(x, out[1], out[4], gamma)
        evaluated = numba_cpu.batch_norm_eval_forward(x, gamma, beta, out[2], out[3], 1e-5)
        relu, passes = numba_cpu.relu_forward(x)
        return [y, dx, dw, *out, *grads, *evaluated, relu, passes, numba_cpu.relu_backward(x, passes)]
    for one, many in zip(_on_threads(1, run), _on_threads(numba.config.NUMBA_NUM_THREADS, run)):
        np.testing.assert_array_equal(one, many)


# -----------------------------------------------------------------------------
# Batch norm's one-pass kernels
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(16, 5, 6, 7), (32, 6), (2, 3, 1, 1), (64, 8, 28, 28)])
@pytest.mark.parametrize("affine", [True, False])
def test_numba_batch_norm_kernels_match_the_reference(dtype, shape, affine):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)      # not centred: the mean matters
    C = shape[1]
    w = rng.standard_normal(C).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    m = x.size // C
    got = numba_cpu.batch_norm_train_forward(x, w, b, 1e-5)
    want = ref.batch_norm_train_forward(x, w, b, 1e-5)
    for g, r in zip(got, want):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(g, r, **tol(dtype, 16))
    xhat, inv_std = want[1], want[4]
    gy = rng.standard_normal(shape).astype(dtype)
    got = numba_cpu.batch_norm_train_backward(gy, xhat, inv_std, w, need_dx=True)
    want = ref.batch_norm_train_backward(gy, xhat, inv_std, w, need_dx=True)
    np.testing.assert_allclose(got[0], want[0], **tol(dtype, 16))
    for g, r in zip(got[1:], want[1:]):                          # sums of m terms
        np.testing.assert_allclose(g, r, **tol(dtype, m))
    without_dx = numba_cpu.batch_norm_train_backward(gy, xhat, inv_std, w, need_dx=False)
    assert without_dx[0] is None
    np.testing.assert_array_equal(without_dx[1], got[1])


def test_batch_norm_layer_on_numba_equals_numpy_running_statistics_included(cpu_backend):
    """nn.BatchNorm2d trained a few steps on the active backend, against the numpy backend."""
    def steps(backend):
        previous = mc.get_backend()
        mc.set_backend(backend)
        try:
            mc.manual_seed(0)
            bn = nn.BatchNorm2d(4)
            rng = np.random.default_rng(4)
            out = []
            for _ in range(3):
                x = mc.tensor(rng.standard_normal((5, 4, 3, 3)) * 2 + 1, dtype="float64", requires_grad=True)
                y = bn(x)
                (y * y).sum().backward()
                out += [y.numpy(), x.grad.numpy(), bn.weight.grad.numpy(), bn.bias.grad.numpy()]
                bn.weight.grad = bn.bias.grad = None
            return out + [bn.running_mean.numpy(), bn.running_var.numpy()]
        finally:
            mc.set_backend(previous)
    for got, want in zip(steps(cpu_backend), steps("numpy")):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


def test_batch_norm_gradcheck_on_every_cpu_backend(cpu_backend):
    rng = np.random.default_rng(5)
    x = mc.tensor(rng.standard_normal((4, 3, 2, 2)), dtype="float64", requires_grad=True)
    w = mc.tensor(rng.standard_normal(3), dtype="float64", requires_grad=True)
    b = mc.tensor(rng.standard_normal(3), dtype="float64", requires_grad=True)
    assert gradcheck(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), (x, w, b))


# -----------------------------------------------------------------------------
# Batch norm in evaluation mode, ReLU and padding: one parallel pass each on numba
# -----------------------------------------------------------------------------
def _awkward(rng, shape, dtype):
    """Normal draws with the values that catch a kernel out: NaN, +-inf, +-0."""
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    flat = x.reshape(-1)
    flat[:6] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30]
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(16, 5, 6, 7), (32, 6), (2, 3, 1, 1)])
@pytest.mark.parametrize("affine", [True, False])
def test_numba_batch_norm_eval_kernel_gives_the_reference_bits(dtype, shape, affine):
    rng = np.random.default_rng(6)
    x = _awkward(rng, shape, dtype)
    C = shape[1]
    w = rng.standard_normal(C).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    mean, var = rng.standard_normal(C).astype(dtype), rng.uniform(0.1, 3, C).astype(dtype)
    want = ref.batch_norm_eval_forward(x, w, b, mean, var, 1e-5)
    got = numba_cpu.batch_norm_eval_forward(x, w, b, mean, var, 1e-5, need_xhat=True)
    for g, r in zip(got, want):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_array_equal(g, r)          # the same operations in the same order
    y_only = numba_cpu.batch_norm_eval_forward(x, w, b, mean, var, 1e-5, need_xhat=False)
    assert y_only[1] is None
    np.testing.assert_array_equal(y_only[0], want[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3,), (64, 16, 28, 28), (5, 7)])
def test_numba_relu_kernels_give_the_reference_bits(dtype, shape):
    rng = np.random.default_rng(7)
    x = _awkward(rng, shape, dtype) if np.prod(shape) >= 6 else np.array([np.nan, -0.0, 2], dtype)
    y, passes = numba_cpu.relu_forward(x, need_mask=True)
    y_ref, passes_ref = ref.relu_forward(x)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(passes, passes_ref)
    assert y.dtype == x.dtype and passes.dtype == np.bool_
    assert numba_cpu.relu_forward(x, need_mask=False)[1] is None
    gy = _awkward(rng, x.shape, dtype) if x.size >= 6 else np.array([1, np.nan, np.inf], dtype)
    with np.errstate(invalid="ignore"):                          # inf * 0 where blocked: NaN
        np.testing.assert_array_equal(numba_cpu.relu_backward(gy, passes), ref.relu_backward(gy, passes))


def test_relu_and_eval_batch_norm_layers_on_numba_equal_numpy(cpu_backend):
    """Through the layers: ReLU's and eval-mode BatchNorm2d's outputs and gradients, with grad and
    without, on the active backend against the numpy backend."""
    def run(backend):
        previous = mc.get_backend()
        mc.set_backend(backend)
        try:
            mc.manual_seed(0)
            bn = nn.BatchNorm2d(3)
            bn.running_mean = mc.tensor([0.5, -1.0, 2.0], dtype="float64")
            bn.running_var = mc.tensor([2.0, 0.5, 1.5], dtype="float64")
            bn.weight.data = mc.tensor([1.5, -0.5, 2.0], dtype="float64")
            bn.eval()
            x = mc.tensor(np.random.default_rng(8).standard_normal((4, 3, 5, 5)), dtype="float64",
                          requires_grad=True)
            y = F.relu(bn(x))
            (y * y).sum().backward()
            with mc.no_grad():
                y_no_grad = F.relu(bn(x))
            return [y.numpy(), x.grad.numpy(), bn.weight.grad.numpy(), bn.bias.grad.numpy(),
                    y_no_grad.numpy()]
        finally:
            mc.set_backend(previous)
    for got, want in zip(run(cpu_backend), run("numpy")):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


def test_numba_pad_planes_equals_numpy_pad():
    from minicnn.kernels import geometry
    rng = np.random.default_rng(9)
    for dtype in (np.float32, np.float64):
        x = _awkward(rng, (3, 4, 5, 6), dtype)
        for padding, value in (((1, 1), 0.0), ((2, 0), -np.inf), ((0, 3), 0.0), ((0, 0), 0.0)):
            got = numba_cpu.pad_planes(x, padding, value)
            np.testing.assert_array_equal(got, geometry.pad_planes(x, padding, value))
            assert got.dtype == x.dtype


# -----------------------------------------------------------------------------
# mc.fuse: the depthwise swap
# -----------------------------------------------------------------------------
def test_fuse_swaps_depthwise_convs_wherever_they_sit(cpu_backend):
    mc.manual_seed(0)
    model = get_model("mobilenet")
    fast = mc.fuse(model)
    swapped = [m for m in fast.modules() if isinstance(m, nn.DepthwiseConv2d)]
    assert len(swapped) == 5                                  # one inside each DepthwiseSeparableConv2d
    assert not any(isinstance(m, nn.DepthwiseConv2d) for m in model.modules())   # the original unchanged
    assert list(fast.state_dict()) == list(model.state_dict())
    assert swapped[0].weight is model[3].depthwise.weight     # the same Parameter objects
    x = mc.tensor(np.random.default_rng(6).standard_normal((4, 1, 28, 28)).astype(np.float32))
    y = mc.tensor(np.array([0, 1, 2, 3]))
    grads = []
    for m in (model, fast):
        m.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        grads.append([loss.item()] + [p.grad.numpy().copy() for p in model.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_fuse_leaves_other_grouped_and_hooked_convs_alone():
    grouped = nn.Conv2d(4, 4, 3, groups=2)                    # two channels per group
    multiplier = nn.Conv2d(4, 8, 3, groups=4)                 # two filters per channel
    hooked = nn.Conv2d(4, 4, 3, groups=4)
    hooked.register_forward_hook(lambda m, i, o: None)
    for conv in (grouped, multiplier, hooked):
        model = nn.Sequential(conv, nn.ReLU())
        assert mc.fuse(model) is model
    plain = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4, bias=True))
    fast = mc.fuse(plain)
    assert isinstance(fast[0], nn.DepthwiseConv2d) and fast[0].bias is plain[0].bias
    assert "groups=4" in repr(fast[0])


# -----------------------------------------------------------------------------
# The benchmark compares the same networks
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["reference", "reference-bn", "lenet5", "tiny", "resnet-8", "resnet-20",
                                  "mobilenet"])
def test_benchmark_twins_compute_what_the_models_compute(name):
    pytest.importorskip("torch")
    import sys
    import pathlib
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_model
    assert name in MODELS and name in bench_model.BENCH_MODELS
    assert bench_model.check_twin(name) < 1e-4


# -----------------------------------------------------------------------------
# A plain convolution a chunk of images at a time
# -----------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(case=depthwise_cases(), cout=st.integers(1, 5), per_chunk=st.sampled_from([None, 1, 2]))
def test_numba_chunked_conv_kernels_match_the_reference(case, cout, per_chunk):
    x, _, stride, padding, dilation = case
    rng = np.random.default_rng(9)
    kh, kw = rng.integers(1, 4), rng.integers(1, 4)
    assume(dilation[0] * (kh - 1) + 1 <= x.shape[2] + 2 * padding[0])
    assume(dilation[1] * (kw - 1) + 1 <= x.shape[3] + 2 * padding[1])
    w = rng.standard_normal((cout, x.shape[1], kh, kw)).astype(x.dtype)
    b = rng.standard_normal(cout).astype(x.dtype)
    y = numba_cpu.conv2d_forward(x, w, b, stride, padding, dilation, per_chunk=per_chunk)
    y_ref = ref.conv2d_forward(x, w, b, stride, padding, dilation)
    np.testing.assert_allclose(y, y_ref, **tol(x.dtype, w[0].size))
    gy = rng.standard_normal(y.shape).astype(x.dtype)
    got = numba_cpu.conv2d_backward(gy, x, w, stride, padding, dilation, per_chunk=per_chunk)
    want = ref.conv2d_backward(gy, x, w, stride, padding, dilation)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, **tol(x.dtype, gy.size))
    assert numba_cpu.conv2d_backward(gy, x, w, stride, padding, dilation, need_dx=False)[0] is None


def test_chunked_conv_gives_the_same_bits_on_any_number_of_threads():
    import numba
    rng = np.random.default_rng(10)
    x = rng.standard_normal((37, 5, 9, 9)).astype(np.float32)
    w = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)

    def run():
        y = numba_cpu.conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1), per_chunk=4)
        return [y, *numba_cpu.conv2d_backward(y, x, w, (1, 1), (1, 1), (1, 1), per_chunk=4)]
    for one, many in zip(_on_threads(1, run), _on_threads(numba.config.NUMBA_NUM_THREADS, run)):
        np.testing.assert_array_equal(one, many)


@settings(max_examples=30, deadline=None)
@given(case=depthwise_cases(), cout=st.integers(1, 5), need_dx=st.booleans())
def test_numba_single_channel_conv_matches_the_reference(case, cout, need_dx):
    """A conv reading one channel at stride 1 (a first layer) is computed directly, without im2col."""
    x, _, _, padding, dilation = case
    x = np.ascontiguousarray(x[:, :1])
    rng = np.random.default_rng(12)
    kh, kw = rng.integers(1, 6), rng.integers(1, 6)
    assume(dilation[0] * (kh - 1) + 1 <= x.shape[2] + 2 * padding[0])
    assume(dilation[1] * (kw - 1) + 1 <= x.shape[3] + 2 * padding[1])
    w = rng.standard_normal((cout, 1, kh, kw)).astype(x.dtype)
    b = rng.standard_normal(cout).astype(x.dtype)
    y = numba_cpu.conv2d_forward(x, w, b, (1, 1), padding, dilation)
    np.testing.assert_allclose(y, ref.conv2d_forward(x, w, b, (1, 1), padding, dilation), **tol(x.dtype, w[0].size))
    gy = rng.standard_normal(y.shape).astype(x.dtype)
    got = numba_cpu.conv2d_backward(gy, x, w, (1, 1), padding, dilation, need_dx=need_dx)
    want = ref.conv2d_backward(gy, x, w, (1, 1), padding, dilation, need_dx=need_dx)
    assert (got[0] is None) == (not need_dx)
    for g, r in zip(got, want):
        if r is not None:
            assert g.flags.c_contiguous
            np.testing.assert_allclose(g, r, **tol(x.dtype, gy.size))


def test_single_channel_conv_gives_the_same_bits_on_any_number_of_threads():
    import numba
    rng = np.random.default_rng(13)
    x = rng.standard_normal((37, 1, 12, 11)).astype(np.float32)
    w = rng.standard_normal((6, 1, 5, 5)).astype(np.float32)

    def run():
        y = numba_cpu.conv2d_forward(x, w, None, (1, 1), (2, 2), (1, 1))
        return [y, *numba_cpu.conv2d_backward(y, x, w, (1, 1), (2, 2), (1, 1))]
    for one, many in zip(_on_threads(1, run), _on_threads(numba.config.NUMBA_NUM_THREADS, run)):
        np.testing.assert_array_equal(one, many)


@settings(max_examples=40, deadline=None)
@given(case=depthwise_cases(), cout=st.integers(1, 9), stride=st.sampled_from([(1, 1), (2, 2), (1, 3), (3, 2)]),
       need_dx=st.booleans(), bias=st.booleans())
def test_numba_pointwise_conv_matches_the_reference(case, cout, stride, need_dx, bias):
    """A 1x1 conv without padding is a matrix product per image (no im2col), at any stride."""
    x = case[0]
    rng = np.random.default_rng(14)
    w = rng.standard_normal((cout, x.shape[1], 1, 1)).astype(x.dtype)
    b = rng.standard_normal(cout).astype(x.dtype) if bias else None
    y = numba_cpu.conv2d_forward(x, w, b, stride, (0, 0), (1, 1))
    np.testing.assert_allclose(y, ref.conv2d_forward(x, w, b, stride, (0, 0), (1, 1)), **tol(x.dtype, x.shape[1]))
    gy = rng.standard_normal(y.shape).astype(x.dtype)
    got = numba_cpu.conv2d_backward(gy, x, w, stride, (0, 0), (1, 1), need_dx=need_dx)
    want = ref.conv2d_backward(gy, x, w, stride, (0, 0), (1, 1), need_dx=need_dx)
    assert (got[0] is None) == (not need_dx)
    for g, r in zip(got, want):
        if r is not None:
            assert g.shape == r.shape and g.dtype == r.dtype and g.flags.c_contiguous
            np.testing.assert_allclose(g, r, **tol(x.dtype, gy.size))


def test_pointwise_conv_gives_the_same_bits_on_any_number_of_threads():
    import numba
    rng = np.random.default_rng(15)
    x = rng.standard_normal((37, 12, 9, 7)).astype(np.float32)
    w = rng.standard_normal((20, 12, 1, 1)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)

    def run():
        out = []
        for stride in ((1, 1), (2, 2)):
            y = numba_cpu.conv2d_forward(x, w, b, stride, (0, 0), (1, 1))
            out += [y, *numba_cpu.conv2d_backward(y, x, w, stride, (0, 0), (1, 1))]
        return out
    for one, many in zip(_on_threads(1, run), _on_threads(numba.config.NUMBA_NUM_THREADS, run)):
        np.testing.assert_array_equal(one, many)


def test_pointwise_chunked_conv_passes_gradcheck(cpu_backend):
    rng = np.random.default_rng(16)
    x, w, b = (mc.tensor(a, dtype="float64", requires_grad=True)
               for a in (rng.standard_normal((3, 4, 5, 6)), rng.standard_normal((5, 4, 1, 1)), rng.standard_normal(5)))
    for stride in (1, 2):
        assert gradcheck(lambda x, w, b: F.chunked_conv2d(x, w, b, stride, 0), (x, w, b))


def test_chunked_conv_equals_conv2d_and_passes_gradcheck(cpu_backend):
    rng = np.random.default_rng(11)
    x0, w0, b0 = rng.standard_normal((3, 2, 7, 6)), rng.standard_normal((4, 2, 3, 2)), rng.standard_normal(4)
    results = []
    for fn in (F.conv2d, F.chunked_conv2d):
        x, w, b = (mc.tensor(a, dtype="float64", requires_grad=True) for a in (x0, w0, b0))
        y = fn(x, w, b, (2, 1), 1, (1, 2))
        y.backward(mc.tensor(np.sin(np.arange(y.numel())).reshape(y.shape), dtype="float64"))
        results.append([y.numpy(), x.grad.numpy(), w.grad.numpy(), b.grad.numpy()])
    for want, got in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    x, w, b = (mc.tensor(a, dtype="float64", requires_grad=True) for a in (x0, w0, b0))
    assert gradcheck(lambda x, w, b: F.chunked_conv2d(x, w, b, 2, 1), (x, w, b))


def test_fuse_swaps_plain_convs_for_chunked_ones(cpu_backend):
    mc.manual_seed(0)
    model = get_model("resnet-8")
    fast = mc.fuse(model)
    assert sum(isinstance(m, nn.ChunkedConv2d) for m in fast.modules()) == \
        sum(isinstance(m, nn.Conv2d) for m in model.modules())           # every conv of the ResNet
    assert list(fast.state_dict()) == list(model.state_dict())
    x = mc.tensor(np.random.default_rng(12).standard_normal((3, 1, 28, 28)).astype(np.float32))
    y = mc.tensor(np.array([0, 1, 2]))
    grads = []
    for m in (model, fast):
        m.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        grads.append([loss.item()] + [p.grad.numpy().copy() for p in model.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_swapped_convs_are_still_conv2ds_and_quant_layers_are_left_whole():
    """A module that reads its conv's settings (isinstance(m, nn.Conv2d)) still finds them after
    mc.fuse, and quantization-aware training's QuantLayer (``fuse_children = False``) is not copied:
    flags a callback sets on it (bn_frozen) reach the model that trains."""
    from minicnn import quant
    mc.manual_seed(0)
    fast = mc.fuse(get_model("reference-bn"))
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is not nn.Conv2d for m in convs)
    assert all(m.groups == 1 and m.kernel_size == (3, 3) for m in convs)
    qat = quant.prepare_qat(get_model("reference-bn"))
    fused = mc.fuse(qat)
    for original, kept in zip(qat.quant_layers(), fused.quant_layers()):
        assert kept is original and type(kept.layer) in (nn.Conv2d, nn.Linear)


# -----------------------------------------------------------------------------
# The kernels' matrix products (kernels/numba_blas.py)
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_kernel_gemm_equals_numpy_on_both_paths(dtype, trans_a, trans_b):
    """numba_blas.gemm: NumPy's OpenBLAS called directly (when this NumPy has one) and the
    np.dot fallback give op(a) @ op(b)."""
    from minicnn.kernels import numba_blas
    rng = np.random.default_rng(14)
    a = rng.standard_normal((9, 7) if trans_a else (7, 9)).astype(dtype)
    b = rng.standard_normal((11, 9) if trans_b else (9, 11)).astype(dtype)
    want = (a.T if trans_a else a) @ (b.T if trans_b else b)
    for fast in {False, numba_blas.FAST}:
        out = np.full((7, 11), np.nan, dtype)
        numba_blas.gemm(trans_a, trans_b, a, b, out, fast)
        np.testing.assert_allclose(out, want, **tol(dtype, 9))


def test_kernels_give_numpy_its_blas_threads_back():
    """While a kernel runs, NumPy's OpenBLAS is set to one thread (each of Numba's threads calls
    it); afterwards NumPy's own products have their threads again."""
    from threadpoolctl import threadpool_info
    from minicnn.kernels import numba_blas

    def counts():
        # NumPy's own BLAS (SciPy's private copy is set to one thread for good, by design)
        return sorted((i["filepath"], i["num_threads"]) for i in threadpool_info()
                      if i["user_api"] == "blas" and "scipy.libs" not in i["filepath"])
    before = counts()
    x = np.random.default_rng(15).standard_normal((8, 4, 9, 9)).astype(np.float32)
    w = np.ones((6, 4, 3, 3), np.float32)
    y = numba_cpu.conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1))
    numba_cpu.conv2d_backward(y, x, w, (1, 1), (1, 1), (1, 1))
    assert counts() == before
    if numba_blas.FAST:                            # the switch itself, both ways
        previous = numba_blas.one_thread()
        assert numba_blas.blas_threads() == 1
        numba_blas.restore_threads(previous)
        assert counts() == before
