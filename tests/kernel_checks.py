"""Fixed cases on which a kernel module must agree with kernels/numpy_ref.py.

Helpers, not tests (tests/test_cupy_kernels.py runs them on the CUDA kernels,
on the CPU and on the device backends). Each ``check_*`` takes a kernel module
and two movers — host -> the module's memory, and back — and compares every
output with numpy_ref's. The cases complement the hypothesis-drawn shapes of
tests/test_kernels_parity.py with the corners a random draw rarely reaches: a
132-tap window (int32 argmax), both padding rules of average pooling, windows
that relu clips in the fused pooling (argmax -1), each kind of index for
scatter_add, erf far into its tails.
"""
import numpy as np

from minicnn.kernels import numpy_ref

FLOATS = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-6, atol=1e-6), np.float64: dict(rtol=1e-13, atol=1e-13)}

# (x_shape, kh, kw, stride, padding, dilation): square and not, strided, padded, dilated
UNFOLD_CASES = [
    ((2, 3, 7, 6), 3, 2, (1, 1), (0, 0), (1, 1)),
    ((2, 3, 7, 6), 3, 3, (2, 1), (1, 2), (1, 1)),
    ((1, 2, 9, 8), 2, 3, (3, 2), (2, 1), (2, 3)),
    ((3, 1, 5, 5), 1, 1, (1, 1), (0, 0), (1, 1)),
    ((2, 4, 6, 5), 3, 2, (2, 2), (2, 0), (2, 1)),
]
# (x_shape, kh, kw, stride, padding): non-overlapping, overlapping, padded, a 132-tap window (int32 argmax)
POOL_CASES = [
    ((2, 3, 7, 6), 2, 2, (2, 2), (0, 0)),
    ((2, 3, 7, 6), 3, 3, (2, 2), (1, 1)),
    ((2, 3, 7, 6), 3, 3, (1, 1), (1, 1)),
    ((1, 2, 8, 7), 2, 3, (2, 1), (1, 1)),
    ((2, 2, 6, 6), 3, 2, (2, 2), (1, 0)),
    ((1, 1, 13, 12), 12, 11, (1, 1), (0, 0)),
]

# (y_shape in (C, N, H, W), kh, kw, stride) for the fused bias + relu + max pooling (no padding):
# the course's 2x2/2, odd sizes (a last row and column no window covers), overlapping 3x3/2,
# non-square 2x1 windows, strides unlike the window, a 132-tap window (int32 argmax)
FUSED_POOL_CASES = [
    ((3, 2, 8, 8), 2, 2, (2, 2)),
    ((3, 2, 11, 11), 2, 2, (2, 2)),
    ((2, 3, 11, 9), 3, 3, (2, 2)),
    ((2, 2, 7, 6), 2, 1, (2, 1)),
    ((2, 2, 9, 10), 3, 2, (1, 3)),
    ((1, 1, 13, 12), 12, 11, (1, 1)),
]


def ids(cases):
    """Readable pytest ids for a list of cases."""
    return [str(c[0]) + "-" + "-".join(str(v) for v in c[1:]) for c in cases]


def check_unfold(kernels, dev, host, dtype, case):
    x_shape, kh, kw, stride, padding, dilation = case
    rs = np.random.default_rng(0)
    x = rs.standard_normal(x_shape).astype(dtype)
    cols_ref = numpy_ref.im2col(x, kh, kw, stride, padding, dilation)
    cols = kernels.im2col(dev(x), kh, kw, stride, padding, dilation)
    assert cols.dtype == dtype and cols.shape == cols_ref.shape
    np.testing.assert_array_equal(host(cols), cols_ref)           # a copy: exactly equal

    g = rs.standard_normal(cols_ref.shape).astype(dtype)
    dx_ref = numpy_ref.col2im(g, x_shape, kh, kw, stride, padding, dilation)
    dx = kernels.col2im(dev(g), x_shape, kh, kw, stride, padding, dilation)
    assert dx.dtype == dtype and dx.shape == x_shape
    np.testing.assert_allclose(host(dx), dx_ref, **TOL[dtype])


def plant_nans(x, rs):
    """NaNs in place, PyTorch's rule to follow (tests/test_nan_propagation.py): about one
    pixel in 20, and two whole windows' worth in the first plane, so that windows hold one
    NaN, several (the last wins the index) or only NaNs; a corner of -inf in the last plane
    (a window with nothing else routes to its first real pixel)."""
    x[rs.random(x.shape) < 0.05] = np.nan
    x[0, 0, :3, :3] = np.nan
    x[-1, -1, :2, :2] = -np.inf
    return x


