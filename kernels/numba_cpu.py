"""The kernels again, as plain loops compiled by Numba: the fast CPU backend.

Same functions, same signatures, same numbers as :mod:`numpy_ref` (the
specification — read it first; the tests hold this module to it). Where the
reference moves whole strided slices at once, this module spells out one
element at a time with explicit index arithmetic, the way you would write it
in C. Numba compiles each ``@njit`` function to machine code the first time it
is called with a new dtype (float32 and float64 each get their own version);
``cache=True`` keeps the machine code on disk, so later processes skip the
compile.

``parallel=True`` + ``prange`` splits the outermost loop over the CPU cores.
That loop must be over *independent* pieces of work — iterations that never
write the same output element — or two threads would race. Every kernel
below says which axis it splits and why that is safe.

Each public function is a thin Python wrapper: it checks and normalises the
arguments, allocates the output, and calls its ``_kernel``. Matrix products
are not here: they stay in BLAS (``@``), which is faster than any loop we
would write.

Index conventions (as in numpy_ref)::

    out = floor((in + 2*pad - dil*(k - 1) - 1) / stride) + 1
    im2col layout:  cols[(c*kh + i)*kw + j, (n*oh + oy)*ow + ox]
                      = x_padded[n, c, oy*sh + i*dh, ox*sw + j*dw]

Two habits make these loops fast, and both are about what the compiler can
prove inside the innermost loop:

* No bounds tests. Padding is handled as in the reference: the wrapper pads
  the input (zeros, or -inf for max pooling; no copy when the padding is 0)
  and the backward kernels add into a padded gradient that is cropped at the
  end. Testing ``0 <= y < H`` for every element instead made the kernels two
  to three times slower.
* Index with plain loop counters. Numba supports Python's ``a[-1]``, so it
  checks every index for a negative value — unless it can prove the index is
  not negative, which it can for a counter from ``range()``. So a kernel first
  takes a *view* of what one kernel tap sees at every output position,
  ``seen = x[:, c, i*dh::sh, j*dw::sw]``, and then reads ``seen[n, oy, ox]``
  with ``n, oy, ox`` counting over ``range(N)``, ``range(oh)``, ``range(ow)``.
  Computing ``x[n, c, oy*sh + i*dh, ox*sw + j*dw]`` directly gives the same
  numbers about three times slower.

Two process settings matter as much as the loops (both measured in
``benchmarks/README.md``), so importing this module makes them:

* Threads. Numba's OpenMP workers and the BLAS library's workers take turns
  on the same cores: a matrix product, a kernel, a product... By default an
  OpenMP worker spins for milliseconds after each parallel loop, waiting for
  more work, and steals the core from the BLAS thread that runs next. We ask
  OpenMP to sleep at once (``OMP_WAIT_POLICY=PASSIVE``) unless you set the
  variable yourself; it must happen before Numba starts its thread pool (and
  it applies to any OpenMP library loaded later in this process). The BLAS
  threads spin too (OpenBLAS: about 0.1 s after each product), and that can
  only be shortened before NumPy is first imported, with the environment
  variable ``OPENBLAS_THREAD_TIMEOUT=4``; ``benchmarks/README.md`` shows what
  it is worth.
* Memory. A training step allocates and frees the same big arrays every
  time (im2col columns, activations, gradients). glibc hands big blocks back
  to the operating system on ``free``, and the next step gets them back one
  page fault per 4 KiB page, zero-filled by the kernel: about half of a step
  of this backend went there. ``minicnn/backend.py`` therefore tells glibc to
  keep freed memory for reuse when a CPU backend is chosen (``mallopt``; Linux
  only; the process then holds on to its peak memory). Set
  ``MINICNN_TUNE_MALLOC=0`` to leave malloc alone.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

from .geometry import as_pair, conv_out_size, output_hw, pad_planes  # noqa: F401 (conv_out_size: part of every kernel module)

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see "Threads" above

from numba import njit, prange  # noqa: E402

NAME = "numba"



_jit = njit(parallel=True, cache=True)


# -----------------------------------------------------------------------------
# Argument checks shared by the wrappers
# -----------------------------------------------------------------------------
def _float_array(a, name, ndim):
    """A C-contiguous float32/float64 array of rank ``ndim`` (compiled loops need
    one memory layout and one of the two dtypes they were written for)."""
    a = np.asarray(a)
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return np.ascontiguousarray(a)


# -----------------------------------------------------------------------------
# im2col / col2im
# -----------------------------------------------------------------------------
@_jit
def _im2col_kernel(xp, cols, kh, kw, sh, sw, dh, dw, oh, ow):
    """cols[(c, i, j), (n, oy, ox)] = xp[n, c, i*dh + oy*sh, j*dw + ox*sw]   (xp: padded x).

    Parallel over the C*kh*kw rows of ``cols``: each task fills one whole row,
    so no two threads write the same element. (Splitting finer, into (row,
    image) pieces, spends more time making views than copying: 1.4x slower.)
    """
    N, C = xp.shape[0], xp.shape[1]
    for row in prange(C * kh * kw):                   # row = (c*kh + i)*kw + j
        c, i, j = row // (kh * kw), row // kw % kh, row % kw
        seen = xp[:, c, i * dh::sh, j * dw::sw]       # seen[n, oy, ox]: what tap (i, j) reads
        out = cols[row].reshape(N, oh, ow)
        for n in range(N):
            for oy in range(oh):
                for ox in range(ow):
                    out[n, oy, ox] = seen[n, oy, ox]


def im2col(x, kh, kw, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """Unfold every receptive field of ``x`` (N, C, H, W) into a column: (C*kh*kw, N*oh*ow)."""
    x = _float_array(x, "im2col: x", 4)
    stride, padding = as_pair(stride, "stride"), as_pair(padding, "padding")
    dilation = as_pair(dilation, "dilation")
    N, C, H, W = x.shape
    oh, ow = output_hw(H, W, kh, kw, stride, padding, dilation)
    cols = np.empty((C * kh * kw, N * oh * ow), dtype=x.dtype)
    _im2col_kernel(pad_planes(x, padding), cols, kh, kw, *stride, *dilation, oh, ow)
    return cols


@_jit
def _col2im_kernel(cols, dxp, kh, kw, sh, sw, dh, dw, oh, ow):
    """dxp[n, c, i*dh + oy*sh, j*dw + ox*sw] += cols[(c, i, j), (n, oy, ox)]   (dxp: padded dx).

    Parallel over the C channels: the rows of ``cols`` that add into channel c
    are its own kh*kw rows and no other channel's, so each thread adds only
    into its own channel — a race-free scatter-add. Within a channel the taps
    are added in the order (i, j), as in the reference. (With a single input
    channel this runs on one thread; the first layer rarely needs its dx.)
    """
    N, C = dxp.shape[0], dxp.shape[1]
    for c in prange(C):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                touched = dxp[:, c, i * dh::sh, j * dw::sw]   # the pixels tap (i, j) read
                grad = cols[row].reshape(N, oh, ow)
                for n in range(N):
                    for oy in range(oh):
                        for ox in range(ow):
                            touched[n, oy, ox] += grad[n, oy, ox]


def col2im(cols, x_shape, kh, kw, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """The adjoint of :func:`im2col`: scatter-add columns back into an (N, C, H, W) image."""
    cols = _float_array(cols, "col2im: cols", 2)
    stride, padding = as_pair(stride, "stride"), as_pair(padding, "padding")
    dilation = as_pair(dilation, "dilation")
    N, C, H, W = (int(s) for s in x_shape)
    oh, ow = output_hw(H, W, kh, kw, stride, padding, dilation)
    if cols.shape != (C * kh * kw, N * oh * ow):
        raise ValueError(f"col2im: expected cols of shape {(C * kh * kw, N * oh * ow)} for "
                         f"x_shape {tuple(x_shape)}, got {cols.shape}")
    ph, pw = padding
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    _col2im_kernel(cols, dxp, kh, kw, *stride, *dilation, oh, ow)
    return dxp[:, :, ph:ph + H, pw:pw + W]


# -----------------------------------------------------------------------------
# Max pooling
# -----------------------------------------------------------------------------
@_jit
def _max_pool_forward_kernel(xp, y, argmax, kh, kw, sh, sw):
    """For each tap (i, j) in order: where it beats the best so far, it becomes
    the best (``y``) and the winner (``argmax``).

    ``y`` starts at -inf. ``>`` is strict, so on ties the first tap keeps the
    win, and -inf padding never wins. Parallel over the N*C planes (every
    window lies inside one plane).
    """
    N, C, oh, ow = y.shape
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        best, winner = y[n, c], argmax[n, c]          # (oh, ow) each
        for i in range(kh):
            for j in range(kw):
                seen = xp[n, c, i::sh, j::sw]         # seen[oy, ox]: what tap (i, j) reads
                for oy in range(oh):
                    for ox in range(ow):
                        if seen[oy, ox] > best[oy, ox]:
                            best[oy, ox] = seen[oy, ox]
                            winner[oy, ox] = i * kw + j


def max_pool2d_forward(x, kh, kw, stride, padding):
    """Returns ``(y, argmax)``: the window maxima and which tap ``i*kw + j`` won
    (int8 when kh*kw fits, int32 otherwise — as in the reference)."""
    x = _float_array(x, "max_pool2d: x", 4)
    stride, padding = as_pair(stride, "stride"), as_pair(padding, "padding")
    N, C, H, W = x.shape
    oh, ow = output_hw(H, W, kh, kw, stride, padding, (1, 1))
    y = np.full((N, C, oh, ow), -np.inf, dtype=x.dtype)
    argmax = np.zeros((N, C, oh, ow), dtype=np.int8 if kh * kw <= 127 else np.int32)
    _max_pool_forward_kernel(pad_planes(x, padding, -np.inf), y, argmax, kh, kw, *stride)
    return y, argmax


@_jit
def _max_pool_backward_kernel(gy, argmax, dxp, kw, sh, sw):
    """dxp[the pixel that won window (oy, ox)] += gy[oy, ox].

    The winning tap t = i*kw + j of window (oy, ox) read pixel
    (oy*sh + i, ox*sw + j) of the padded plane. Parallel over the N*C planes.
    (One pass over the outputs; looping over the taps instead, as the
    reference does, reads every output kh*kw times and is 3x slower here.)
    """
    N, C, oh, ow = gy.shape
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        grad, winner, image = gy[n, c], argmax[n, c], dxp[n, c]
        for oy in range(oh):
            for ox in range(ow):
                i, j = winner[oy, ox] // kw, winner[oy, ox] % kw
                image[oy * sh + i, ox * sw + j] += grad[oy, ox]


def max_pool2d_backward(gy, argmax, x_shape, kh, kw, stride, padding):
    """Route each output gradient to its window's winning input; overlaps add up."""
    gy = _float_array(gy, "max_pool2d_backward: gy", 4)
    argmax = np.ascontiguousarray(argmax)
    if argmax.shape != gy.shape:
        raise ValueError(f"max_pool2d_backward: argmax {argmax.shape} and gy {gy.shape} differ")
    stride, (ph, pw) = as_pair(stride, "stride"), as_pair(padding, "padding")
    N, C, H, W = (int(s) for s in x_shape)
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=gy.dtype)
    _max_pool_backward_kernel(gy, argmax, dxp, kw, *stride)
    return dxp[:, :, ph:ph + H, pw:pw + W]


