"""The reference kernels: readable NumPy, the specification for every backend.

Arrays in, arrays out — nothing here knows about tensors or gradients. Every
other kernel module (``numba_cpu``, ``cupy_gpu``, the test-only
``simulated_device``) implements these functions
with the same signatures and must return the same numbers; the tests hold them
to it. All sizes are plain ints; ``stride``, ``padding`` and ``dilation`` are
``(vertical, horizontal)`` pairs.

Output size of a sliding window (convolution or pooling), per axis::

    out = floor((in + 2*pad - dil*(k - 1) - 1) / stride) + 1

The im2col layout used throughout::

    cols[(c, i, j), (n, oy, ox)] = x_padded[n, c, oy*sh + i*dh, ox*sw + j*dw]
    cols.shape == (C*kh*kw, N*oh*ow)

one row per (input channel, kernel tap), one column per output pixel of the
whole batch — so a convolution is a single matrix product
``W.reshape(Cout, C*kh*kw) @ cols``.
"""
from __future__ import annotations

import numpy as np

from .geometry import conv_out_size, first_real_taps, pad_planes

NAME = "numpy"


def _taps(kh, kw, stride, dilation, oh, ow):
    """Yield ``(i, j, rows, cols)``: for kernel tap (i, j), the slices of the
    padded input that it touches for every output position at once."""
    (sh, sw), (dh, dw) = stride, dilation
    for i in range(kh):
        for j in range(kw):
            top, left = i * dh, j * dw
            yield i, j, slice(top, top + sh * (oh - 1) + 1, sh), slice(left, left + sw * (ow - 1) + 1, sw)


