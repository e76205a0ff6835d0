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
are BLAS's, which is faster than any loop we would write — but this module
calls BLAS itself, from inside its compiled loops (``numba_blas.gemm``: NumPy's
own OpenBLAS where it can reach it, else ``np.dot``), one single-threaded call
per thread: ``matmul`` (the layers' products), and
the whole convolution + ReLU + max-pooling layer done a chunk of images at a
time, so that the chunk's arrays stay in the core's cache (their sections
below say why both pay).

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
``benchmarks/README.md``). They are the process's business, not a kernel's,
so ``minicnn/backend.py`` makes them when it chooses this backend:

* Threads. Every multi-threaded thing a training step does runs on Numba's
  threads: the loops here, and the matrix products too (BLAS is called from
  inside them, one thread per call; see ``matmul`` and the whole-layer
  kernels). A second thread pool — NumPy's OpenBLAS — would spin for ~0.1 s
  after each product and take a core from Numba's threads (measured: the
  next kernel ran 1.6-2x slower). Numba's OpenMP workers, in turn, should
  wait a little between two parallel loops rather than sleep:
  ``backend.spin_openmp_threads_briefly`` tells GNU OpenMP so before this
  module is imported.
* Memory. glibc hands big freed blocks back to the operating system, and the
  next step gets them back one page fault per 4 KiB page:
  ``backend.keep_freed_memory`` tells glibc to keep them (``mallopt``).
"""
from __future__ import annotations

import math
import os

import numpy as np
from numba import njit, prange

from .geometry import conv_output_shape, first_real_taps, pair
from .geometry import pad_planes as _pad_planes_numpy
from . import numba_blas
from .numba_blas import FAST as _FAST_BLAS
from .numba_blas import gemm

NAME = "numba"



_jit = njit(parallel=True, cache=True)
# sums whose additions may be reordered (vectorised): the last bits change, not the
# result's meaning; each sum stays one thread's work (the same bits on any thread count)
_reductions = njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})


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
# Padding: geometry.pad_planes's result, one thread per plane (np.pad is one
# thread and generic: ~1 ms of a ResNet-8 step per padded layer)
# -----------------------------------------------------------------------------
@_jit
def _pad_kernel(x, out, ph, pw, value):
    """out[n, c] = x[n, c] with ph rows / pw columns of ``value`` around it."""
    N, C, H, W = x.shape
    Hp, Wp = out.shape[2], out.shape[3]
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        source, target = x[n, c], out[n, c]
        for r in range(Hp):
            row = target[r]
            if r < ph or r >= ph + H:
                row[:] = value
                continue
            for q in range(pw):
                row[q] = value
                row[Wp - 1 - q] = value
            line = source[r - ph]
            for q in range(W):
                row[pw + q] = line[q]


def pad_planes(x, padding, value=0.0):
    """geometry.pad_planes (the same array), computed in parallel for C-contiguous float planes."""
    ph, pw = padding
    if (ph == 0 and pw == 0) or x.ndim != 4 or x.dtype not in (np.float32, np.float64):
        return _pad_planes_numpy(x, padding, value)
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    out = np.empty((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    _pad_kernel(x, out, ph, pw, x.dtype.type(value))
    return out


# -----------------------------------------------------------------------------
# im2col / col2im
# -----------------------------------------------------------------------------
_serial = njit(cache=True)      # a building block, run inside one thread of a parallel kernel


@_serial
def _im2col_row(xp, out, row, kh, kw, sh, sw, dh, dw):
    """One row of the columns: out[n, oy, ox] = xp[n, c, i*dh + oy*sh, j*dw + ox*sw],
    where row = (c*kh + i)*kw + j — what kernel tap (i, j) of channel c reads at
    every output position (out: (N, oh, ow), a view of that row)."""
    c, i, j = row // (kh * kw), row // kw % kh, row % kw
    N, oh, ow = out.shape
    if sw == 1 and dw == 1:
        # the usual case: each output row is a contiguous run of one input row, and a
        # copy between two unit-stride rows is one the compiler vectorises (2x faster)
        for n in range(N):
            plane = xp[n, c]
            for oy in range(oh):
                source, target = plane[oy * sh + i * dh, j:], out[n, oy]
                for ox in range(ow):
                    target[ox] = source[ox]
        return
    seen = xp[:, c, i * dh::sh, j * dw::sw]           # seen[n, oy, ox]: what tap (i, j) reads
    for n in range(N):
        for oy in range(oh):
            for ox in range(ow):
                out[n, oy, ox] = seen[n, oy, ox]


@_jit
def _im2col_kernel(xp, cols, kh, kw, sh, sw, dh, dw):
    """cols[(c, i, j), n, oy, ox] = xp[n, c, i*dh + oy*sh, j*dw + ox*sw]   (xp: padded x).

    Parallel over the C*kh*kw rows of ``cols``: each task fills one whole row,
    so no two threads write the same element. (Splitting finer, into (row,
    image) pieces, spends more time making views than copying: 1.4x slower.)
    """
    for row in prange(cols.shape[0]):
        _im2col_row(xp, cols[row], row, kh, kw, sh, sw, dh, dw)


def im2col(x, kh, kw, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """Unfold every receptive field of ``x`` (N, C, H, W) into a column: (C*kh*kw, N*oh*ow)."""
    x = _float_array(x, "im2col: x", 4)
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    dilation = pair(dilation, "dilation")
    N, C, H, W = x.shape
    oh, ow = conv_output_shape((H, W), (kh, kw), stride, padding, dilation)
    cols = np.empty((C * kh * kw, N, oh, ow), dtype=x.dtype)
    _im2col_kernel(pad_planes(x, padding), cols, kh, kw, *stride, *dilation)
    return cols.reshape(C * kh * kw, N * oh * ow)


@_serial
def _col2im_channel(cols, dxp, c, kh, kw, sh, sw, dh, dw):
    """Add channel c's kh*kw rows of ``cols`` (K, N, oh, ow) back into its image planes:
    dxp[n, c, i*dh + oy*sh, j*dw + ox*sw] += cols[(c*kh + i)*kw + j, n, oy, ox],
    the taps in the order (i, j), as in the reference."""
    N, oh, ow = cols.shape[1], cols.shape[2], cols.shape[3]
    for i in range(kh):
        for j in range(kw):
            grad = cols[(c * kh + i) * kw + j]
            if sw == 1 and dw == 1:                   # unit-stride rows, as in _im2col_row (1.4x)
                for n in range(N):
                    plane = dxp[n, c]
                    for oy in range(oh):
                        target, source = plane[oy * sh + i * dh, j:], grad[n, oy]
                        for ox in range(ow):
                            target[ox] += source[ox]
                continue
            touched = dxp[:, c, i * dh::sh, j * dw::sw]   # the pixels tap (i, j) read
            for n in range(N):
                for oy in range(oh):
                    for ox in range(ow):
                        touched[n, oy, ox] += grad[n, oy, ox]


@_jit
def _col2im_kernel(cols, dxp, kh, kw, sh, sw, dh, dw):
    """dxp[n, c, i*dh + oy*sh, j*dw + ox*sw] += cols[(c, i, j), n, oy, ox]   (dxp: padded dx).

    Parallel over the C channels: the rows of ``cols`` that add into channel c
    are its own kh*kw rows and no other channel's, so each thread adds only
    into its own channel — a race-free scatter-add. (With a single input
    channel this runs on one thread; the first layer rarely needs its dx.)
    """
    for c in prange(dxp.shape[1]):
        _col2im_channel(cols, dxp, c, kh, kw, sh, sw, dh, dw)


def col2im(cols, x_shape, kh, kw, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """The adjoint of :func:`im2col`: scatter-add columns back into an (N, C, H, W) image."""
    cols = _float_array(cols, "col2im: cols", 2)
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    dilation = pair(dilation, "dilation")
    N, C, H, W = (int(s) for s in x_shape)
    oh, ow = conv_output_shape((H, W), (kh, kw), stride, padding, dilation)
    if cols.shape != (C * kh * kw, N * oh * ow):
        raise ValueError(f"col2im: expected cols of shape {(C * kh * kw, N * oh * ow)} for "
                         f"x_shape {tuple(x_shape)}, got {cols.shape}")
    ph, pw = padding
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    _col2im_kernel(cols.reshape(C * kh * kw, N, oh, ow), dxp, kh, kw, *stride, *dilation)
    return dxp[:, :, ph:ph + H, pw:pw + W]


# -----------------------------------------------------------------------------
# Max pooling
# -----------------------------------------------------------------------------
@_jit
def _max_pool_forward_kernel(xp, y, argmax, first, kh, kw, sh, sw):
    """For each tap (i, j) in order: where it beats the best so far, it becomes
    the best (``y``) and the winner (``argmax``).

    Each window starts at -inf, won by its first real pixel (``first[oy, ox]``). ``>`` is strict, so on ties the first tap keeps the
    win, and -inf padding never wins. A NaN always wins (``v != v`` is true
    only for NaN), as in the reference and PyTorch: the window pools to NaN.
    Parallel over the N*C planes (every window lies inside one plane).
    """
    N, C, oh, ow = y.shape
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        image, best, winner = xp[n, c], y[n, c], argmax[n, c]
        for oy in range(oh):
            best_row, winner_row = best[oy], winner[oy]
            for ox in range(ow):
                b, w = -np.inf, first[oy, ox]
                for i in range(kh):                   # the taps in order (i, j), as above
                    row = image[oy * sh + i]
                    for j in range(kw):
                        v = row[ox * sw + j]
                        if v > b or v != v:
                            b, w = v, i * kw + j
                best_row[ox], winner_row[ox] = b, w


def max_pool2d_forward(x, kh, kw, stride, padding):
    """Returns ``(y, argmax)``: the window maxima and which tap ``i*kw + j`` won
    (int8 when kh*kw fits, int32 otherwise — as in the reference)."""
    x = _float_array(x, "max_pool2d: x", 4)
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    N, C, H, W = x.shape
    oh, ow = conv_output_shape((H, W), (kh, kw), stride, padding, (1, 1))
    y = np.empty((N, C, oh, ow), dtype=x.dtype)
    argmax = np.empty((N, C, oh, ow), dtype=np.int8 if kh * kw <= 127 else np.int32)
    first = first_real_taps(oh, ow, kw, stride, padding, argmax.dtype)          # as numpy_ref
    _max_pool_forward_kernel(pad_planes(x, padding, -np.inf), y, argmax, first, kh, kw, *stride)
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
    stride, (ph, pw) = pair(stride, "stride"), pair(padding, "padding")
    N, C, H, W = (int(s) for s in x_shape)
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=gy.dtype)
    _max_pool_backward_kernel(gy, argmax, dxp, kw, *stride)
    return dxp[:, :, ph:ph + H, pw:pw + W]


# -----------------------------------------------------------------------------
# Fused: a convolution's bias + ReLU + max pooling, in one pass
# -----------------------------------------------------------------------------
@_serial
def _bias_relu_max_pool_plane(image, b, pooled, winner, kh, kw, sh, sw, minus_infinity):
    """One (H, W) plane of the conv output: pooled[oy, ox] = relu(max over the window of
    image + b); winner = the winning tap i*kw + j, or -1 where relu clipped the window
    (see numpy_ref). ``best`` starts at -inf and ``>`` is strict: the first maximum wins;
    a NaN always wins (``v != v``) and is not clipped (``nan <= 0`` is false), as in numpy_ref.

    ``minus_infinity`` comes in as a scalar of the image's dtype: a float64 ``-np.inf``
    here would make every comparison a float64 one (2.5x slower in float32)."""
    oh, ow = pooled.shape
    for oy in range(oh):
        for ox in range(ow):
            best, tap = minus_infinity, 0
            for i in range(kh):
                row = image[oy * sh + i]
                for j in range(kw):
                    v = row[ox * sw + j] + b
                    if v > best or v != v:
                        best, tap = v, i * kw + j
            if best <= 0:                             # relu(max) = 0: no gradient here
                pooled[oy, ox], winner[oy, ox] = 0, -1
            else:                                     # positive, or NaN (relu(nan) = nan)
                pooled[oy, ox], winner[oy, ox] = best, tap


@_serial
def _bias_relu_max_pool_plane_2x2(image, b, pooled, winner, minus_infinity):
    """The same for 2x2 windows with stride 2, the four taps written out.

    Nothing else changes — the taps are compared in the order 0, 1, 2, 3 with
    a strict ``>``, a NaN always winning (``v != v``) — but with the tap loops unrolled the compiler keeps
    ``best`` and ``tap`` in registers and turns the comparisons into selects
    instead of branches: 5x faster than the general loop on the reference
    CNN's (32, N, 26, 26) conv output.
    """
    oh, ow = pooled.shape
    for oy in range(oh):
        top, bottom = image[2 * oy], image[2 * oy + 1]     # the window's two rows
        pooled_row, winner_row = pooled[oy], winner[oy]
        for ox in range(ow):
            best, tap = minus_infinity, 0
            v = top[2 * ox] + b
            if v > best or v != v:
                best, tap = v, 0
            v = top[2 * ox + 1] + b
            if v > best or v != v:
                best, tap = v, 1
            v = bottom[2 * ox] + b
            if v > best or v != v:
                best, tap = v, 2
            v = bottom[2 * ox + 1] + b
            if v > best or v != v:
                best, tap = v, 3
            clipped = best <= 0                        # false for NaN: relu(nan) = nan
            pooled_row[ox] = 0 if clipped else best
            winner_row[ox] = -1 if clipped else tap


@_serial
def _pool_one(image, b, pooled, winner, kh, kw, sh, sw, minus_infinity):
    """The fused forward of one plane, by the fast path when the window is 2x2 / stride 2."""
    if kh == 2 and kw == 2 and sh == 2 and sw == 2:
        _bias_relu_max_pool_plane_2x2(image, b, pooled, winner, minus_infinity)
    else:
        _bias_relu_max_pool_plane(image, b, pooled, winner, kh, kw, sh, sw, minus_infinity)


@_jit
def _bias_relu_max_pool_forward_kernel(y, bias, out, argmax, kh, kw, sh, sw, minus_infinity):
    """out[n, c] = relu(max pool(y[c, n] + bias[c])), plane by plane.

    One pass: every element of the (C, N, H, W) conv output is read once, and
    only the pooled result is written, already in (N, C, oh, ow) order.
    Parallel over the C*N planes: each window lies inside one plane, and each
    plane writes its own output plane.
    """
    C, N = y.shape[0], y.shape[1]
    for plane in prange(C * N):
        c, n = plane // N, plane % N
        _pool_one(y[c, n], bias[c], out[n, c], argmax[n, c], kh, kw, sh, sw, minus_infinity)


def bias_relu_max_pool2d_forward(y, bias, kh, kw, stride):
    """``(out, argmax)`` = max_pool2d(relu(y + bias)) for y in (C, N, H, W) order (see numpy_ref)."""
    y = _float_array(y, "bias_relu_max_pool2d: y", 4)
    stride = pair(stride, "stride")
    C, N, H, W = y.shape
    oh, ow = conv_output_shape((H, W), (kh, kw), stride, (0, 0), (1, 1))
    bias = _bias_or_zeros(bias, C, y.dtype)
    out = np.empty((N, C, oh, ow), dtype=y.dtype)
    argmax = np.empty((N, C, oh, ow), dtype=_tap_dtype(kh, kw))
    _bias_relu_max_pool_forward_kernel(y, bias, out, argmax, kh, kw, *stride, y.dtype.type(-np.inf))
    return out, argmax


def _bias_or_zeros(bias, C, dtype):
    """The bias in the data's dtype; no bias: zeros (x + 0.0 is x, up to the sign of a
    zero that relu clips anyway)."""
    if bias is None:
        return np.zeros(C, dtype=dtype)
    return _float_array(bias, "bias", 1).astype(dtype, copy=False)


def _tap_dtype(kh, kw):
    """argmax's dtype, as in the reference: int8 when every tap number fits."""
    return np.int8 if kh * kw <= 127 else np.int32


