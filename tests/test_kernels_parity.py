"""Every kernel module agrees with the specification, ``kernels/numpy_ref.py``.

Hypothesis draws the shapes: batch 1 to 3, odd and even sizes, kernels from
1x1 to 4x4, strides, paddings and dilations, in float32 and float64. Copies
(im2col, max pooling's choice of winner) must match exactly; sums may differ
in the last bits because they add in another order, so they are compared
with a tolerance of a few units in the last place of the dtype.

Max pooling is also fed integer-valued inputs, so that windows have ties and
the "first maximum wins" rule is really exercised.

A new backend is tested by adding its name to ``BACKENDS``; one that cannot
load here (cupy without a GPU) is skipped with the reason.
"""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn
from minicnn.backend import BackendError, load_backend, to_host
from minicnn.kernels import numpy_ref as ref

pytestmark = pytest.mark.tutorial09        # what tutorials/09_*.ipynb teaches (tests/README.md)

BACKENDS = ["numba", "simulator", "cupy"]
DTYPES = [np.float32, np.float64]
SETTINGS = settings(max_examples=40, deadline=None)


@pytest.fixture(params=BACKENDS, scope="module")
def backend(request):
    """(name, xp, kernel module) of the backend under test; the global backend is untouched."""
    try:
        xp, kernels = load_backend(request.param)
    except BackendError as e:
        if request.param != "cupy":      # numba and the simulator must always load
            raise
        pytest.skip(f"{request.param} backend unavailable here: {e}")
    return request.param, xp, kernels