# -----------------------------------------------------------------------------
# im2col / col2im
# -----------------------------------------------------------------------------
def im2col(x, kh, kw, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """Unfold every receptive field of ``x`` (N, C, H, W) into a column.

    Returns ``cols`` of shape (C*kh*kw, N*oh*ow). Loop over the kh*kw kernel
    taps; for each tap copy, in one strided slice, the input value that tap
    sees at every output position of every image.
    """
    N, C, H, W = x.shape
    oh = conv_out_size(H, kh, stride[0], padding[0], dilation[0])
    ow = conv_out_size(W, kw, stride[1], padding[1], dilation[1])
    xp = pad_planes(x, padding)
    cols = np.empty((C, kh, kw, N, oh, ow), dtype=x.dtype)
    for i, j, rows, columns in _taps(kh, kw, stride, dilation, oh, ow):
        # xp[:, :, rows, columns] is (N, C, oh, ow): the tap's value everywhere
        cols[:, i, j] = xp[:, :, rows, columns].transpose(1, 0, 2, 3)
    return cols.reshape(C * kh * kw, N * oh * ow)


def col2im(cols, x_shape, kh, kw, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """The adjoint of :func:`im2col`: scatter-add columns back into an image.

    An input pixel that lies in several receptive fields receives the sum of
    their contributions — exactly the gradient of im2col. Returns (N, C, H, W).
    """
    N, C, H, W = x_shape
    ph, pw = padding
    oh = conv_out_size(H, kh, stride[0], ph, dilation[0])
    ow = conv_out_size(W, kw, stride[1], pw, dilation[1])
    cols = cols.reshape(C, kh, kw, N, oh, ow)
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    dxp_by_channel = dxp.transpose(1, 0, 2, 3)    # (C, N, Hp, Wp), a view: cols' axis order
    for i, j, rows, columns in _taps(kh, kw, stride, dilation, oh, ow):
        # cols[:, i, j] is (C, N, oh, ow), read in memory order (1.7x faster than
        # reading it transposed into dxp's (N, C) order; the same sums)
        dxp_by_channel[:, :, rows, columns] += cols[:, i, j]
    return dxp[:, :, ph:ph + H, pw:pw + W]


# -----------------------------------------------------------------------------
# Depthwise convolution: each channel filtered on its own, no im2col
# -----------------------------------------------------------------------------
def depthwise_conv2d_forward(x, w, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """A convolution with ``groups = C`` and one filter per channel, computed directly.

    x (N, C, H, W), w (C, 1, kh, kw) -> y (N, C, oh, ow)::

        y[n, c, oy, ox] = sum over taps (i, j) of w[c, 0, i, j] * x_padded[n, c, oy*sh + i*dh, ox*sw + j*dw]

    im2col would copy every input value kh*kw times to multiply it by one
    weight; here each tap is one strided slice of the padded input times that
    tap's C weights, added into y (kh*kw multiply-adds per output, as in im2col's
    product, with none of the copying).
    """
    N, C, H, W = x.shape
    kh, kw = w.shape[2:]
    oh = conv_out_size(H, kh, stride[0], padding[0], dilation[0])
    ow = conv_out_size(W, kw, stride[1], padding[1], dilation[1])
    xp = pad_planes(x, padding)
    y = np.zeros((N, C, oh, ow), dtype=x.dtype)
    for i, j, rows, columns in _taps(kh, kw, stride, dilation, oh, ow):
        y += w[:, 0, i, j].reshape(1, C, 1, 1) * xp[:, :, rows, columns]
    return y


def depthwise_conv2d_backward(gy, x, w, stride=(1, 1), padding=(0, 0), dilation=(1, 1), need_dx=True):
    """The gradients of :func:`depthwise_conv2d_forward`: ``(dx or None, dw)``.

    Each tap (i, j) of the forward is ``y += w_ij * slice_ij(x_padded)``, so::

        dw[c, 0, i, j]     = sum over n, oy, ox of gy * slice_ij(x_padded)
        slice_ij(dx_padded) += w_ij * gy          (overlapping slices add up)
    """
    N, C, H, W = x.shape
    kh, kw = w.shape[2:]
    ph, pw = padding
    oh, ow = gy.shape[2:]
    xp = pad_planes(x, padding)
    dw = np.empty(w.shape, dtype=gy.dtype)
    dxp = np.zeros(xp.shape, dtype=gy.dtype) if need_dx else None
    for i, j, rows, columns in _taps(kh, kw, stride, dilation, oh, ow):
        dw[:, 0, i, j] = (gy * xp[:, :, rows, columns]).sum(axis=(0, 2, 3))
        if need_dx:
            dxp[:, :, rows, columns] += w[:, 0, i, j].reshape(1, C, 1, 1) * gy
    dx = dxp[:, :, ph:ph + H, pw:pw + W] if need_dx else None
    return dx, dw


# -----------------------------------------------------------------------------
# Max pooling
# -----------------------------------------------------------------------------
def max_pool2d_forward(x, kh, kw, stride, padding):
    """y[n,c,oy,ox] = max of the kh×kw window; also return which tap won.

    Returns ``(y, argmax)``: ``argmax`` (int8 when it fits, int32 otherwise)
    holds the winning tap ``i*kw + j`` of each window — the first one on ties,
    like PyTorch. Padding is -inf, so it never wins; each window's winner
    starts at its first real pixel (:func:`first_real_taps`), which keeps it
    for a window of nothing but -inf (PyTorch's index there too).

    NaN, as in PyTorch: a tap wins when it is greater than the best so far
    *or is NaN* (``v > best or isnan(v)``). A window holding a NaN therefore
    pools to NaN, and its argmax is the window's last NaN (PyTorch's index
    too), so the backward routes the gradient to that NaN. A NaN is never
    dropped on the way: ``[[nan, 1], [2, 3]]`` pools to nan, not 3.
    """
    N, C, H, W = x.shape
    oh = conv_out_size(H, kh, stride[0], padding[0])
    ow = conv_out_size(W, kw, stride[1], padding[1])
    xp = pad_planes(x, padding, value=-np.inf)
    y = np.full((N, C, oh, ow), -np.inf, dtype=x.dtype)
    argmax = first_real_taps(oh, ow, kw, stride, padding, np.int8 if kh * kw <= 127 else np.int32)
    for i, j, rows, columns in _taps(kh, kw, stride, (1, 1), oh, ow):
        window = xp[:, :, rows, columns]           # (N, C, oh, ow): what tap (i, j) sees
        better = (window > y) | np.isnan(window)   # strict: the first maximum keeps the win;
                                                   # a NaN always wins (PyTorch's rule)
        y = np.where(better, window, y)
        argmax = np.where(better, argmax.dtype.type(i * kw + j), argmax)
    return y, argmax


def max_pool2d_backward(gy, argmax, x_shape, kh, kw, stride, padding):
    """Route each output gradient to its window's winning input; sum overlaps.

    dx[input] = sum over the windows that input won of gy[window]: the
    derivative of a max is 1 for the winner and 0 for the others, so each tap
    adds ``gy * won`` (won: 1 where this tap won, else 0).
    """
    N, C, H, W = x_shape
    ph, pw = padding
    oh, ow = gy.shape[2:]
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=gy.dtype)
    for i, j, rows, columns in _taps(kh, kw, stride, (1, 1), oh, ow):
        won = argmax == i * kw + j                 # (N, C, oh, ow) booleans
        dxp[:, :, rows, columns] += gy * won
    return dxp[:, :, ph:ph + H, pw:pw + W]


# -----------------------------------------------------------------------------
# Fused: a convolution's bias + ReLU + max pooling, in one pass
# -----------------------------------------------------------------------------
def bias_relu_max_pool2d_forward(y, bias, kh, kw, stride):
    """``out = max_pool2d(relu(y + bias))`` for a convolution's output ``y`` in (C, N, H, W) order.

    Why fuse: the convolution's matrix product ``W @ cols`` comes out channel
    first, (Cout, N*oh*ow) = (C, N, H, W). Run as separate layers, the
    network would then add the bias, copy y into (N, C, H, W) order, write
    relu(y), and only then pool it — four passes over the largest activation
    in the network, each a full-size array. This kernel reads y once and
    writes the pooled result, a quarter of the size (2x2 windows), straight
    in (N, C, oh, ow) order.

    Why it gives the same numbers: relu is monotone, so it commutes with max —
    ``max(relu(a), relu(b)) == relu(max(a, b))`` exactly — and we pool first
    and clip the small result. The bias is added before the comparison, as
    the unfused layers do (two values can round to the same sum, and the tie
    must be broken the same way).

    Returns ``(out, argmax)``, both (N, C, oh, ow): ``argmax`` is the winning
    tap ``i*kw + j`` of each window (the first on ties, as max_pool2d_forward),
    or **-1 where relu clipped the window** (its max was <= 0, so no gradient
    flows back through it). Windows do not pad (padding 0, dilation 1).

    NaN, as the unfused layers (and PyTorch) do it: a NaN wins its window
    (see :func:`max_pool2d_forward`), ``relu(nan)`` is nan, and relu's
    derivative at nan is 1 (PyTorch passes the gradient where ``not x <= 0``),
    so the window outputs nan and its argmax is the NaN's tap, never -1.
    """
    C, N, H, W = y.shape
    sh, sw = stride
    oh, ow = conv_out_size(H, kh, sh, 0), conv_out_size(W, kw, sw, 0)
    z = y if bias is None else y + bias.reshape(C, 1, 1, 1)       # (C, N, H, W)
    best = np.full((C, N, oh, ow), -np.inf, dtype=y.dtype)
    argmax = np.zeros((C, N, oh, ow), dtype=np.int8 if kh * kw <= 127 else np.int32)
    for i, j, rows, columns in _taps(kh, kw, stride, (1, 1), oh, ow):
        window = z[:, :, rows, columns]            # (C, N, oh, ow): what tap (i, j) sees
        better = (window > best) | np.isnan(window)   # as in max_pool2d_forward
        best = np.where(better, window, best)
        argmax = np.where(better, argmax.dtype.type(i * kw + j), argmax)
    clipped = best <= 0                            # relu(max) == 0 here: no gradient (False for nan)
    argmax[clipped] = -1
    out = np.maximum(best, 0)                      # relu, on the pooled (small) array (nan stays nan)
    # (C, N, oh, ow) -> (N, C, oh, ow): the layout every other layer expects
    return (np.ascontiguousarray(out.transpose(1, 0, 2, 3)),
            np.ascontiguousarray(argmax.transpose(1, 0, 2, 3)))


def bias_relu_max_pool2d_backward(gout, argmax, y_shape, kh, kw, stride):
    """The gradient with respect to ``y`` (C, N, H, W) of :func:`bias_relu_max_pool2d_forward`.

    ``gout[n, c, oy, ox]`` goes to the input its window's winning tap read,
    and nowhere where ``argmax == -1`` (relu's derivative is 0 there).
    Overlapping windows add up. The result is channel first, (C, N, H, W):
    exactly the ``dY`` the convolution's backward matrix products take, so no
    layout copy is needed on the way back either. (The bias's gradient is
    ``dy`` summed over N, H, W, as for any convolution.)
    """
    C, N, H, W = (int(s) for s in y_shape)
    g = gout.transpose(1, 0, 2, 3)                 # (C, N, oh, ow), a view
    won_any = argmax.transpose(1, 0, 2, 3)
    oh, ow = g.shape[2:]
    dy = np.zeros((C, N, H, W), dtype=gout.dtype)
    for i, j, rows, columns in _taps(kh, kw, stride, (1, 1), oh, ow):
        won = won_any == i * kw + j                # never true where argmax == -1
        dy[:, :, rows, columns] += g * won
    return dy


# -----------------------------------------------------------------------------
# Average pooling
# -----------------------------------------------------------------------------
def _avg_divisor(x_shape, kh, kw, stride, padding, count_include_pad, dtype):
    """kh*kw, or (count_include_pad=False) the number of real pixels per window."""
    if count_include_pad or (padding[0] == 0 and padding[1] == 0):
        return dtype.type(kh * kw)
    H, W = x_shape[2:]
    ones = np.ones((1, 1, H, W), dtype=dtype)
    return avg_pool2d_forward(ones, kh, kw, stride, padding, True) * (kh * kw)  # (1, 1, oh, ow)


def avg_pool2d_forward(x, kh, kw, stride, padding, count_include_pad=True):
    """y[n,c,oy,ox] = mean of the kh×kw window (zero padding counts if count_include_pad)."""
    N, C, H, W = x.shape
    oh = conv_out_size(H, kh, stride[0], padding[0])
    ow = conv_out_size(W, kw, stride[1], padding[1])
    xp = pad_planes(x, padding)
    total = np.zeros((N, C, oh, ow), dtype=x.dtype)
    for i, j, rows, columns in _taps(kh, kw, stride, (1, 1), oh, ow):
        total += xp[:, :, rows, columns]
    return total / _avg_divisor(x.shape, kh, kw, stride, padding, count_include_pad, x.dtype)


def avg_pool2d_backward(gy, x_shape, kh, kw, stride, padding, count_include_pad=True):
    """Each input of a window receives gy / divisor; overlapping windows add up."""
    N, C, H, W = x_shape
    ph, pw = padding
    oh, ow = gy.shape[2:]
    g = gy / _avg_divisor(x_shape, kh, kw, stride, padding, count_include_pad, gy.dtype)
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=gy.dtype)
    for i, j, rows, columns in _taps(kh, kw, stride, (1, 1), oh, ow):
        dxp[:, :, rows, columns] += g
    return dxp[:, :, ph:ph + H, pw:pw + W]


# -----------------------------------------------------------------------------
# Scatter-add (the backward of indexing)
# -----------------------------------------------------------------------------
def scatter_add(dst, index, values):
    """``dst[index] += values`` in place, where an element selected twice adds twice.

    This is the gradient of ``y = x[index]``: every place an element of x was
    read from sends its share of gy back. Plain ``dst[index] += values`` is not
    enough: it reads ``dst[index]`` once, adds, and writes back, so when an index
    repeats (``x[[0, 0]]``) only one of the contributions survives. NumPy's
    unbuffered ``add.at`` applies every one of them. Returns None.
    """
    np.add.at(dst, index, values)


# -----------------------------------------------------------------------------
# Special functions
# -----------------------------------------------------------------------------
def erf(x):
    """The error function (for the exact GELU); SciPy's, elementwise."""
    from scipy.special import erf as _erf
    return _erf(x).astype(x.dtype, copy=False)


# -----------------------------------------------------------------------------
# Integer matrix product (int8 inference)
# -----------------------------------------------------------------------------
def qgemm_u8s8(w_q, cols, x_zero_point):
    """acc[m, l] = sum_k w_q[m, k] * (cols[k, l] - x_zero_point), exactly, in int32.

    ``w_q`` (M, K) int8 weights (symmetric: their zero point is 0), ``cols``
    (K, L) uint8 activation codes with zero point ``x_zero_point``. Each term
    is at most 128 * 255 in size, so K up to 65,000 taps cannot overflow int32.
    Written as int64 products summed by NumPy (exact integers; NumPy has no
    integer BLAS, so this is the slow, obviously-right version).
    """
    if w_q.dtype != np.int8 or cols.dtype != np.uint8:
        raise TypeError(f"qgemm_u8s8: expected int8 weights and uint8 columns, got {w_q.dtype} and {cols.dtype}")
    if w_q.ndim != 2 or cols.ndim != 2 or w_q.shape[1] != cols.shape[0]:
        raise ValueError(f"qgemm_u8s8: shapes {w_q.shape} and {cols.shape} do not multiply")
    x = cols.astype(np.int64) - int(x_zero_point)            # (K, L), the centred codes
    return (w_q.astype(np.int64) @ x).astype(np.int32)       # (M, L)


# -----------------------------------------------------------------------------
# Optional kernels (fast paths elsewhere): here, the simple composition
# -----------------------------------------------------------------------------
# kernels/contract.py declares these optional: a backend provides them only when
# it can do the work faster than the layers' own composition. Written here as
# that composition — the specification each fast path is tested against. The
# numpy backend does not install them (minicnn/backend.py): its callers compose
# exactly this themselves.
def matmul(a, b):
    """``a @ b`` (2-D, or stacks of 2-D): the layers' matrix products."""
    return a @ b


def adam_step_(w, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, betas, eps, weight_decay,
               decoupled, step):
    """One Adam (or AdamW, ``decoupled``) update of ``w`` in place, step number ``step``::

        g   = grad + weight_decay * w            (Adam; AdamW instead: w *= 1 - lr*weight_decay)
        m   = beta1 * m + (1 - beta1) * g        exp_avg
        v   = beta2 * v + (1 - beta2) * g^2      exp_avg_sq  (amsgrad: v = max(v_max, v))
        w  -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    ``max_exp_avg_sq`` is None without amsgrad. The same operations in the same
    order as ``optim.Adam.update_param``. Returns True (it never declines).
    """
    beta1, beta2 = betas
    g = grad
    if weight_decay != 0:
        if decoupled:
            w *= 1 - lr * weight_decay
        else:
            g = g + weight_decay * w
    exp_avg *= beta1
    exp_avg += (1 - beta1) * g
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * (g * g)
    v = exp_avg_sq
    if max_exp_avg_sq is not None:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        v = max_exp_avg_sq
    m_hat = exp_avg / (1 - beta1 ** step)
    v_hat = v / (1 - beta2 ** step)
    w -= lr * m_hat / (np.sqrt(v_hat) + eps)
    return True


def _scale_shift(xhat, weight, bias, shape):
    """y = weight * xhat + bias per channel (``shape`` broadcasts a (C,) vector); None skips a term."""
    y = xhat
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def batch_norm_train_forward(x, weight, bias, eps):
    """Training-mode batch norm: ``(y, xhat, mean, var, inv_std)``.

    x (N, C) or (N, C, H, W); per channel c, over its m = N (or N*H*W) values::

        mean = sum(x) / m,   var = sum((x - mean)^2) / m      (biased)
        inv_std = 1 / sqrt(var + eps)
        xhat = (x - mean) * inv_std,   y = weight * xhat + bias

    weight and bias (C,) or None (then 1 and 0). mean, var, inv_std (C,);
    xhat and y are x's shape. ``BatchNormFn`` composes exactly this.
    """
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)                 # broadcast per channel
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    inv_std = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    xhat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
    y = _scale_shift(xhat, weight, bias, shape)
    return y, xhat, mean, var, inv_std