# -----------------------------------------------------------------------------
# Fused: a convolution's bias + ReLU + max pooling, in one pass
# -----------------------------------------------------------------------------
@_jit
def _bias_relu_max_pool_forward_kernel(y, bias, out, argmax, kh, kw, sh, sw):
    """out[n, c, oy, ox] = relu(max over the window of y[c, n] + bias[c]); argmax = the
    winning tap, or -1 where relu clipped the window (see numpy_ref).

    One pass: every element of the (C, N, H, W) conv output is read once, and
    only the pooled result is written, already in (N, C, oh, ow) order.
    ``best`` starts at -inf and ``>`` is strict, exactly as in
    ``_max_pool_forward_kernel``. Parallel over the C*N planes: each window
    lies inside one plane, and each plane writes its own output plane.
    """
    C, N = y.shape[0], y.shape[1]
    oh, ow = out.shape[2], out.shape[3]
    for plane in prange(C * N):
        c, n = plane // N, plane % N
        image, b = y[c, n], bias[c]                   # (H, W), the channel's bias
        pooled, winner = out[n, c], argmax[n, c]      # (oh, ow) each
        for oy in range(oh):
            for ox in range(ow):
                best, tap = -np.inf, 0
                for i in range(kh):
                    row = image[oy * sh + i]
                    for j in range(kw):
                        v = row[ox * sw + j] + b
                        if v > best:
                            best, tap = v, i * kw + j
                if best > 0:
                    pooled[oy, ox], winner[oy, ox] = best, tap
                else:                                 # relu(max) = 0: no gradient here
                    pooled[oy, ox], winner[oy, ox] = 0, -1