def call(backend, name, *args):
    """Run kernel ``name`` of the backend on device copies of the array arguments;
    return the results as host NumPy arrays."""
    _, xp, kernels = backend
    args = [xp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    out = getattr(kernels, name)(*args)
    if isinstance(out, tuple):
        return tuple(to_host(o) for o in out)
    return to_host(out)


def tolerance(dtype, terms=10):
    """rtol/atol for a sum of ``terms`` numbers of order 1 added in another order."""
    eps = np.finfo(dtype).eps
    return dict(rtol=4 * terms * eps, atol=4 * terms * eps)


# -----------------------------------------------------------------------------
# Strategies
# -----------------------------------------------------------------------------
@st.composite
def conv_cases(draw):
    """x, kernel size, stride, padding, dilation with a window that fits."""
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    assume(dilation[0] * (kh - 1) + 1 <= h + 2 * padding[0])
    assume(dilation[1] * (kw - 1) + 1 <= w + 2 * padding[1])
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    x = np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(dtype)
    return x, kh, kw, stride, padding, dilation


@st.composite
def pool_cases(draw, integer_valued=False):
    """x, kernel size, stride, padding for pooling (padding at most half the kernel)."""
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    assume(kh <= h + 2 * padding[0] and kw <= w + 2 * padding[1])
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if integer_valued:            # few distinct values: most windows have ties
        x = rng.integers(-2, 3, (n, c, h, w)).astype(dtype)
    else:
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
    return x, kh, kw, stride, padding


# -----------------------------------------------------------------------------
# im2col / col2im
# -----------------------------------------------------------------------------
def test_module_interface(backend):
    """Every required kernel of kernels/contract.py, with the declared parameters."""
    from minicnn.kernels import contract
    _, _, kernels = backend
    assert contract.missing_kernels(kernels) == ([], [])
    assert kernels.NAME == backend[0]


@SETTINGS
@given(case=conv_cases())
@pytest.mark.tutorial02
def test_im2col_matches_reference(backend, case):
    x, kh, kw, stride, padding, dilation = case
    want = ref.im2col(x, kh, kw, stride, padding, dilation)
    got = call(backend, "im2col", x, kh, kw, stride, padding, dilation)
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(got, want)        # a pure copy: exactly equal


@SETTINGS
@given(case=conv_cases())
@pytest.mark.tutorial02
def test_col2im_matches_reference(backend, case):
    x, kh, kw, stride, padding, dilation = case
    shape = ref.im2col(x, kh, kw, stride, padding, dilation).shape
    cols = np.random.default_rng(1).standard_normal(shape).astype(x.dtype)
    want = ref.col2im(cols, x.shape, kh, kw, stride, padding, dilation)
    got = call(backend, "col2im", cols, x.shape, kh, kw, stride, padding, dilation)
    assert got.shape == x.shape and got.dtype == x.dtype
    np.testing.assert_allclose(got, want, **tolerance(x.dtype, kh * kw))


@SETTINGS
@given(case=conv_cases())
@pytest.mark.tutorial02
def test_col2im_is_the_adjoint_of_im2col(backend, case):
    """<im2col(x), c> == <x, col2im(c)>: col2im is exactly im2col's gradient."""
    x, kh, kw, stride, padding, dilation = case
    x = x.astype(np.float64)
    cols = call(backend, "im2col", x, kh, kw, stride, padding, dilation)
    c = np.random.default_rng(2).standard_normal(cols.shape)
    back = call(backend, "col2im", c, x.shape, kh, kw, stride, padding, dilation)
    np.testing.assert_allclose(np.sum(cols * c), np.sum(x * back), rtol=1e-10, atol=1e-10)


def test_non_contiguous_inputs(backend):
    """Views (transposed, strided) give the same answers as contiguous copies."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4, 9, 3)).astype(np.float32).transpose(3, 1, 0, 2)[:, :, ::2]
    assert not x.flags.c_contiguous
    np.testing.assert_array_equal(call(backend, "im2col", x, 2, 2, (1, 1), (1, 0), (1, 1)),
                                  ref.im2col(x, 2, 2, (1, 1), (1, 0), (1, 1)))
    y, arg = call(backend, "max_pool2d_forward", x, 2, 2, (1, 1), (1, 1))
    y_ref, arg_ref = ref.max_pool2d_forward(x, 2, 2, (1, 1), (1, 1))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(arg.astype(np.int64), arg_ref.astype(np.int64))
    gy = rng.standard_normal(y.shape).astype(np.float32)[..., ::-1]      # a reversed view
    np.testing.assert_allclose(call(backend, "avg_pool2d_backward", gy, x.shape, 2, 2, (1, 1), (1, 1)),
                               ref.avg_pool2d_backward(gy, x.shape, 2, 2, (1, 1), (1, 1)),
                               **tolerance(np.float32))


# -----------------------------------------------------------------------------
# Pooling
# -----------------------------------------------------------------------------
def _check_max_pool(backend, x, kh, kw, stride, padding):
    y_ref, arg_ref = ref.max_pool2d_forward(x, kh, kw, stride, padding)
    y, arg = call(backend, "max_pool2d_forward", x, kh, kw, stride, padding)
    assert y.dtype == x.dtype and np.issubdtype(arg.dtype, np.integer)
    np.testing.assert_array_equal(y, y_ref)
    # the winning tap i*kw + j, first one on ties; its dtype may differ
    np.testing.assert_array_equal(arg.astype(np.int64), arg_ref.astype(np.int64))
    gy = np.random.default_rng(4).standard_normal(y.shape).astype(x.dtype)
    dx_ref = ref.max_pool2d_backward(gy, arg_ref, x.shape, kh, kw, stride, padding)
    dx = call(backend, "max_pool2d_backward", gy, arg, x.shape, kh, kw, stride, padding)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    np.testing.assert_allclose(dx, dx_ref, **tolerance(x.dtype, kh * kw))


@SETTINGS
@given(case=pool_cases())
@pytest.mark.tutorial03
def test_max_pool_matches_reference(backend, case):
    _check_max_pool(backend, *case)


@SETTINGS
@given(case=pool_cases(integer_valued=True))
@pytest.mark.tutorial03
def test_max_pool_ties_pick_the_first_maximum(backend, case):
    _check_max_pool(backend, *case)


@pytest.mark.tutorial03
def test_max_pool_tie_example(backend):
    """A hand-checked window: all four taps equal -> tap 0 wins and gets the gradient."""
    x = np.ones((1, 1, 2, 2), dtype=np.float32)
    y, arg = call(backend, "max_pool2d_forward", x, 2, 2, (2, 2), (0, 0))
    assert y.item() == 1 and int(arg.item()) == 0
    dx = call(backend, "max_pool2d_backward", np.full((1, 1, 1, 1), 5, np.float32), arg,
              x.shape, 2, 2, (2, 2), (0, 0))
    np.testing.assert_array_equal(dx[0, 0], [[5, 0], [0, 0]])


def test_max_pool_wide_window(backend):
    """kh*kw > 127 taps: the winner no longer fits in int8; the numbers must not change."""
    x = np.random.default_rng(9).standard_normal((2, 2, 14, 13)).astype(np.float32)
    _check_max_pool(backend, x, 12, 11, (1, 2), (0, 0))


@SETTINGS
@given(case=pool_cases(), count_include_pad=st.booleans())
@pytest.mark.tutorial03
def test_avg_pool_matches_reference(backend, case, count_include_pad):
    x, kh, kw, stride, padding = case
    y_ref = ref.avg_pool2d_forward(x, kh, kw, stride, padding, count_include_pad)
    y = call(backend, "avg_pool2d_forward", x, kh, kw, stride, padding, count_include_pad)
    assert y.dtype == x.dtype
    np.testing.assert_allclose(y, y_ref, **tolerance(x.dtype, kh * kw))
    gy = np.random.default_rng(5).standard_normal(y.shape).astype(x.dtype)
    dx_ref = ref.avg_pool2d_backward(gy, x.shape, kh, kw, stride, padding, count_include_pad)
    dx = call(backend, "avg_pool2d_backward", gy, x.shape, kh, kw, stride, padding, count_include_pad)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    np.testing.assert_allclose(dx, dx_ref, **tolerance(x.dtype, kh * kw))


# -----------------------------------------------------------------------------
# scatter_add
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_scatter_add_matches_reference(backend, dtype):
    """dst[index] += values, where repeated indices add up (the backward of x[index])."""
    _, xp, kernels = backend
    rng = np.random.default_rng(8)
    dst = rng.standard_normal((5, 3)).astype(dtype)
    for index in ([0, 2, 0, 0, 4], (np.array([1, 1, 3]), np.array([2, 2, 0])), dst > 0.5):
        values = rng.standard_normal(dst[index].shape).astype(dtype)
        want = dst.copy()
        ref.scatter_add(want, index, values)
        got = xp.asarray(dst)
        device_index = tuple(xp.asarray(i) for i in index) if isinstance(index, tuple) else xp.asarray(index)
        assert kernels.scatter_add(got, device_index, xp.asarray(values)) is None
        np.testing.assert_allclose(to_host(got), want, **tolerance(dtype))


# -----------------------------------------------------------------------------
# erf
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_erf_matches_reference(backend, dtype):
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.standard_normal(504) * 3, [0.0, -0.0, 1e-30, 6.0, -6.0, 30.0, np.inf, -np.inf]])
    x = x.astype(dtype).reshape(4, -1, 2)          # any shape, not only 1-D
    got = call(backend, "erf", x)
    assert got.dtype == dtype and got.shape == x.shape
    np.testing.assert_allclose(got, ref.erf(x), rtol=4 * np.finfo(dtype).eps,
                               atol=4 * np.finfo(dtype).eps)


# -----------------------------------------------------------------------------
# Whole network: the same seed gives the same loss curve on every backend
# -----------------------------------------------------------------------------
def _loss_curve(backend_name, steps=4):
    previous = mc.get_backend()
    try:
        mc.set_backend(backend_name)
        mc.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, stride=2), nn.ReLU(), nn.AvgPool2d(2, stride=1),
            nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
        rng = np.random.default_rng(7)
        x = mc.tensor(rng.standard_normal((6, 1, 10, 10)).astype(np.float32))
        y = mc.tensor(rng.integers(0, 3, 6))
        params = list(model.parameters())
        losses = []
        for _ in range(steps):
            for p in params:
                p.grad = None
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            with mc.no_grad():
                for p in params:
                    p.data -= 0.1 * p.grad.data
            losses.append(loss.item())
        return losses
    finally:
        mc.set_backend(previous)


def test_same_seed_same_loss_curve(backend):
    """A few SGD steps of a small CNN with dropout: same seed, same losses (float32)."""
    name = backend[0]
    want, got = _loss_curve("numpy"), _loss_curve(name)
    assert want[0] != want[-1]                      # it really trained
    rtol = 1e-4 if name == "cupy" else 1e-5         # cuBLAS sums in yet another order
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-6)