def batch_norm_train_backward(gy, xhat, inv_std, weight, need_dx=True):
    """The gradients of :func:`batch_norm_train_forward`: ``(dx or None, dweight, dbias)``.

    With g = gy * weight (dL/dxhat) and means over each channel's m values::

        dbias   = sum(gy),   dweight = sum(gy * xhat)
        dx      = inv_std * (g - mean(g) - xhat * mean(g * xhat))
    """
    axes = (0,) if gy.ndim == 2 else (0, 2, 3)
    shape = (1, -1) if gy.ndim == 2 else (1, -1, 1, 1)
    g = gy if weight is None else gy * weight.reshape(shape)          # dL/dxhat
    dx = None
    if need_dx:
        dx = (g - g.mean(axis=axes, keepdims=True)
              - xhat * (g * xhat).mean(axis=axes, keepdims=True)) * inv_std.reshape(shape)
    return dx, (gy * xhat).sum(axis=axes), gy.sum(axis=axes)


def batch_norm_eval_forward(x, weight, bias, running_mean, running_var, eps, need_xhat=True):
    """Evaluation-mode batch norm with the running statistics: ``(y, xhat or None, inv_std)``.

    Per channel c (x (N, C) or (N, C, H, W), the statistics (C,))::

        inv_std = 1 / sqrt(running_var + eps)
        xhat = (x - running_mean) * inv_std,   y = weight * xhat + bias

    weight and bias (C,) or None (then 1 and 0). ``need_xhat``: whether a backward will
    want xhat (for dweight); without it the kernel need not keep it.
    """
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)                 # broadcast per channel
    inv_std = (1.0 / np.sqrt(running_var + eps)).astype(x.dtype)
    xhat = (x - running_mean.reshape(shape)) * inv_std.reshape(shape)
    y = _scale_shift(xhat, weight, bias, shape)
    return y, (xhat if need_xhat else None), inv_std