@_jit
def _bias_relu_max_pool_2x2_forward_kernel(y, bias, out, argmax, minus_infinity):
    """The same for 2x2 windows with stride 2, the four taps written out.

    Nothing else changes — ``best`` starts at -inf and the taps are compared
    in the order 0, 1, 2, 3 with a strict ``>`` — but with the tap loops
    unrolled the compiler keeps ``best`` and ``tap`` in registers and turns
    the comparisons into selects instead of branches: 5x faster than the
    general kernel on the reference CNN's (32, N, 26, 26) conv output.
    (``minus_infinity`` comes in as a scalar of y's dtype: a float64 ``-np.inf``
    here would make every comparison a float64 one, 2.5x slower.)
    """
    C, N = y.shape[0], y.shape[1]
    oh, ow = out.shape[2], out.shape[3]
    for plane in prange(C * N):
        c, n = plane // N, plane % N
        image, b = y[c, n], bias[c]
        pooled, winner = out[n, c], argmax[n, c]
        for oy in range(oh):
            top, bottom = image[2 * oy], image[2 * oy + 1]     # the window's two rows
            pooled_row, winner_row = pooled[oy], winner[oy]
            for ox in range(ow):
                best, tap = minus_infinity, 0
                v = top[2 * ox] + b
                if v > best:
                    best, tap = v, 0
                v = top[2 * ox + 1] + b
                if v > best:
                    best, tap = v, 1
                v = bottom[2 * ox] + b
                if v > best:
                    best, tap = v, 2
                v = bottom[2 * ox + 1] + b
                if v > best:
                    best, tap = v, 3
                positive = best > 0
                pooled_row[ox] = best if positive else 0
                winner_row[ox] = tap if positive else -1