@_serial
def _unpool_plane(grad, winner, image, kw, sh, sw):
    """The fused backward of one plane: image = 0, then image[the pixel window (oy, ox)'s
    winner read] += grad[oy, ox], unless relu clipped the window (winner -1)."""
    H, W = image.shape
    oh, ow = grad.shape
    for r in range(H):
        for q in range(W):
            image[r, q] = 0
    for oy in range(oh):
        for ox in range(ow):
            t = winner[oy, ox]
            if t >= 0:
                image[oy * sh + t // kw, ox * sw + t % kw] += grad[oy, ox]


@_serial
def _unpool_plane_2x2(grad, winner, image):
    """The same for 2x2 windows with stride 2: the windows tile the plane, so each
    element of the plane is written exactly once — grad where its tap won, else 0 —
    and no separate zeroing pass is needed (only the odd last row and column, which
    no window covers, are zeroed). 2.5x faster than the general loop.
    """
    H, W = image.shape
    oh, ow = grad.shape
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


@_serial
def _unpool_one(grad, winner, image, kh, kw, sh, sw):
    """The fused backward of one plane, by the fast path when the window is 2x2 / stride 2."""
    if kh == 2 and kw == 2 and sh == 2 and sw == 2:
        _unpool_plane_2x2(grad, winner, image)
    else:
        _unpool_plane(grad, winner, image, kw, sh, sw)


@_jit
def _bias_relu_max_pool_backward_kernel(gout, argmax, dy, kh, kw, sh, sw):
    """dy[c, n] = the plane's gradient routed to each window's winner (0 elsewhere).

    Each (c, n) plane of dy is written by its own windows only, so the planes
    are independent: parallel over C*N.
    """
    C, N = dy.shape[0], dy.shape[1]
    for plane in prange(C * N):
        c, n = plane // N, plane % N
        _unpool_one(gout[n, c], argmax[n, c], dy[c, n], kh, kw, sh, sw)


def bias_relu_max_pool2d_backward(gout, argmax, y_shape, kh, kw, stride):
    """The gradient (C, N, H, W) with respect to y of :func:`bias_relu_max_pool2d_forward`."""
    gout = _float_array(gout, "bias_relu_max_pool2d_backward: gout", 4)
    argmax = np.ascontiguousarray(argmax)
    if argmax.shape != gout.shape:
        raise ValueError(f"bias_relu_max_pool2d_backward: argmax {argmax.shape} and gout "
                         f"{gout.shape} differ")
    stride = pair(stride, "stride")
    dy = np.empty(tuple(int(s) for s in y_shape), dtype=gout.dtype)
    _bias_relu_max_pool_backward_kernel(gout, argmax, dy, kh, kw, *stride)
    return dy


# -----------------------------------------------------------------------------
# The whole layer — convolution, bias, ReLU, max pooling — a chunk of images at a time
# -----------------------------------------------------------------------------
# The fused kernels above still leave the layer as four passes over memory:
# im2col writes the columns of the whole batch, the matrix product reads them
# and writes the conv output y, the pooling kernel reads y; in the backward,
# dY, the column gradient and col2im likewise. At batch 128 those arrays are
# 11-18 MB each — far bigger than a core's cache — and between the passes the
# BLAS library's threads and Numba's take turns on the cores.
#
# The kernels below do the same arithmetic a few images at a time, inside one
# parallel loop over chunks of images: each thread makes a chunk's columns,
# multiplies them (a single-threaded BLAS call from inside the thread),
# pools the result and moves on, and the chunk's arrays never leave its cache.
# The backward recomputes the chunk's columns from x instead of keeping the
# whole batch's (so the layer keeps x: 9x less memory than the columns of a
# 3x3 convolution), and each chunk writes its own partial dW and db, summed in
# chunk order at the end — the same result whatever the number of threads.
# The numbers equal the reference's up to rounding: the same dot products, but
# BLAS may round one differently in a product of another width, and dW and db
# are summed in another order (on integer-valued data, where every sum is exact,
# they are equal bit for bit — tests/test_fused.py checks both).
# The layer that calls these is functional/fused.py's ConvReLUMaxPool2dFn; its
# readable version is the composition im2col -> W @ cols -> bias_relu_max_pool2d.
_CHUNK_BYTES = 1 << 20     # aim for ~1 MiB of working arrays per chunk: they stay in a core's L2
_MIN_POSITIONS = 1568      # but give a chunked conv's products at least this many columns


def chunk_count(N, floats_per_image, itemsize, per_chunk=None, positions=0):
    """How many chunks the N images are cut into: enough that each holds at most
    ``_CHUNK_BYTES`` of working arrays, rounded up to a multiple of 8 (so that 1, 2, 4 or
    8 threads all get the same number of chunks), and never more than N. The chunks'
    sizes then differ by at most one image (chunk k holds images k*N//chunks to
    (k+1)*N//chunks - 1). It depends on the shapes only, never on the thread count: the
    partial sums of dW and db are then the same, and so is the result, on any number of
    threads. ``per_chunk`` (tests, benchmarks): ceil(N / per_chunk) chunks instead.

    ``positions`` (the chunked convs: output pixels per image): a chunk then holds at
    least ``_MIN_POSITIONS`` output pixels, even past the cache budget, and the count is
    rounded to a multiple of 4 (1, 2 or 4 threads balanced). On a small image the
    products are otherwise too narrow for BLAS: the 64->64 3x3 conv of a 7x7 map (49
    pixels an image) at batch 64, backward, measured 2.40 ms with 4 images a chunk (the
    cache budget), 2.15 ms with 16; the 32->32 conv of 14x14 maps 2.76 ms with 2, 2.51
    with 8; the 28x28 maps were cut finely enough already."""
    if per_chunk is not None:
        return int(max(1, min(N, -(-N // max(1, int(per_chunk))))))
    fit = max(1, _CHUNK_BYTES // max(1, floats_per_image * itemsize))   # images per chunk
    multiple = 8
    if positions > 0:
        fit, multiple = max(fit, -(-_MIN_POSITIONS // positions)), 4
    chunks = -(-N // fit)
    return int(max(1, min(N, -(-chunks // multiple) * multiple)))


# dW of a chunk, (Cout, K) = dy (Cout, L) @ cols^T (L, K), is a product whose inner dimension L
# is the long one. OpenBLAS packs both operands; when K is much larger than Cout (a 3x3 conv:
# K = 9*C) it runs 1.4-2.1x faster asked for the transpose, dW^T (K, Cout) = cols @ dy^T
# (measured on one core for every conv of ResNet-8/20 and MobileNet: 16->16 3x3, 784
# positions a chunk: 52 vs 25 us); with K <= Cout (1x1 convs that widen) the first way is
# faster. The caller picks by the shapes alone (``_weight_parts``), so the bits of dW
# never depend on the thread count.
@_serial
def _weight_gradient(dy2, cols2, part, fast):
    """part = dy2 @ cols2^T (Cout, K), or its transpose cols2 @ dy2^T (K, Cout) when part
    was allocated that way by :func:`_weight_parts`."""
    if part.shape[0] == dy2.shape[0] and part.shape[1] == cols2.shape[0]:
        gemm(False, True, dy2, cols2, part, fast)
    else:
        gemm(False, True, cols2, dy2, part, fast)


def _weight_parts(chunks, Cout, K, dtype):
    """One dW partial sum per chunk: (chunks, K, Cout) — transposed — when K > Cout."""
    return np.empty((chunks, K, Cout) if K > Cout else (chunks, Cout, K), dtype=dtype)


def _weight_total(parts, w_shape):
    """The chunks' partial sums added in chunk order (the same bits on any number of
    threads), as an array of the weight's shape."""
    total = parts.sum(axis=0)
    if total.shape[0] != w_shape[0]:
        total = total.T
    return np.ascontiguousarray(total).reshape(w_shape)


@_jit
def _conv_relu_pool_forward_kernel(xp, w2, bias, out, argmax, kh, kw, sh, sw, dh, dw, oh, ow,
                                   pkh, pkw, psh, psw, chunks, minus_infinity, fast):
    """out[n, co] = relu(max pool(conv(x, w)[n, co] + bias[co])), per chunk of images.

    Shapes: xp (N, C, Hp, Wp) the padded input, w2 (Cout, K = C*kh*kw), out and
    argmax (N, Cout, ph, pw). Per chunk of m images (L = m*oh*ow)::

        cols = im2col(xp[chunk])        # (K, m, oh, ow)
        y    = w2 @ cols                # (Cout, m, oh, ow), one BLAS call
        out[chunk], argmax[chunk] = the fused pooling of each (co, n) plane of y

    Parallel over the chunks: each writes only its own images' outputs.
    """
    N = xp.shape[0]
    Cout, K = w2.shape
    for chunk in prange(chunks):
        n0 = chunk * N // chunks
        m = (chunk + 1) * N // chunks - n0
        images = xp[n0:n0 + m]
        cols = np.empty((K, m, oh, ow), dtype=xp.dtype)
        for row in range(K):
            _im2col_row(images, cols[row], row, kh, kw, sh, sw, dh, dw)
        y = np.empty((Cout, m, oh, ow), dtype=xp.dtype)
        gemm(False, False, w2, cols.reshape((K, m * oh * ow)), y.reshape((Cout, m * oh * ow)), fast)
        for co in range(Cout):
            for n in range(m):
                _pool_one(y[co, n], bias[co], out[n0 + n, co], argmax[n0 + n, co],
                          pkh, pkw, psh, psw, minus_infinity)


@_jit
def _conv_relu_pool_backward_kernel(gout, argmax, xp, w2, dxp, dw_parts, db_parts, need_dx,
                                    kh, kw, sh, sw, dh, dw, oh, ow, pkh, pkw, psh, psw, chunks, fast):
    """The adjoint of the forward kernel, per chunk of images (L = m*oh*ow)::

        dy   = the pooled gradient routed to each window's winner   (Cout, m, oh, ow)
        db_parts[chunk] = dy @ ones                                  (Cout,)
        cols = im2col(xp[chunk])                                     (K, m, oh, ow), recomputed
        dw_parts[chunk] = dy @ cols^T (Cout, K), or its transpose    (_weight_gradient)
        dxp[chunk] = col2im(w2^T @ dy)                               if need_dx

    Parallel over the chunks: each writes its own partial sums and its own
    images' input gradient. The caller sums the partials in chunk order.
    """
    N, C = xp.shape[0], xp.shape[1]
    Cout, K = w2.shape
    for chunk in prange(chunks):
        n0 = chunk * N // chunks
        m = (chunk + 1) * N // chunks - n0
        L = m * oh * ow
        dy = np.empty((Cout, m, oh, ow), dtype=xp.dtype)
        for co in range(Cout):
            for n in range(m):
                _unpool_one(gout[n0 + n, co], argmax[n0 + n, co], dy[co, n], pkh, pkw, psh, psw)
        dy2 = dy.reshape((Cout, L))
        np.dot(dy2, np.ones(L, dtype=xp.dtype), db_parts[chunk])
        images = xp[n0:n0 + m]
        cols = np.empty((K, m, oh, ow), dtype=xp.dtype)
        for row in range(K):
            _im2col_row(images, cols[row], row, kh, kw, sh, sw, dh, dw)
        _weight_gradient(dy2, cols.reshape((K, L)), dw_parts[chunk], fast)
        if need_dx:
            dcols = np.empty((K, m, oh, ow), dtype=xp.dtype)
            gemm(True, False, w2, dy2, dcols.reshape((K, L)), fast)
            dimages = dxp[n0:n0 + m]
            dimages[:] = 0
            for c in range(C):
                _col2im_channel(dcols, dimages, c, kh, kw, sh, sw, dh, dw)


@_serial
def _padded_chunk(x, n0, m, ph, pw):
    """Images n0 .. n0+m-1 of x with ph rows / pw columns of zeros around each plane: a
    chunk-sized copy made inside the kernel (it stays in cache), not a padded copy of the
    whole batch. Without padding, the chunk itself (a view, no copy)."""
    if ph == 0 and pw == 0:
        return x[n0:n0 + m]
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    out = np.zeros((m, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    for n in range(m):
        for c in range(C):
            for r in range(H):
                source, target = x[n0 + n, c, r], out[n, c, ph + r]
                for q in range(W):
                    target[pw + q] = source[q]
    return out


@_jit
def _conv_forward_kernel(x, w2, bias, y, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, chunks, fast):
    """y[n, co] = conv(x, w)[n, co] + bias[co], per chunk of m images: the chunk padded in
    cache, its im2col columns (K, m, oh, ow), one BLAS product with w2 (Cout, K), and the
    product (Cout, m, oh, ow) copied out to y's (n, co) planes with the bias."""
    N = x.shape[0]
    Cout, K = w2.shape
    for chunk in prange(chunks):
        n0 = chunk * N // chunks
        m = (chunk + 1) * N // chunks - n0
        images = _padded_chunk(x, n0, m, ph, pw)
        cols = np.empty((K, m, oh, ow), dtype=x.dtype)
        for row in range(K):
            _im2col_row(images, cols[row], row, kh, kw, sh, sw, dh, dw)
        yc = np.empty((Cout, m, oh, ow), dtype=x.dtype)
        gemm(False, False, w2, cols.reshape((K, m * oh * ow)), yc.reshape((Cout, m * oh * ow)), fast)
        for n in range(m):
            for co in range(Cout):
                y[n0 + n, co] = yc[co, n] + bias[co]


@_jit
def _conv_backward_kernel(gy, x, w2, dx, dw_parts, db_parts, need_dx, kh, kw, sh, sw, ph, pw,
                          dh, dw, oh, ow, chunks, fast):
    """The adjoint, per chunk (the fused backward above without the unpooling)::

        dy = gy[chunk] in (Cout, m, oh, ow) order;  db_parts[chunk] = dy @ ones
        dw_parts[chunk] = dy @ im2col(x[chunk] padded)^T   (or its transpose: _weight_gradient)
        dx[chunk] = the interior of col2im(w2^T @ dy)   (added up in a padded chunk in cache)
    """
    N, C, H, W = x.shape
    Cout, K = w2.shape
    for chunk in prange(chunks):
        n0 = chunk * N // chunks
        m = (chunk + 1) * N // chunks - n0
        L = m * oh * ow
        dy = np.empty((Cout, m, oh, ow), dtype=x.dtype)
        for co in range(Cout):
            for n in range(m):
                dy[co, n] = gy[n0 + n, co]
        dy2 = dy.reshape((Cout, L))
        np.dot(dy2, np.ones(L, dtype=x.dtype), db_parts[chunk])
        images = _padded_chunk(x, n0, m, ph, pw)
        cols = np.empty((K, m, oh, ow), dtype=x.dtype)
        for row in range(K):
            _im2col_row(images, cols[row], row, kh, kw, sh, sw, dh, dw)
        _weight_gradient(dy2, cols.reshape((K, L)), dw_parts[chunk], fast)
        if need_dx:
            dcols = np.empty((K, m, oh, ow), dtype=x.dtype)
            gemm(True, False, w2, dy2, dcols.reshape((K, L)), fast)
            dimages = np.zeros((m, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
            for c in range(C):
                _col2im_channel(dcols, dimages, c, kh, kw, sh, sw, dh, dw)
            for n in range(m):
                for c in range(C):
                    for r in range(H):
                        source, target = dimages[n, c, ph + r], dx[n0 + n, c, r]
                        for q in range(W):
                            target[q] = source[pw + q]


class _OneBlasThread:
    """While active, the BLAS library that Numba calls runs each call on one thread.

    The kernels here call BLAS from inside Numba's threads (``np.dot`` in compiled
    code calls SciPy's BLAS); a BLAS that started threads of its own there would
    put 4 threads on 2 cores. ``threadpoolctl`` finds the BLAS libraries loaded in
    the process and sets their thread counts. Switching a library's count costs
    ~0.1 ms (measured: it doubled the time of the fully connected layers' products),
    so the copy that only SciPy uses (pip's wheels bundle one in ``scipy.libs``,
    and NumPy has its own in ``numpy.libs``) is set to one thread once and left so
    — SciPy's own linear algebra then runs on one thread in this process; a library
    that NumPy may share (conda, a system BLAS) is set to one thread on entry and
    given its count back on exit, so NumPy's ``@`` keeps its threads.
    """

    _shared = None                   # the BLAS libraries to switch on every entry

    def __enter__(self):
        if _OneBlasThread._shared is None:
            _OneBlasThread._shared = _blas_libraries_to_switch()
        self.before = [lib.get_num_threads() for lib in self._shared]
        for lib in self._shared:
            lib.set_num_threads(1)
        self.numpy_before = numba_blas.one_thread()      # NumPy's own, when the kernels call it
        return self

    def __exit__(self, *exc):
        numba_blas.restore_threads(self.numpy_before)
        for lib, n in zip(self._shared, self.before):
            lib.set_num_threads(n)


def _blas_libraries_to_switch():
    """Set SciPy's private BLAS to one thread for good; return the BLAS libraries that
    SciPy may share with NumPy (to be switched on every entry)."""
    import numpy
    import scipy
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS Numba's np.dot calls: load it first)
    from threadpoolctl import ThreadpoolController

    def bundled_with(module):         # pip's wheels: <site-packages>/<name>.libs/
        home = os.path.dirname(os.path.dirname(os.path.abspath(module.__file__)))
        return os.path.join(home, module.__name__ + ".libs")
    shared = []
    for lib in ThreadpoolController().lib_controllers:
        if lib.user_api != "blas":
            continue
        folder = os.path.dirname(os.path.abspath(lib.filepath))
        if folder == bundled_with(scipy):
            lib.set_num_threads(1)            # SciPy's own copy: only SciPy and Numba call it
        elif folder != bundled_with(numpy):   # NumPy's own copy: Numba never calls it
            shared.append(lib)
    return shared


def _conv_pool_geometry(x, w, stride, padding, dilation, pool_kh, pool_kw, pool_stride):
    """The options as pairs, and the sizes: (N, C, Cout, kh, kw, oh, ow, ph, pw)."""
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    dilation, pool_stride = pair(dilation, "dilation"), pair(pool_stride, "pool_stride")
    pool_kernel = (int(pool_kh), int(pool_kw))
    N, C, H, W = x.shape
    Cout, Cw, kh, kw = w.shape
    if Cw != C:
        raise ValueError(f"conv2d_bias_relu_max_pool2d: x has {C} channels but the weight "
                         f"{tuple(w.shape)} expects {Cw} (this kernel has no groups)")
    oh, ow = conv_output_shape((H, W), (kh, kw), stride, padding, dilation)
    ph, pw = conv_output_shape((oh, ow), pool_kernel, pool_stride)
    return stride, padding, dilation, pool_kernel, pool_stride, (N, C, Cout, kh, kw, oh, ow, ph, pw)


def conv2d_bias_relu_max_pool2d_forward(x, w, bias, stride, padding, dilation, pool_kh, pool_kw,
                                        pool_stride, per_chunk=None):
    """``(out, argmax)`` = max_pool2d(relu(conv2d(x, w) + bias)), a chunk of images at a time.

    x (N, C, H, W), w (Cout, C, kh, kw), bias (Cout,) or None; out and argmax
    (N, Cout, ph, pw) exactly as :func:`bias_relu_max_pool2d_forward` returns
    them for the convolution's output. No groups. ``per_chunk``: about that many
    images per chunk (default: as many as fit in cache, see :func:`chunk_count`).
    """
    x, w = _float_array(x, "conv2d_bias_relu_max_pool2d: x", 4), _float_array(w, "weight", 4)
    stride, padding, dilation, (pkh, pkw), pstride, dims = _conv_pool_geometry(
        x, w, stride, padding, dilation, pool_kh, pool_kw, pool_stride)
    N, C, Cout, kh, kw, oh, ow, ph, pw = dims
    w2 = w.astype(x.dtype, copy=False).reshape(Cout, C * kh * kw)
    chunks = chunk_count(N, (C * kh * kw + Cout) * oh * ow, x.itemsize, per_chunk)
    out = np.empty((N, Cout, ph, pw), dtype=x.dtype)
    argmax = np.empty((N, Cout, ph, pw), dtype=_tap_dtype(pkh, pkw))
    with _OneBlasThread():
        _conv_relu_pool_forward_kernel(pad_planes(x, padding), w2, _bias_or_zeros(bias, Cout, x.dtype),
                                       out, argmax, kh, kw, *stride, *dilation, oh, ow,
                                       pkh, pkw, *pstride, chunks, x.dtype.type(-np.inf), _FAST_BLAS)
    return out, argmax


def conv2d_bias_relu_max_pool2d_backward(gout, argmax, x, w, stride, padding, dilation,
                                         pool_kh, pool_kw, pool_stride, need_dx=True, per_chunk=None):
    """``(dx or None, dw, db)`` of :func:`conv2d_bias_relu_max_pool2d_forward`, given the
    pooled gradient ``gout`` and the forward's ``argmax`` (both (N, Cout, ph, pw))."""
    gout = _float_array(gout, "conv2d_bias_relu_max_pool2d_backward: gout", 4)
    x, w = _float_array(x, "x", 4), _float_array(w, "weight", 4)
    argmax = np.ascontiguousarray(argmax)
    stride, padding, dilation, (pkh, pkw), pstride, dims = _conv_pool_geometry(
        x, w, stride, padding, dilation, pool_kh, pool_kw, pool_stride)
    N, C, Cout, kh, kw, oh, ow, ph, pw = dims
    if gout.shape != (N, Cout, ph, pw) or argmax.shape != gout.shape:
        raise ValueError(f"conv2d_bias_relu_max_pool2d_backward: expected gout and argmax of shape "
                         f"{(N, Cout, ph, pw)}, got {gout.shape} and {argmax.shape}")
    K = C * kh * kw
    w2 = w.astype(x.dtype, copy=False).reshape(Cout, K)
    chunks = chunk_count(N, (2 * K + Cout) * oh * ow, x.itemsize, per_chunk)
    dw_parts = _weight_parts(chunks, Cout, K, x.dtype)
    db_parts = np.empty((chunks, Cout), dtype=x.dtype)
    xp = pad_planes(x, padding)
    dxp = np.empty(xp.shape if need_dx else (1, 1, 1, 1), dtype=x.dtype)
    with _OneBlasThread():
        _conv_relu_pool_backward_kernel(gout.astype(x.dtype, copy=False), argmax, xp, w2, dxp,
                                        dw_parts, db_parts, bool(need_dx), kh, kw, *stride,
                                        *dilation, oh, ow, pkh, pkw, *pstride, chunks, _FAST_BLAS)
    dw = _weight_total(dw_parts, w.shape)
    db = db_parts.sum(axis=0)
    dx = None
    if need_dx:
        (ph_, pw_), (H, W) = padding, x.shape[2:]
        dx = dxp[:, :, ph_:ph_ + H, pw_:pw_ + W]
    return dx, dw, db


# One input channel (a network's first layer on grey images), stride 1: im2col would copy
# every pixel kh*kw times for a product of only Cout rows. Directly instead, as the
# depthwise kernels do: each output plane is a sum of the padded input plane's taps, laid
# out with the padded row length Wp so that each tap is one long multiply-add.
@_jit
def _single_channel_forward_kernel(xp, w, bias, y, dh, dw):
    """y[n, co] = bias[co] + sum over taps (i, j) of w[co, 0, i, j] * x_padded[n, 0] shifted by
    (i*dh, j*dw); one task per image."""
    N, Cout, oh, ow = y.shape
    kh, kw = w.shape[2], w.shape[3]
    Wp = xp.shape[3]
    L = (oh - 1) * Wp + ow
    for n in prange(N):
        plane = xp[n, 0].reshape(-1)
        wide = np.empty(L, dtype=y.dtype)
        for co in range(Cout):
            wide[:] = 0
            for i in range(kh):
                for j in range(kw):
                    wij, offset = w[co, 0, i, j], i * dh * Wp + j * dw
                    tap = plane[offset:offset + L]
                    for k in range(L):
                        wide[k] += wij * tap[k]
            out, b = y[n, co], bias[co]
            for oy in range(oh):
                row = wide[oy * Wp:oy * Wp + ow]
                target = out[oy]
                for ox in range(ow):
                    target[ox] = row[ox] + b


@_reductions
def _single_channel_backward_kernel(gy, xp, w, dw_out, db_out, dxp, need_dx, dh, dw):
    """dw[co, 0, i, j] = sum over n of gy[n, co]'s wide rows . tap (i, j) of x_padded[n, 0]
    (summed as in _sum_tap_products, one thread per output channel), db[co] = sum of gy[:, co]; then, if
    asked, dx_padded[n, 0] = sum over co and taps of w * gy's wide rows, one thread per image."""
    N, Cout, oh, ow = gy.shape
    kh, kw = w.shape[2], w.shape[3]
    Wp = xp.shape[3]
    L = (oh - 1) * Wp + ow
    for co in prange(Cout):
        wide = np.zeros(L, dtype=gy.dtype)
        products = np.zeros((kh * kw, L), dtype=gy.dtype)     # see _sum_tap_products
        bias_total = 0.0
        for n in range(N):
            for oy in range(oh):
                row = gy[n, co, oy]
                wide[oy * Wp:oy * Wp + ow] = row
                for ox in range(ow):
                    bias_total += row[ox]
            plane = xp[n, 0].reshape(-1)
            for i in range(kh):
                for j in range(kw):
                    offset = i * dh * Wp + j * dw
                    tap, total = plane[offset:offset + L], products[i * kw + j]
                    for k in range(L):
                        total[k] += wide[k] * tap[k]
        _sum_tap_products(products, dw_out[co, 0])
        db_out[co] = bias_total
    if need_dx:
        for n in prange(N):
            wide = np.zeros(L, dtype=gy.dtype)
            plane = dxp[n, 0].reshape(-1)
            plane[:] = 0
            for co in range(Cout):
                for oy in range(oh):
                    wide[oy * Wp:oy * Wp + ow] = gy[n, co, oy]
                for i in range(kh):
                    for j in range(kw):
                        wij, offset = w[co, 0, i, j], i * dh * Wp + j * dw
                        target = plane[offset:offset + L]
                        for k in range(L):
                            target[k] += wij * wide[k]


# A 1x1 convolution (MobileNet's pointwise layers, a ResNet's projection shortcuts) is a
# matrix product per image: y[n] (Cout, H*W) = w2 (Cout, C) @ x[n] (C, H*W), NCHW as it
# lies — im2col would only copy x into the same numbers (and the product back out). So
# one BLAS call per image, straight into y; 3-4x faster than the chunked path forward
# and 1.5-2x backward on MobileNet's layers (16->32 on 28x28 ... 128->128 on 7x7). A
# stride s first keeps every s-th pixel (the wrapper), which is all the conv reads.
@_jit
def _pointwise_forward_kernel(x, w2, bias, y, fast):
    """y[n] = w2 @ x[n] + bias (x (N, C, H, W), y (N, Cout, H, W)); one task per image."""
    N, C, H, W = x.shape
    Cout, P = w2.shape[0], H * W
    for n in prange(N):
        out = y[n].reshape((Cout, P))
        gemm(False, False, w2, x[n].reshape((C, P)), out, fast)
        for co in range(Cout):
            b, row = bias[co], out[co]
            for p in range(P):
                row[p] += b


@_jit
def _pointwise_backward_kernel(gy, x, w2, dx, dw_parts, db_parts, need_dx, chunks, fast):
    """Per chunk of images, in image order: dw_parts[chunk] = the sum of dy[n] @ x[n]^T (or
    its transpose, see _weight_gradient), db_parts[chunk] = the sum of dy[n] @ ones, and
    dx[n] = w2^T @ dy[n] (dy[n] = gy[n] as (Cout, H*W))."""
    N, C, H, W = x.shape
    Cout, P = w2.shape[0], H * W
    ones = np.ones(P, dtype=x.dtype)
    for chunk in prange(chunks):
        n0 = chunk * N // chunks
        m = (chunk + 1) * N // chunks - n0
        total, db = dw_parts[chunk], db_parts[chunk]
        total[:] = 0
        db[:] = 0
        part, sums = np.empty_like(total), np.empty(Cout, dtype=x.dtype)
        for n in range(n0, n0 + m):
            dy, xn = gy[n].reshape((Cout, P)), x[n].reshape((C, P))
            _weight_gradient(dy, xn, part, fast)
            total += part
            np.dot(dy, ones, sums)
            db += sums
            if need_dx:
                gemm(True, False, w2, dy, dx[n].reshape((C, P)), fast)


def _conv_geometry(x, w, stride, padding, dilation, op):
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    N, C, H, W = x.shape
    Cout, Cw, kh, kw = w.shape
    if Cw != C:
        raise ValueError(f"{op}: x has {C} channels but the weight {tuple(w.shape)} expects {Cw} "
                         "(this kernel has no groups)")
    oh, ow = conv_output_shape((H, W), (kh, kw), stride, padding, dilation)
    return stride, padding, dilation, (N, C, Cout, kh, kw, oh, ow)


def _pointwise(kh, kw, padding, per_chunk):
    """Whether the conv is a 1x1 one without padding, which the pointwise kernels take (the
    tests' ``per_chunk`` asks for the chunked path)."""
    return kh == 1 and kw == 1 and padding == (0, 0) and per_chunk is None


def _every_sth_pixel(x, stride):
    """What a 1x1 conv of this stride reads: x[:, :, ::sh, ::sw], contiguous (x itself at 1)."""
    if stride == (1, 1):
        return x
    return np.ascontiguousarray(x[:, :, ::stride[0], ::stride[1]])


def conv2d_forward(x, w, bias, stride, padding, dilation, per_chunk=None):
    """``y = conv2d(x, w) + bias`` (N, Cout, oh, ow), a chunk of images at a time (no groups):
    numpy_ref.conv2d_forward's numbers, each chunk's columns kept in cache."""
    x, w = _float_array(x, "conv2d_forward: x", 4), _float_array(w, "weight", 4)
    stride, padding, dilation, (N, C, Cout, kh, kw, oh, ow) = _conv_geometry(
        x, w, stride, padding, dilation, "conv2d_forward")
    if C == 1 and stride == (1, 1) and per_chunk is None:          # a first layer: directly
        y = np.empty((N, Cout, oh, ow), dtype=x.dtype)
        _single_channel_forward_kernel(pad_planes(x, padding), np.ascontiguousarray(w, dtype=x.dtype),
                                       _bias_or_zeros(bias, Cout, x.dtype), y, *dilation)
        return y
    if _pointwise(kh, kw, padding, per_chunk):                     # 1x1: a product per image
        y = np.empty((N, Cout, oh, ow), dtype=x.dtype)
        with _OneBlasThread():
            _pointwise_forward_kernel(_every_sth_pixel(x, stride), w.astype(x.dtype, copy=False).reshape(Cout, C),
                                      _bias_or_zeros(bias, Cout, x.dtype), y, _FAST_BLAS)
        return y
    w2 = w.astype(x.dtype, copy=False).reshape(Cout, C * kh * kw)
    chunks = chunk_count(N, (C * kh * kw + Cout) * oh * ow, x.itemsize, per_chunk, oh * ow)
    y = np.empty((N, Cout, oh, ow), dtype=x.dtype)
    with _OneBlasThread():
        _conv_forward_kernel(x, w2, _bias_or_zeros(bias, Cout, x.dtype), y,
                             kh, kw, *stride, *padding, *dilation, oh, ow, chunks, _FAST_BLAS)
    return y


def conv2d_backward(gy, x, w, stride, padding, dilation, need_dx=True, per_chunk=None):
    """``(dx or None, dw, db)`` of :func:`conv2d_forward`, a chunk of images at a time; dW and
    db summed over the chunks in chunk order (the same bits on any number of threads)."""
    gy = _float_array(gy, "conv2d_backward: gy", 4)
    x, w = _float_array(x, "x", 4), _float_array(w, "weight", 4)
    stride, padding, dilation, (N, C, Cout, kh, kw, oh, ow) = _conv_geometry(
        x, w, stride, padding, dilation, "conv2d_backward")
    if gy.shape != (N, Cout, oh, ow):
        raise ValueError(f"conv2d_backward: expected gy of shape {(N, Cout, oh, ow)}, got {gy.shape}")
    if C == 1 and stride == (1, 1) and per_chunk is None:          # a first layer: directly
        xp = pad_planes(x, padding)
        dw, db = np.empty(w.shape, dtype=x.dtype), np.empty(Cout, dtype=x.dtype)
        dxp = np.empty(xp.shape if need_dx else (1, 1, 1, 1), dtype=x.dtype)
        _single_channel_backward_kernel(gy.astype(x.dtype, copy=False), xp,
                                        np.ascontiguousarray(w, dtype=x.dtype), dw, db, dxp,
                                        bool(need_dx), *dilation)
        if not need_dx:
            return None, dw, db
        (ph, pw), (H, W) = padding, x.shape[2:]
        return np.ascontiguousarray(dxp[:, :, ph:ph + H, pw:pw + W]), dw, db
    if _pointwise(kh, kw, padding, per_chunk):                     # 1x1: a product per image
        seen = _every_sth_pixel(x, stride)                          # (N, C, oh, ow)
        chunks = chunk_count(N, (C + Cout) * oh * ow, x.itemsize, None, oh * ow)
        dw_parts, db_parts = _weight_parts(chunks, Cout, C, x.dtype), np.empty((chunks, Cout), x.dtype)
        dseen = np.empty(seen.shape if need_dx else (1, 1, 1, 1), dtype=x.dtype)
        with _OneBlasThread():
            _pointwise_backward_kernel(gy.astype(x.dtype, copy=False), seen,
                                       w.astype(x.dtype, copy=False).reshape(Cout, C), dseen,
                                       dw_parts, db_parts, bool(need_dx), chunks, _FAST_BLAS)
        dx = None
        if need_dx and stride == (1, 1):
            dx = dseen
        elif need_dx:                                               # the pixels the stride skipped: 0
            dx = np.zeros(x.shape, dtype=x.dtype)
            dx[:, :, ::stride[0], ::stride[1]] = dseen
        return dx, _weight_total(dw_parts, w.shape), db_parts.sum(axis=0)
    K = C * kh * kw
    w2 = w.astype(x.dtype, copy=False).reshape(Cout, K)
    chunks = chunk_count(N, (2 * K + Cout) * oh * ow, x.itemsize, per_chunk, oh * ow)
    dw_parts = _weight_parts(chunks, Cout, K, x.dtype)
    db_parts = np.empty((chunks, Cout), dtype=x.dtype)
    dx = np.empty(x.shape if need_dx else (1, 1, 1, 1), dtype=x.dtype)
    with _OneBlasThread():
        _conv_backward_kernel(gy.astype(x.dtype, copy=False), x, w2, dx, dw_parts, db_parts,
                              bool(need_dx), kh, kw, *stride, *padding, *dilation, oh, ow, chunks,
                              _FAST_BLAS)
    dw = _weight_total(dw_parts, w.shape)
    db = db_parts.sum(axis=0)
    return (dx if need_dx else None), dw, db


# -----------------------------------------------------------------------------
# Matrix products on Numba's threads (optional: only this backend has it)
# -----------------------------------------------------------------------------
# NumPy's ``a @ b`` runs on the BLAS library's own threads, and after each
# product OpenBLAS's worker spins for ~0.1 s waiting for more (it can only be
# told not to before NumPy is imported: OPENBLAS_THREAD_TIMEOUT). Every Numba
# kernel that runs in that window shares a core with the spinner — measured,
# the whole-layer kernel above took 1.6-2x its time right after a NumPy
# product. So this backend multiplies on Numba's threads too: each thread
# computes a block of rows of the result with a single-threaded BLAS call,
# and the BLAS library's threads never wake up during training.
_SMALL_PRODUCT = 1 << 18   # fewer multiply-adds: NumPy's @, which OpenBLAS then runs on one thread


@_jit
def _matmul_kernel(a, b, out, rows_per_task):
    """out[r0:r1] = a[r0:r1] @ b for each block of rows: parallel over the blocks
    (each writes its own rows of ``out``)."""
    M = a.shape[0]
    for task in prange((M + rows_per_task - 1) // rows_per_task):
        r0 = task * rows_per_task
        r1 = min(M, r0 + rows_per_task)
        np.dot(a[r0:r1], b, out[r0:r1])


def matmul(a, b):
    """``a @ b`` for 2-D (or stacks of 2-D, 3-D) float arrays of one dtype, the rows of each
    result split over Numba's threads; anything else, and small products, go to NumPy's ``@``."""
    if (a.ndim != b.ndim or a.ndim not in (2, 3) or a.dtype != b.dtype
            or a.dtype not in (np.float32, np.float64) or a.shape[-1] != b.shape[-2]
            or (a.ndim == 3 and a.shape[0] != b.shape[0])
            or a.shape[-2] * a.shape[-1] * b.shape[-1] < _SMALL_PRODUCT or a.shape[-2] < 2):
        return a @ b
    import numba
    stack = a.ndim == 3
    a3, b3 = (a, b) if stack else (a[None], b[None])
    out = np.empty((a3.shape[0], a3.shape[1], b3.shape[2]), dtype=a.dtype)
    rows_per_task = -(-a3.shape[1] // numba.get_num_threads())
    with _OneBlasThread():
        for g in range(a3.shape[0]):
            left, right = np.ascontiguousarray(a3[g]), b3[g]      # left's row blocks: contiguous
            if not (right.flags.c_contiguous or right.flags.f_contiguous):
                right = np.ascontiguousarray(right)
            _matmul_kernel(left, right, out[g], rows_per_task)
    return out if stack else out[0]


# -----------------------------------------------------------------------------
# Depthwise convolution, directly (numpy_ref.depthwise_conv2d_forward's loops)
# -----------------------------------------------------------------------------
# One way for every stride, further down: the padded plane of each (image, channel) split
# into phase planes in a buffer of the thread's own (at stride 1 there is one phase, the
# padded plane itself), each tap then one long contiguous multiply-add.
#
# The weight gradient of a tap is a dot product: sum over images n and positions k of
# gy_wide[n, k] * tap[n, k]. Summed as one running scalar, the compiler may not vectorise
# it (that would reorder a floating-point sum), and it ran at ~7 GFLOP/s. So the products
# are added up elementwise first, products[tap, k] += gy_wide[k] * tap[k] image after
# image (a loop that vectorises), and only the L per-position totals of each tap are
# summed at the end, in float64 and in order k = 0 .. L-1: the same order on any number
# of threads.
@_serial
def _sum_tap_products(products, dw_taps):
    """dw_taps[i, j] = the float64 sum of products[i*kw + j, :] (k in order)."""
    kh, kw = dw_taps.shape
    for i in range(kh):
        for j in range(kw):
            row, total = products[i * kw + j], 0.0
            for k in range(row.shape[0]):
                total += row[k]
            dw_taps[i, j] = total


# Every tap as one long contiguous multiply-add, at any stride: the
# padded plane is split into sh*sw *phase planes*, phase (a, b) holding the pixels
# of rows a, a+sh, ... and columns b, b+sw, ... (row length Wq). Tap (i, j) reads
# x_padded[oy*sh + i*dh, ox*sw + j*dw] = phase (i*dh % sh, j*dw % sw) at
# [oy + i*dh // sh, ox + j*dw // sw]: with the output laid out with row length Wq
# too ("wide" rows, oh*Wq values, the Wq - ow extra columns dropped at the end),
# that is wide[k] += w_ij * phase[k + offset_ij] for k = 0 .. L-1. Stride 1 has one
# phase, the padded plane itself. The phases are built per plane in the thread's
# cache, with the padding; nothing is padded or copied for the whole batch.
@_serial
def _phase_geometry(oh, ow, kh, kw, sh, sw, dh, dw):
    """(Hq, Wq, L): the phase planes' rows and row length, and the wide output's length."""
    Hq = oh + ((kh - 1) * dh) // sh + 1
    Wq = ow + ((kw - 1) * dw) // sw
    return Hq, Wq, (oh - 1) * Wq + ow


@_serial
def _tap_starts(kh, kw, sh, sw, dh, dw, Hq, Wq):
    """Where tap (i, j)'s slice begins in the phase planes laid end to end (one flat array):
    phase (i*dh % sh, j*dw % sw), row i*dh // sh, column j*dw // sw. (Computed once: a
    reshape and a slice per tap inside the loop cost 2.6x the whole forward at 14x14.)"""
    starts = np.empty(kh * kw, dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            phase = (i * dh) % sh * sw + (j * dw) % sw
            starts[i * kw + j] = phase * Hq * Wq + (i * dh) // sh * Wq + (j * dw) // sw
    return starts


@_serial
def _phase_range(start, size, stride, count):
    """The indices k in [0, count) with 0 <= k*stride + start < size: (first, stop)."""
    first = max(0, -((start) // stride))            # ceil(-start / stride)
    stop = min(count, (size - 1 - start) // stride + 1) if size - 1 - start >= 0 else 0
    return first, max(first, stop)


@_serial
def _split_phases(plane, phases, ph, pw, sh, sw):
    """phases[a*sw + b, r, q] = x_padded[r*sh + a, q*sw + b] (zero outside the plane)."""
    H, W = plane.shape
    Hq, Wq = phases.shape[1], phases.shape[2]
    phases[:] = 0
    for a in range(sh):
        r0, r1 = _phase_range(a - ph, H, sh, Hq)
        for b in range(sw):
            q0, q1 = _phase_range(b - pw, W, sw, Wq)
            target = phases[a * sw + b]
            for r in range(r0, r1):
                source = plane[r * sh + a - ph, q0 * sw + b - pw:]
                line = target[r]
                if sw == 1:
                    for q in range(q1 - q0):
                        line[q0 + q] = source[q]
                else:
                    for q in range(q1 - q0):
                        line[q0 + q] = source[q * sw]


@_serial
def _merge_phases(phases, plane, ph, pw, sh, sw):
    """The adjoint of _split_phases: plane[row, column] = its phase entry (padding dropped;
    a pixel no phase row holds — no tap ever read it — gets 0)."""
    H, W = plane.shape
    Hq, Wq = phases.shape[1], phases.shape[2]
    plane[:] = 0
    for a in range(sh):
        r0, r1 = _phase_range(a - ph, H, sh, Hq)
        for b in range(sw):
            q0, q1 = _phase_range(b - pw, W, sw, Wq)
            source = phases[a * sw + b]
            for r in range(r0, r1):
                target = plane[r * sh + a - ph, q0 * sw + b - pw:]
                line = source[r]
                if sw == 1:
                    for q in range(q1 - q0):
                        target[q] = line[q0 + q]
                else:
                    for q in range(q1 - q0):
                        target[q * sw] = line[q0 + q]


@_jit
def _depthwise_forward_kernel(x, w, y, sh, sw, ph, pw, dh, dw):
    """y[n, c] = sum over taps of w[c, 0, i, j] * the tap's slice of x_padded[n, c]; one task
    per image (its channels one after the other, the buffers reused), the taps added in
    numpy_ref's order (see above)."""
    N, C, oh, ow = y.shape
    kh, kw = w.shape[2], w.shape[3]
    Hq, Wq, L = _phase_geometry(oh, ow, kh, kw, sh, sw, dh, dw)
    starts = _tap_starts(kh, kw, sh, sw, dh, dw, Hq, Wq)
    for n in prange(N):
        phases = np.empty((sh * sw, Hq, Wq), dtype=y.dtype)
        flat = phases.reshape(-1)
        wide = np.empty(L, dtype=y.dtype)
        for c in range(C):
            _split_phases(x[n, c], phases, ph, pw, sh, sw)
            wide[:] = 0
            for i in range(kh):
                for j in range(kw):
                    wij, start = w[c, 0, i, j], starts[i * kw + j]
                    tap = flat[start:start + L]        # a slice: the loop vectorises
                    for k in range(L):
                        wide[k] += wij * tap[k]
            out = y[n, c]
            for oy in range(oh):
                out[oy, :] = wide[oy * Wq:oy * Wq + ow]


def depthwise_conv2d_forward(x, w, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """numpy_ref.depthwise_conv2d_forward, one task per image, on phase planes (see above)."""
    x = _float_array(x, "depthwise_conv2d_forward: x", 4)
    w = np.ascontiguousarray(w, dtype=x.dtype)
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    N, C, H, W = x.shape
    if w.shape[:2] != (C, 1):
        raise ValueError(f"depthwise_conv2d_forward: w must be ({C}, 1, kh, kw) for {C} channels, got {w.shape}")
    oh, ow = conv_output_shape((H, W), w.shape[2:], stride, padding, dilation)
    y = np.empty((N, C, oh, ow), dtype=x.dtype)
    _depthwise_forward_kernel(x, w, y, *stride, *padding, *dilation)
    return y


@_reductions
def _depthwise_backward_kernel(gy, x, w, dw_out, dx, need_dx, sh, sw, ph, pw, dh, dw):
    """Per channel (one thread each), image by image, in the phase layout of the forward:
    dw[c, 0, i, j] = the sum of gy's wide rows times tap (i, j)'s phase slice (see
    _sum_tap_products), and tap (i, j)'s slice of dx's phases += w_ij * gy's wide rows; dx[n, c] is then
    merged back from its phases (the channel is this thread's alone)."""
    N, C, oh, ow = gy.shape
    kh, kw = w.shape[2], w.shape[3]
    Hq, Wq, L = _phase_geometry(oh, ow, kh, kw, sh, sw, dh, dw)
    starts = _tap_starts(kh, kw, sh, sw, dh, dw, Hq, Wq)
    for c in prange(C):
        phases = np.empty((sh * sw, Hq, Wq), dtype=gy.dtype)
        dphases = np.empty((sh * sw, Hq, Wq), dtype=gy.dtype)
        flat, dflat = phases.reshape(-1), dphases.reshape(-1)
        wide = np.zeros(L, dtype=gy.dtype)              # gy's rows at stride Wq, zeros between
        products = np.zeros((kh * kw, L), dtype=gy.dtype)     # see _sum_tap_products
        for n in range(N):
            for oy in range(oh):
                wide[oy * Wq:oy * Wq + ow] = gy[n, c, oy]
            _split_phases(x[n, c], phases, ph, pw, sh, sw)
            if need_dx:
                dphases[:] = 0
            for i in range(kh):
                for j in range(kw):
                    start = starts[i * kw + j]
                    tap, total = flat[start:start + L], products[i * kw + j]
                    for k in range(L):
                        total[k] += wide[k] * tap[k]
                    if need_dx:
                        wij = w[c, 0, i, j]
                        target = dflat[start:start + L]
                        for k in range(L):
                            target[k] += wij * wide[k]
            if need_dx:
                _merge_phases(dphases, dx[n, c], ph, pw, sh, sw)
        _sum_tap_products(products, dw_out[c, 0])


def depthwise_conv2d_backward(gy, x, w, stride=(1, 1), padding=(0, 0), dilation=(1, 1), need_dx=True):
    """numpy_ref.depthwise_conv2d_backward, one task per channel, on phase planes."""
    gy = _float_array(gy, "depthwise_conv2d_backward: gy", 4)
    x = np.ascontiguousarray(x, dtype=gy.dtype)
    w = np.ascontiguousarray(w, dtype=gy.dtype)
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    N, C, H, W = x.shape
    dw = np.empty(w.shape, dtype=gy.dtype)
    dx = np.empty(x.shape if need_dx else (0, C, 0, 0), dtype=gy.dtype)
    _depthwise_backward_kernel(gy, x, w, dw, dx, bool(need_dx), *stride, *padding, *dilation)
    return (dx if need_dx else None), dw


# -----------------------------------------------------------------------------
# Batch norm in training mode: one pass over each channel's values per step
# -----------------------------------------------------------------------------
# numpy_ref (BatchNormFn's own composition) reads x five times and writes three
# temporaries in the forward (mean, var, x - mean, * inv_std, * weight, + bias)
# and more in the backward. Here each thread takes whole channels: a channel's
# values (m = N*H*W floats, 200 KB at batch 64 on 28x28) stay in the core's
# cache between the statistics and the normalisation, so memory sees one read
# of x and the writes of xhat and y. Sums in float64; the additions may be
# reordered (vectorised), which changes only the last bits, and each channel is
# one thread's work: the same bits on any number of threads.
@_reductions
def _batch_norm_forward_kernel(x, weight, bias, eps, y, xhat, mean, var, inv_std):
    N, C, L = x.shape                                   # L = H*W (1 for (N, C) inputs)
    m = N * L
    for c in prange(C):
        total = 0.0
        for n in range(N):
            for k in range(L):
                total += x[n, c, k]
        mu = total / m
        squares = 0.0
        for n in range(N):
            for k in range(L):
                d = x[n, c, k] - mu
                squares += d * d
        v = squares / m
        r = 1.0 / math.sqrt(v + eps)
        w, b = weight[c], bias[c]
        for n in range(N):
            for k in range(L):
                h = (x[n, c, k] - mu) * r
                xhat[n, c, k] = h
                y[n, c, k] = h * w + b
        mean[c], var[c], inv_std[c] = mu, v, r


@_reductions
def _batch_norm_backward_kernel(gy, xhat, inv_std, weight, need_dx, dx, dweight, dbias):
    N, C, L = gy.shape
    m = N * L
    for c in prange(C):
        sum_gy = 0.0
        sum_gy_xhat = 0.0
        for n in range(N):
            for k in range(L):
                sum_gy += gy[n, c, k]
                sum_gy_xhat += gy[n, c, k] * xhat[n, c, k]
        dbias[c], dweight[c] = sum_gy, sum_gy_xhat
        if need_dx:
            # g = gy * w: mean(g) = w * sum_gy / m, mean(g * xhat) = w * sum_gy_xhat / m
            w, r = weight[c], inv_std[c]
            mean_g, mean_g_xhat = w * sum_gy / m, w * sum_gy_xhat / m
            for n in range(N):
                for k in range(L):
                    dx[n, c, k] = r * (w * gy[n, c, k] - mean_g - xhat[n, c, k] * mean_g_xhat)


def _per_channel(a, name):
    """(N, C) or (N, C, H, W) -> a contiguous (N, C, L) view (L = H*W, or 1)."""
    a = np.asarray(a)
    if a.ndim not in (2, 4) or a.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name} must be a float32/float64 (N, C) or (N, C, H, W) array, "
                         f"got {a.dtype} {a.shape}")
    a = np.ascontiguousarray(a)
    return a.reshape(a.shape[0], a.shape[1], -1)


def batch_norm_train_forward(x, weight, bias, eps):
    """numpy_ref.batch_norm_train_forward, one pass per channel (see above)."""
    x3 = _per_channel(x, "batch_norm_train_forward: x")
    C = x3.shape[1]
    weight = np.ones(C, x3.dtype) if weight is None else np.ascontiguousarray(weight, dtype=x3.dtype)
    bias = np.zeros(C, x3.dtype) if bias is None else np.ascontiguousarray(bias, dtype=x3.dtype)
    y, xhat = np.empty_like(x3), np.empty_like(x3)
    mean, var, inv_std = (np.empty(C, x3.dtype) for _ in range(3))
    _batch_norm_forward_kernel(x3, weight, bias, float(eps), y, xhat, mean, var, inv_std)
    return y.reshape(x.shape), xhat.reshape(x.shape), mean, var, inv_std


def batch_norm_train_backward(gy, xhat, inv_std, weight, need_dx=True):
    """numpy_ref.batch_norm_train_backward, one pass per channel (two where dx is needed)."""
    gy3 = _per_channel(gy, "batch_norm_train_backward: gy")
    xhat3 = _per_channel(xhat, "batch_norm_train_backward: xhat").astype(gy3.dtype, copy=False)
    C = gy3.shape[1]
    weight = np.ones(C, gy3.dtype) if weight is None else np.ascontiguousarray(weight, dtype=gy3.dtype)
    inv_std = np.ascontiguousarray(inv_std, dtype=gy3.dtype)
    dx = np.empty_like(gy3) if need_dx else np.empty((0, C, 0), gy3.dtype)
    dweight, dbias = np.empty(C, gy3.dtype), np.empty(C, gy3.dtype)
    _batch_norm_backward_kernel(gy3, xhat3, inv_std, weight, bool(need_dx), dx, dweight, dbias)
    return (dx.reshape(gy.shape) if need_dx else None), dweight, dbias


# Evaluation mode: the statistics are constants, so it is one pass over x, each
# element (x - mean) * inv_std * w + b in numpy_ref's order (the same bits).
@_jit
def _batch_norm_eval_kernel(x, weight, bias, mean, inv_std, y, xhat, need_xhat):
    N, C, L = x.shape
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        mu, r, w, b = mean[c], inv_std[c], weight[c], bias[c]
        source, target = x[n, c], y[n, c]
        if need_xhat:
            kept = xhat[n, c]
            for k in range(L):
                h = (source[k] - mu) * r
                kept[k] = h
                target[k] = h * w + b
        else:
            for k in range(L):
                target[k] = (source[k] - mu) * r * w + b


def batch_norm_eval_forward(x, weight, bias, running_mean, running_var, eps, need_xhat=True):
    """numpy_ref.batch_norm_eval_forward in one parallel pass over x."""
    x3 = _per_channel(x, "batch_norm_eval_forward: x")
    C = x3.shape[1]
    dtype = x3.dtype
    inv_std = (1.0 / np.sqrt(running_var + eps)).astype(dtype)        # numpy_ref's expression
    weight = np.ones(C, dtype) if weight is None else np.ascontiguousarray(weight, dtype=dtype)
    bias = np.zeros(C, dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype)
    mean = np.ascontiguousarray(running_mean, dtype=dtype)
    y = np.empty_like(x3)
    xhat = np.empty_like(x3) if need_xhat else np.empty((1, 1, 1), dtype)
    _batch_norm_eval_kernel(x3, weight, bias, mean, np.ascontiguousarray(inv_std), y, xhat,
                            bool(need_xhat))
    return y.reshape(x.shape), (xhat.reshape(x.shape) if need_xhat else None), inv_std


# -----------------------------------------------------------------------------
# ReLU: one parallel pass (NumPy's maximum and the mask are two single-threaded ones)
# -----------------------------------------------------------------------------
_BLOCK = 1 << 14     # elements per task


@_jit
def _relu_forward_kernel(x, y, passes, need_mask):
    size = x.size
    for block in prange((size + _BLOCK - 1) // _BLOCK):
        start, stop = block * _BLOCK, min(size, (block + 1) * _BLOCK)
        source, target = x[start:stop], y[start:stop]      # views of one block: the loop vectorises
        if need_mask:
            mask = passes[start:stop]
            for k in range(stop - start):
                v = source[k]
                through = not v <= 0      # True at a NaN: max(nan, 0) is nan
                target[k] = v if through else 0
                mask[k] = through
        else:
            for k in range(stop - start):
                v = source[k]
                target[k] = v if not v <= 0 else 0


@_jit
def _relu_backward_kernel(gy, passes, dx):
    size = gy.size
    for block in prange((size + _BLOCK - 1) // _BLOCK):
        start, stop = block * _BLOCK, min(size, (block + 1) * _BLOCK)
        g, mask, target = gy[start:stop], passes[start:stop], dx[start:stop]
        for k in range(stop - start):
            target[k] = g[k] * mask[k]    # gy * 0 where blocked: a NaN gradient stays NaN


def relu_forward(x, need_mask=True):
    """numpy_ref.relu_forward in one parallel pass (float32/float64; anything else: NumPy's)."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        y, passes = np.maximum(x, 0), ~(x <= 0)
        return y, (passes if need_mask else None)
    flat = np.ascontiguousarray(x).reshape(-1)
    y = np.empty_like(flat)
    passes = np.empty(flat.size if need_mask else 1, dtype=np.bool_)
    _relu_forward_kernel(flat, y, passes, bool(need_mask))
    return y.reshape(x.shape), (passes.reshape(x.shape) if need_mask else None)


def relu_backward(gy, passes):
    """numpy_ref.relu_backward in one parallel pass."""
    gy, passes = np.asarray(gy), np.asarray(passes)
    if gy.dtype not in (np.float32, np.float64) or passes.dtype != np.bool_ or gy.shape != passes.shape:
        return gy * passes
    flat = np.ascontiguousarray(gy).reshape(-1)
    dx = np.empty_like(flat)
    _relu_backward_kernel(flat, np.ascontiguousarray(passes).reshape(-1), dx)
    return dx.reshape(gy.shape)


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
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    N, C, H, W = x.shape
    oh, ow = conv_output_shape((H, W), (kh, kw), stride, padding, (1, 1))
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
    stride, (ph, pw) = pair(stride, "stride"), pair(padding, "padding")
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