def relu_forward(x, need_mask=True):
    """``(y, passes or None)``: y = max(x, 0), elementwise; a NaN stays NaN.

    passes = not (x <= 0) (bool, x's shape): where the backward lets the gradient
    through — at a NaN too, so that its trace is not hidden. ``need_mask``: whether a
    backward will want it.
    """
    return np.maximum(x, 0), (~(x <= 0) if need_mask else None)


def relu_backward(gy, passes):
    """dx = gy where passes, else gy * 0 (so a NaN or inf gradient stays NaN, as gy * mask)."""
    return gy * passes


def conv2d_forward(x, w, bias, stride, padding, dilation):
    """``y = conv2d(x, w) + bias`` (N, Cout, oh, ow), no groups.

    What Conv2dFn's forward computes::

        cols = im2col(x)                          (C*kh*kw, N*oh*ow)
        y    = w.reshape(Cout, C*kh*kw) @ cols    (Cout, N, oh, ow) -> (N, Cout, oh, ow)
    """
    N, C, H, W = x.shape
    Cout, _, kh, kw = w.shape
    oh = conv_out_size(H, kh, stride[0], padding[0], dilation[0])
    ow = conv_out_size(W, kw, stride[1], padding[1], dilation[1])
    cols = im2col(x, kh, kw, stride, padding, dilation)
    y = (w.astype(x.dtype, copy=False).reshape(Cout, -1) @ cols).reshape(Cout, N, oh, ow)
    if bias is not None:
        y += bias.astype(x.dtype, copy=False).reshape(Cout, 1, 1, 1)
    return np.ascontiguousarray(y.transpose(1, 0, 2, 3))