def check_max_pool(kernels, dev, host, dtype, case, ties=False, nans=False):
    x_shape, kh, kw, stride, padding = case
    rs = np.random.default_rng(1)
    x = (rs.integers(0, 3, x_shape) if ties else rs.standard_normal(x_shape)).astype(dtype)
    if nans:
        plant_nans(x, rs)
    y_ref, arg_ref = numpy_ref.max_pool2d_forward(x, kh, kw, stride, padding)
    y, arg = kernels.max_pool2d_forward(dev(x), kh, kw, stride, padding)
    assert y.dtype == dtype and arg.dtype == arg_ref.dtype
    np.testing.assert_array_equal(host(y), y_ref)
    np.testing.assert_array_equal(host(arg), arg_ref)             # the first maximum wins ties
    assert not nans or np.isnan(y_ref).any()                      # NaN windows pool to NaN

    gy = rs.standard_normal(y_ref.shape).astype(dtype)
    dx_ref = numpy_ref.max_pool2d_backward(gy, arg_ref, x_shape, kh, kw, stride, padding)
    dx = kernels.max_pool2d_backward(dev(gy), arg, x_shape, kh, kw, stride, padding)
    assert dx.dtype == dtype and dx.shape == x_shape
    np.testing.assert_allclose(host(dx), dx_ref, **TOL[dtype])


def check_bias_relu_max_pool(kernels, dev, host, dtype, case, ties=False, bias=True, nans=False):
    """The fused kernels: out and argmax exactly (a comparison picks a value, it computes
    nothing), dy to TOL. ``ties``: small integers, so windows tie and many maxima are
    exactly 0 or below (clipped: argmax -1). ``nans``: see :func:`plant_nans` (a NaN
    window outputs NaN, its argmax the NaN's tap, never -1)."""
    y_shape, kh, kw, stride = case
    C = y_shape[0]
    rs = np.random.default_rng(4)
    if ties:
        y, b = rs.integers(-2, 3, y_shape), rs.integers(-1, 2, C)
    else:                                       # shifted down, so some windows are clipped
        y, b = rs.standard_normal(y_shape) - 0.5, rs.standard_normal(C)
    y, b = y.astype(dtype), (b.astype(dtype) if bias else None)
    if nans:
        plant_nans(y, rs)
    out_ref, arg_ref = numpy_ref.bias_relu_max_pool2d_forward(y, b, kh, kw, stride)
    assert not nans or np.isnan(out_ref).any()
    out, arg = kernels.bias_relu_max_pool2d_forward(dev(y), None if b is None else dev(b),
                                                    kh, kw, stride)
    assert out.dtype == dtype and arg.dtype == arg_ref.dtype
    assert out.shape == out_ref.shape and arg.shape == arg_ref.shape
    np.testing.assert_array_equal(host(out), out_ref)
    np.testing.assert_array_equal(host(arg), arg_ref)             # first maximum, -1 where clipped

    gout = rs.standard_normal(out_ref.shape).astype(dtype)
    dy_ref = numpy_ref.bias_relu_max_pool2d_backward(gout, arg_ref, y_shape, kh, kw, stride)
    dy = kernels.bias_relu_max_pool2d_backward(dev(gout), arg, y_shape, kh, kw, stride)
    assert dy.dtype == dtype and dy.shape == y_shape
    np.testing.assert_allclose(host(dy), dy_ref, **TOL[dtype])


def check_avg_pool(kernels, dev, host, dtype, case, count_include_pad):
    x_shape, kh, kw, stride, padding = case
    rs = np.random.default_rng(2)
    x = rs.standard_normal(x_shape).astype(dtype)
    y_ref = numpy_ref.avg_pool2d_forward(x, kh, kw, stride, padding, count_include_pad)
    y = kernels.avg_pool2d_forward(dev(x), kh, kw, stride, padding, count_include_pad)
    assert y.dtype == dtype
    np.testing.assert_allclose(host(y), y_ref, **TOL[dtype])

    gy = rs.standard_normal(y_ref.shape).astype(dtype)
    dx_ref = numpy_ref.avg_pool2d_backward(gy, x_shape, kh, kw, stride, padding, count_include_pad)
    dx = kernels.avg_pool2d_backward(dev(gy), x_shape, kh, kw, stride, padding, count_include_pad)
    assert dx.dtype == dtype and dx.shape == x_shape
    np.testing.assert_allclose(host(dx), dx_ref, **TOL[dtype])


SCATTER_INDICES = {
    "repeated rows": lambda: [0, 0, 2, 4, 0],
    "pairs with repeats": lambda: ([0, 1, 1, 4], [2, 3, 3, 0]),
    "int array": lambda: np.array([3, 1, 3]),
    "slice": lambda: (slice(1, 4), slice(None, None, 2)),
    "bool mask": lambda: np.arange(20).reshape(5, 4) % 3 == 0,
}