def bias_relu_max_pool2d_forward(y, bias, kh, kw, stride):
    """``(out, argmax)`` = max_pool2d(relu(y + bias)) for y in (C, N, H, W) order (see numpy_ref)."""
    y = _float_array(y, "bias_relu_max_pool2d: y", 4)
    stride = as_pair(stride, "stride")
    C, N, H, W = y.shape
    oh, ow = output_hw(H, W, kh, kw, stride, (0, 0), (1, 1))
    # no bias: add zeros (x + 0.0 is x, up to the sign of a zero that relu clips anyway)
    bias = np.zeros(C, dtype=y.dtype) if bias is None else _float_array(bias, "bias", 1)
    out = np.empty((N, C, oh, ow), dtype=y.dtype)
    argmax = np.empty((N, C, oh, ow), dtype=np.int8 if kh * kw <= 127 else np.int32)
    bias = bias.astype(y.dtype, copy=False)
    if (kh, kw) == (2, 2) and stride == (2, 2):       # the course's networks: 5x faster
        _bias_relu_max_pool_2x2_forward_kernel(y, bias, out, argmax, y.dtype.type(-np.inf))
    else:
        _bias_relu_max_pool_forward_kernel(y, bias, out, argmax, kh, kw, *stride)
    return out, argmax


@_jit
def _bias_relu_max_pool_backward_kernel(gout, argmax, dy, kw, sh, sw):
    """dy[c, n, the pixel window (oy, ox)'s winner read] += gout[n, c, oy, ox], unless clipped.

    Each (c, n) plane of dy is zeroed and then filled by its own windows only,
    so the planes are independent: parallel over C*N.
    """
    C, N, H, W = dy.shape
    oh, ow = gout.shape[2], gout.shape[3]
    for plane in prange(C * N):
        c, n = plane // N, plane % N
        image, grad, winner = dy[c, n], gout[n, c], argmax[n, c]
        for r in range(H):
            for q in range(W):
                image[r, q] = 0
        for oy in range(oh):
            for ox in range(ow):
                t = winner[oy, ox]
                if t >= 0:
                    image[oy * sh + t // kw, ox * sw + t % kw] += grad[oy, ox]


@_jit
def _bias_relu_max_pool_2x2_backward_kernel(gout, argmax, dy):
    """The same for 2x2 windows with stride 2: the windows tile the plane, so each
    element of dy is written exactly once — gout where its tap won, else 0 — and
    no separate zeroing pass is needed (only the odd last row and column, which
    no window covers, are zeroed). 2.5x faster than the general kernel.
    """
    C, N, H, W = dy.shape
    oh, ow = gout.shape[2], gout.shape[3]
    for plane in prange(C * N):
        c, n = plane // N, plane % N
        image, grad, winner = dy[c, n], gout[n, c], argmax[n, c]
        for oy in range(oh):
            top, bottom = image[2 * oy], image[2 * oy + 1]
            grad_row, winner_row = grad[oy], winner[oy]
            for ox in range(ow):
                g, t = grad_row[ox], winner_row[ox]
                top[2 * ox] = g if t == 0 else 0
                top[2 * ox + 1] = g if t == 1 else 0
                bottom[2 * ox] = g if t == 2 else 0
                bottom[2 * ox + 1] = g if t == 3 else 0
            for q in range(2 * ow, W):                  # an odd width's last column
                top[q], bottom[q] = 0, 0
        for r in range(2 * oh, H):                      # an odd height's last row
            for q in range(W):
                image[r, q] = 0


def bias_relu_max_pool2d_backward(gout, argmax, y_shape, kh, kw, stride):
    """The gradient (C, N, H, W) with respect to y of :func:`bias_relu_max_pool2d_forward`."""
    gout = _float_array(gout, "bias_relu_max_pool2d_backward: gout", 4)
    argmax = np.ascontiguousarray(argmax)
    if argmax.shape != gout.shape:
        raise ValueError(f"bias_relu_max_pool2d_backward: argmax {argmax.shape} and gout "
                         f"{gout.shape} differ")
    stride = as_pair(stride, "stride")
    dy = np.empty(tuple(int(s) for s in y_shape), dtype=gout.dtype)
    if (kh, kw) == (2, 2) and stride == (2, 2):
        _bias_relu_max_pool_2x2_backward_kernel(gout, argmax, dy)
    else:
        _bias_relu_max_pool_backward_kernel(gout, argmax, dy, kw, *stride)
    return dy


# -----------------------------------------------------------------------------
# Average pooling
# -----------------------------------------------------------------------------
@njit(inline="always")
def _window_size(oy, ox, kh, kw, sh, sw, ph, pw, H, W, count_include_pad):
    """kh*kw, or (count_include_pad=False) the number of real pixels in window
    (oy, ox): (its rows inside [0, H)) * (its columns inside [0, W))."""
    if count_include_pad:
        return kh * kw
    top, left = oy * sh - ph, ox * sw - pw
    rows = min(top + kh, H) - max(top, 0)
    columns = min(left + kw, W) - max(left, 0)
    return rows * columns


@_jit
def _avg_pool_forward_kernel(xp, y, kh, kw, sh, sw, ph, pw, count_include_pad):
    """y = (sum over the taps of the zero-padded window) / window size.

    ``y`` starts at 0; the taps are added in the order (i, j), as in the
    reference. Parallel over the N*C planes.
    """
    N, C, oh, ow = y.shape
    H, W = xp.shape[2] - 2 * ph, xp.shape[3] - 2 * pw
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        total = y[n, c]                               # (oh, ow), accumulates the sums
        for i in range(kh):
            for j in range(kw):
                seen = xp[n, c, i::sh, j::sw]
                for oy in range(oh):
                    for ox in range(ow):
                        total[oy, ox] += seen[oy, ox]
        for oy in range(oh):
            for ox in range(ow):
                total[oy, ox] /= _window_size(oy, ox, kh, kw, sh, sw, ph, pw, H, W,
                                              count_include_pad)


def avg_pool2d_forward(x, kh, kw, stride, padding, count_include_pad=True):
    """y[n,c,oy,ox] = mean of the kh×kw window (zero padding counts if count_include_pad)."""
    x = _float_array(x, "avg_pool2d: x", 4)
    stride, padding = as_pair(stride, "stride"), as_pair(padding, "padding")
    N, C, H, W = x.shape
    oh, ow = output_hw(H, W, kh, kw, stride, padding, (1, 1))
    y = np.zeros((N, C, oh, ow), dtype=x.dtype)
    _avg_pool_forward_kernel(pad_planes(x, padding), y, kh, kw, *stride, *padding,
                             bool(count_include_pad))
    return y


@_jit
def _avg_pool_backward_kernel(gy, dxp, kh, kw, sh, sw, ph, pw, count_include_pad):
    """Every pixel of window (oy, ox) receives gy[oy, ox] / window size.

    Parallel over the N*C planes; taps in the order (i, j), as in the reference.
    """
    N, C, oh, ow = gy.shape
    H, W = dxp.shape[2] - 2 * ph, dxp.shape[3] - 2 * pw
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        share = np.empty((oh, ow), dtype=gy.dtype)    # what each pixel of a window receives
        for oy in range(oh):
            for ox in range(ow):
                share[oy, ox] = gy[n, c, oy, ox] / _window_size(oy, ox, kh, kw, sh, sw, ph, pw,
                                                                H, W, count_include_pad)
        for i in range(kh):
            for j in range(kw):
                touched = dxp[n, c, i::sh, j::sw]
                for oy in range(oh):
                    for ox in range(ow):
                        touched[oy, ox] += share[oy, ox]


def avg_pool2d_backward(gy, x_shape, kh, kw, stride, padding, count_include_pad=True):
    """Each input of a window receives gy / window size; overlapping windows add up."""
    gy = _float_array(gy, "avg_pool2d_backward: gy", 4)
    stride, (ph, pw) = as_pair(stride, "stride"), as_pair(padding, "padding")
    N, C, H, W = (int(s) for s in x_shape)
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=gy.dtype)
    _avg_pool_backward_kernel(gy, dxp, kh, kw, *stride, ph, pw, bool(count_include_pad))
    return dxp[:, :, ph:ph + H, pw:pw + W]