def conv2d_backward(gy, x, w, stride, padding, dilation, need_dx=True):
    """``(dx or None, dw, db)`` of :func:`conv2d_forward`.

    What Conv2dFn's backward computes::

        dy = gy in (Cout, N*oh*ow) order;  dw = dy @ im2col(x)^T;  db = dy summed
        dx = col2im(w^T @ dy)   (only if need_dx)
    """
    N, C, H, W = x.shape
    Cout, _, kh, kw = w.shape
    dy = gy.astype(x.dtype, copy=False).transpose(1, 0, 2, 3).reshape(Cout, -1)
    cols = im2col(x, kh, kw, stride, padding, dilation)
    dw = (dy @ cols.T).reshape(w.shape)
    db = dy.sum(axis=1)
    w2 = w.astype(x.dtype, copy=False).reshape(Cout, -1)
    dx = col2im(w2.T @ dy, x.shape, kh, kw, stride, padding, dilation) if need_dx else None
    return dx, dw, db


def conv2d_bias_relu_max_pool2d_forward(x, w, bias, stride, padding, dilation, pool_kh, pool_kw,
                                        pool_stride):
    """``(out, argmax)`` = max_pool2d(relu(conv2d(x, w) + bias)): the whole layer, no groups.

    x (N, C, H, W), w (Cout, C, kh, kw), bias (Cout,) or None; out and argmax
    (N, Cout, ph, pw) as :func:`bias_relu_max_pool2d_forward` returns them::

        cols = im2col(x)                         (C*kh*kw, N*oh*ow)
        y    = w.reshape(Cout, C*kh*kw) @ cols   (Cout, N*oh*ow) = (Cout, N, oh, ow)
        out  = bias_relu_max_pool2d(y, bias)
    """
    N, C, H, W = x.shape
    Cout, _, kh, kw = w.shape
    oh = conv_out_size(H, kh, stride[0], padding[0], dilation[0])
    ow = conv_out_size(W, kw, stride[1], padding[1], dilation[1])
    cols = im2col(x, kh, kw, stride, padding, dilation)
    y = (w.astype(x.dtype, copy=False).reshape(Cout, -1) @ cols).reshape(Cout, N, oh, ow)
    return bias_relu_max_pool2d_forward(y, bias, pool_kh, pool_kw, pool_stride)