def check_scatter_add(kernels, dev, host, dtype, make_index):
    rs = np.random.default_rng(3)
    start = rs.standard_normal((5, 4)).astype(dtype)
    index = make_index()
    values = rs.standard_normal(start[index].shape).astype(dtype)
    expected = start.copy()
    numpy_ref.scatter_add(expected, index, values)
    dst = dev(start)
    assert kernels.scatter_add(dst, index, dev(values)) is None   # in place
    np.testing.assert_allclose(host(dst), expected, **TOL[dtype])


def check_erf(kernels, dev, host, dtype):
    x = np.concatenate([np.linspace(-6, 6, 101), [0.0, -0.0, 1e-8, 30.0, -30.0]]).astype(dtype)
    y = kernels.erf(dev(x.reshape(2, 53)))
    assert y.dtype == dtype and y.shape == (2, 53)
    np.testing.assert_allclose(host(y).ravel(), numpy_ref.erf(x), rtol=4 * np.finfo(dtype).eps, atol=0)


# (x_shape, kh, kw, stride, padding, dilation) for the depthwise convolution (w: (C, 1, kh, kw)):
# MobileNet's 3x3 pad 1 at stride 1 and 2, non-square windows, dilation, a 1x1 "depthwise" scale
DEPTHWISE_CASES = [
    ((2, 3, 7, 6), 3, 3, (1, 1), (1, 1), (1, 1)),
    ((2, 4, 9, 8), 3, 3, (2, 2), (1, 1), (1, 1)),
    ((1, 2, 9, 8), 2, 3, (3, 2), (2, 1), (2, 3)),
    ((3, 2, 5, 5), 1, 1, (1, 1), (0, 0), (1, 1)),
]


def check_depthwise(kernels, dev, host, dtype, case):
    x_shape, kh, kw, stride, padding, dilation = case
    rs = np.random.default_rng(8)
    x = rs.standard_normal(x_shape).astype(dtype)
    w = rs.standard_normal((x_shape[1], 1, kh, kw)).astype(dtype)
    y_ref = numpy_ref.depthwise_conv2d_forward(x, w, stride, padding, dilation)
    y = kernels.depthwise_conv2d_forward(dev(x), dev(w), stride, padding, dilation)
    assert y.dtype == dtype and y.shape == y_ref.shape
    np.testing.assert_allclose(host(y), y_ref, **TOL[dtype])
    gy = rs.standard_normal(y_ref.shape).astype(dtype)
    dx_ref, dw_ref = numpy_ref.depthwise_conv2d_backward(gy, x, w, stride, padding, dilation)
    dx, dw = kernels.depthwise_conv2d_backward(dev(gy), dev(x), dev(w), stride, padding, dilation)
    assert dx.shape == x_shape and dw.shape == w.shape
    np.testing.assert_allclose(host(dx), dx_ref, **TOL[dtype])
    np.testing.assert_allclose(host(dw), dw_ref, rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * 10)
    none, dw2 = kernels.depthwise_conv2d_backward(dev(gy), dev(x), dev(w), stride, padding, dilation,
                                                  need_dx=False)
    assert none is None
    np.testing.assert_allclose(host(dw2), host(dw))


# Batch norm and ReLU, the optional one-pass kernels: shapes (N, C, H, W) and (N, C), channels
# centred away from 0 (the mean matters), and the values that catch an elementwise kernel out
NORM_SHAPES = [(4, 3, 5, 6), (7, 5), (2, 3, 1, 1)]


def awkward(rs, shape, dtype):
    """Normal draws with NaN, +-inf, +-0 and a tiny value planted first (when there is room)."""
    x = (rs.standard_normal(shape) * 3 + 1).astype(dtype)
    flat = x.reshape(-1)
    special = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30][:flat.size]
    flat[:len(special)] = special
    return x