# -----------------------------------------------------------------------------
# Scatter-add (the backward of indexing)
# -----------------------------------------------------------------------------
def scatter_add(dst, index, values):
    """``dst[index] += values`` in place, where an element selected twice adds twice.

    NumPy's unbuffered ``np.add.at`` is already a compiled loop over host
    arrays, so this backend uses it as the reference does. Returns None.
    """
    np.add.at(dst, index, values)


# -----------------------------------------------------------------------------
# Special functions
# -----------------------------------------------------------------------------
@_jit
def _erf_kernel(x, y):
    """y[k] = erf(x[k]) over the flattened arrays; elements are independent."""
    for k in prange(x.size):
        y[k] = math.erf(x[k])


def erf(x):
    """The error function, elementwise (for the exact GELU)."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"erf: x must be float32 or float64, got {x.dtype}")
    flat = np.ascontiguousarray(x).reshape(-1)
    y = np.empty_like(flat)
    _erf_kernel(flat, y)
    return y.reshape(x.shape)


# -----------------------------------------------------------------------------
# Adam's update in one pass (optional: only this backend has it)
# -----------------------------------------------------------------------------
@_jit
def _adam_kernel(w, g, m, v, v_max, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
                 weight_decay, shrink, correction1, correction2, decoupled, amsgrad):
    """optim.Adam.update_param's arithmetic, element by element (see there for the math).

    The NumPy version makes ten passes over each parameter — every ``*=``,
    ``+=``, ``/`` and ``sqrt`` is a loop of its own, with temporaries. Here
    each element is read and written once. The operations and their order are
    exactly the NumPy ones, all in the parameter's dtype (the scalars arrive
    already rounded to it, as NumPy rounds a Python float multiplied into a
    float32 array), so the results are equal bit for bit — the tests check.
    Elements are independent: parallel over them.
    """
    for k in prange(w.size):
        gk = g[k]
        if weight_decay != 0:
            if decoupled:
                w[k] = w[k] * shrink                       # AdamW: p *= 1 - lr*wd
            else:
                gk = gk + weight_decay * w[k]              # Adam: g = g + wd*p
        mk = m[k] * beta1 + one_minus_beta1 * gk           # m *= beta1; m += (1-beta1)*g
        vk = v[k] * beta2 + one_minus_beta2 * (gk * gk)    # v *= beta2; v += (1-beta2)*g^2
        m[k], v[k] = mk, vk
        if amsgrad:
            if vk > v_max[k] or vk != vk:                  # xp.maximum: a NaN wins
                v_max[k] = vk
            vk = v_max[k]
        w[k] = w[k] - lr * (mk / correction1) / (np.sqrt(vk / correction2) + eps)


def adam_step_(w, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, betas, eps, weight_decay,
               decoupled, step):
    """Adam's (or AdamW's) update of parameter array ``w`` in place; False if it cannot
    (an array that is not C-contiguous), and the caller then runs the NumPy version."""
    arrays = (w, exp_avg, exp_avg_sq) + ((max_exp_avg_sq,) if max_exp_avg_sq is not None else ())
    if w.dtype not in (np.float32, np.float64) or not all(
            a.flags.c_contiguous and a.dtype == w.dtype and a.shape == w.shape for a in arrays):
        return False
    t = w.dtype.type                                       # round each scalar as NumPy would
    beta1, beta2 = betas
    g = np.ascontiguousarray(grad, dtype=w.dtype).reshape(-1)
    v_max = (max_exp_avg_sq if max_exp_avg_sq is not None else exp_avg_sq).reshape(-1)
    _adam_kernel(w.reshape(-1), g, exp_avg.reshape(-1), exp_avg_sq.reshape(-1), v_max,
                 t(lr), t(beta1), t(1 - beta1), t(beta2), t(1 - beta2), t(eps),
                 t(weight_decay), t(1 - lr * weight_decay), t(1 - beta1 ** step),
                 t(1 - beta2 ** step), bool(decoupled), max_exp_avg_sq is not None)
    return True


# -----------------------------------------------------------------------------
# Integer matrix product (int8 inference)
# -----------------------------------------------------------------------------
@_jit
def _qgemm_kernel(w_q, cols, x_zero_point, acc):
    """acc[m, :] = sum_k w_q[m, k] * cols[k, :]  - x_zero_point * sum_k w_q[m, k].

    Parallel over the M output rows (each thread owns its row of ``acc``).
    The innermost loop runs along a row of ``cols`` and of ``acc``, both
    contiguous: an int32 multiply-add the compiler turns into SIMD
    instructions. The zero point is taken out of the loop:
    sum w * (x - z) = sum w * x - z * sum w.
    """
    M, K = w_q.shape
    L = cols.shape[1]
    for m in prange(M):
        row = acc[m]
        wsum = np.int32(0)
        for k in range(K):
            w = np.int32(w_q[m, k])
            wsum += w
            if w == 0:
                continue
            c = cols[k]
            for j in range(L):
                row[j] += w * np.int32(c[j])
        corr = np.int32(x_zero_point) * wsum
        for j in range(L):
            row[j] -= corr


def qgemm_u8s8(w_q, cols, x_zero_point):
    """acc[m, l] = sum_k w_q[m, k] * (cols[k, l] - x_zero_point), exactly, in int32 (see numpy_ref)."""
    if w_q.dtype != np.int8 or cols.dtype != np.uint8:
        raise TypeError(f"qgemm_u8s8: expected int8 weights and uint8 columns, got {w_q.dtype} and {cols.dtype}")
    if w_q.ndim != 2 or cols.ndim != 2 or w_q.shape[1] != cols.shape[0]:
        raise ValueError(f"qgemm_u8s8: shapes {w_q.shape} and {cols.shape} do not multiply")
    acc = np.zeros((w_q.shape[0], cols.shape[1]), dtype=np.int32)
    _qgemm_kernel(np.ascontiguousarray(w_q), np.ascontiguousarray(cols), np.int32(x_zero_point), acc)
    return acc