def conv2d_bias_relu_max_pool2d_backward(gout, argmax, x, w, stride, padding, dilation, pool_kh,
                                         pool_kw, pool_stride, need_dx=True):
    """``(dx or None, dw, db)`` of :func:`conv2d_bias_relu_max_pool2d_forward`::

        dy   = bias_relu_max_pool2d_backward(gout, argmax)   (Cout, N*oh*ow)
        dw   = dy @ cols^T        db = dy summed over N, oh, ow
        dx   = col2im(w^T @ dy)   (only if need_dx)

    with ``cols = im2col(x)`` computed again (the layer keeps x, not the columns).
    """
    N, C, H, W = x.shape
    Cout, _, kh, kw = w.shape
    oh = conv_out_size(H, kh, stride[0], padding[0], dilation[0])
    ow = conv_out_size(W, kw, stride[1], padding[1], dilation[1])
    w2 = w.astype(x.dtype, copy=False).reshape(Cout, -1)                 # (Cout, C*kh*kw)
    dy = bias_relu_max_pool2d_backward(gout.astype(x.dtype, copy=False), argmax, (Cout, N, oh, ow),
                                       pool_kh, pool_kw, pool_stride).reshape(Cout, -1)
    cols = im2col(x, kh, kw, stride, padding, dilation)
    dw = (dy @ cols.T).reshape(w.shape)
    db = dy.sum(axis=1)
    dx = col2im(w2.T @ dy, x.shape, kh, kw, stride, padding, dilation) if need_dx else None
    return dx, dw, db