def check_batch_norm(kernels, dev, host, dtype, shape, affine):
    rs = np.random.default_rng(12)
    C = shape[1]
    x = (rs.standard_normal(shape) * 3 + 2).astype(dtype)
    w = rs.standard_normal(C).astype(dtype) if affine else None
    b = rs.standard_normal(C).astype(dtype) if affine else None
    on = (lambda a: None if a is None else dev(a))
    m = x.size // C
    tol = dict(rtol=TOL[dtype]["rtol"] * 16, atol=TOL[dtype]["atol"] * 16)
    sums = dict(rtol=TOL[dtype]["rtol"] * m, atol=TOL[dtype]["atol"] * m)
    want = numpy_ref.batch_norm_train_forward(x, w, b, 1e-5)
    got = kernels.batch_norm_train_forward(dev(x), on(w), on(b), 1e-5)
    for g, r in zip(got, want):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(host(g), r, **tol)
    xhat, inv_std = want[1], want[4]
    gy = rs.standard_normal(shape).astype(dtype)
    for need_dx in (True, False):
        want = numpy_ref.batch_norm_train_backward(gy, xhat, inv_std, w, need_dx=need_dx)
        got = kernels.batch_norm_train_backward(dev(gy), dev(xhat), dev(inv_std), on(w), need_dx=need_dx)
        if need_dx:
            np.testing.assert_allclose(host(got[0]), want[0], **tol)
        else:
            assert got[0] is None
        for g, r in zip(got[1:], want[1:]):
            np.testing.assert_allclose(host(g), r, **sums)
    mean, var = rs.standard_normal(C).astype(dtype), rs.uniform(0.1, 3, C).astype(dtype)
    x = awkward(rs, shape, dtype)
    for need_xhat in (True, False):
        want = numpy_ref.batch_norm_eval_forward(x, w, b, mean, var, 1e-5, need_xhat)
        got = kernels.batch_norm_eval_forward(dev(x), on(w), on(b), dev(mean), dev(var), 1e-5,
                                              need_xhat=need_xhat)
        np.testing.assert_allclose(host(got[0]), want[0], **tol)      # NaN and inf where the reference has them
        assert (got[1] is None) == (not need_xhat)
        if need_xhat:
            np.testing.assert_allclose(host(got[1]), want[1], **tol)
        np.testing.assert_allclose(host(got[2]), want[2], **tol)


def check_relu(kernels, dev, host, dtype, shape):
    rs = np.random.default_rng(13)
    x = awkward(rs, shape, dtype)
    y, passes = kernels.relu_forward(dev(x), need_mask=True)
    y_ref, passes_ref = numpy_ref.relu_forward(x)
    assert host(y).dtype == dtype and host(passes).dtype == np.bool_
    np.testing.assert_array_equal(host(y), y_ref)                  # max(x, 0) is exact: the same bits
    np.testing.assert_array_equal(host(passes), passes_ref)
    assert kernels.relu_forward(dev(x), need_mask=False)[1] is None
    gy = awkward(rs, shape, dtype)
    with np.errstate(invalid="ignore"):                            # inf * 0 where blocked: NaN
        want = numpy_ref.relu_backward(gy, passes_ref)
    np.testing.assert_array_equal(host(kernels.relu_backward(dev(gy), passes)), want)


# The plain convolution that keeps its input (numba's and CUDA's conv2d_forward / _backward):
# (x_shape, Cout, kh, kw, stride, padding, dilation), 1x1 and strided ones included
CONV_CASES = [
    ((2, 3, 7, 6), 4, 3, 3, (1, 1), (1, 1), (1, 1)),
    ((3, 2, 9, 8), 5, 3, 2, (2, 1), (1, 0), (1, 2)),
    ((2, 4, 6, 6), 3, 1, 1, (1, 1), (0, 0), (1, 1)),
    ((2, 4, 7, 5), 6, 1, 1, (2, 2), (0, 0), (1, 1)),
]


def check_conv(kernels, dev, host, dtype, case):
    x_shape, cout, kh, kw, stride, padding, dilation = case
    rs = np.random.default_rng(14)
    x = rs.standard_normal(x_shape).astype(dtype)
    w = rs.standard_normal((cout, x_shape[1], kh, kw)).astype(dtype)
    b = rs.standard_normal(cout).astype(dtype)
    for bias in (b, None):
        y_ref = numpy_ref.conv2d_forward(x, w, bias, stride, padding, dilation)
        y = kernels.conv2d_forward(dev(x), dev(w), None if bias is None else dev(bias), stride, padding, dilation)
        assert y.dtype == dtype and y.shape == y_ref.shape
        np.testing.assert_allclose(host(y), y_ref, rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * 10)
    gy = rs.standard_normal(y_ref.shape).astype(dtype)
    for need_dx in (True, False):
        want = numpy_ref.conv2d_backward(gy, x, w, stride, padding, dilation, need_dx=need_dx)
        got = kernels.conv2d_backward(dev(gy), dev(x), dev(w), stride, padding, dilation, need_dx=need_dx)
        assert (got[0] is None) == (not need_dx)
        for g, r in zip(got, want):
            if r is not None:
                assert g.shape == r.shape and g.dtype == r.dtype
                np.testing.assert_allclose(host(g), r, rtol=TOL[dtype]["rtol"] * 100, atol=TOL[dtype]["atol"] * 100)
