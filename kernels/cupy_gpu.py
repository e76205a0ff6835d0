"""The kernels on a CUDA GPU: CuPy arrays and hand-written CUDA C (the ``cupy`` backend).

Same functions, same signatures, same numbers as :mod:`numpy_ref` (the
specification — read it first; the tests hold this module to it). Arrays in
and out are ``cupy.ndarray`` arrays in GPU memory; nothing here copies to the host.

How a kernel runs
-----------------
Each kernel below is CUDA C, compiled at its first call by CuPy (NVRTC; the
binary is cached on disk). A launch ``kernel((blocks,), (threads,), args)``
starts ``blocks * threads`` threads that all run the same function body; a
thread tells itself apart by ``blockIdx.x`` and ``threadIdx.x``. Every kernel
here gives each thread one output element::

    k = blockIdx.x * blockDim.x + threadIdx.x        // this thread's element
    k += blockDim.x * gridDim.x                      // then the next one it owns

— the second line is a "grid-stride loop": a grid of bounded size covers an
array of any size, each thread taking every (blocks*threads)-th element. The
thread then turns its flat index ``k`` back into coordinates with ``/`` and
``%`` (row-major order, the last axis fastest), as the comments show.

Gather, not scatter
-------------------
col2im and the pooling backwards are sums: a pixel read by several windows
receives a gradient from each. The reference loops over windows and *adds
into* the pixels each one read (a scatter). On a GPU, with one thread per
window, two threads would add into one pixel at the same moment and one of
the additions could be lost, unless every one were an ``atomicAdd`` (slower,
and the order of the additions — hence the last bits of the result — would
change from run to run). So these kernels turn the loop around: one thread
per *input pixel*, which *gathers* from every window that read it. No two
threads write the same element, no atomics are needed, and the terms are
added in the reference's tap order (i, j), so the sums match numpy_ref.

Which windows read pixel row ``y``? Tap ``i`` of the window in output row
``oy`` reads input row ``oy*sh - ph + i*dh``. Solving for ``oy``::

    oy = (y + ph - i*dh) / sh     valid when the division is exact and 0 <= oy < oh

and the same for columns. That is the ``t % s != 0`` / ``o >= o_max`` test
in every backward kernel.

Types
-----
Each source is written for a float type ``T`` and compiled twice, with
``typedef float T;`` or ``typedef double T;`` in front (max pooling's winner
index ``I`` is ``signed char`` or ``int``, int8 or int32 as in numpy_ref).
Array arguments must be C-contiguous CuPy arrays of exactly the declared
type; sizes are passed as ``numpy.int32`` — CuPy would pass a Python int as
a 64-bit ``long long``, which does not match an ``int`` parameter.

The sources are module-level strings named ``*_SOURCE``: the tests compile
each with ``nvcc`` for both types, and run it on the CPU through a
one-thread emulation against numpy_ref, without importing CuPy.
"""
from __future__ import annotations

import functools
import re

import cupy
import cupyx
import cupyx.scipy.special
import numpy as np

from .geometry import conv_output_shape, pair

NAME = "cupy"

THREADS_PER_BLOCK = 256
MAX_BLOCKS = 65_535           # the grid-stride loop covers anything larger

# -----------------------------------------------------------------------------
# CUDA sources
# -----------------------------------------------------------------------------
UNFOLD_SOURCE = r"""
extern "C" __global__
void im2col(const T* img, T* cols,
            int N, int C, int H, int W, int kh, int kw, int oh, int ow,
            int sh, int sw, int ph, int pw, int dh, int dw)
{
    // cols[(c*kh + i)*kw + j, (n*oh + oy)*ow + ox] = img[n, c, oy*sh - ph + i*dh, ox*sw - pw + j*dw]
    // (0 where that pixel lies in the padding). One thread per element of cols.
    const long long L = (long long)N * oh * ow;                // columns: output pixels of the batch
    const long long total = (long long)C * kh * kw * L;        // elements of cols
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (long long)blockDim.x * gridDim.x) {
        const long long row = k / L;                            // cols is (C*kh*kw, L), row-major
        const long long col = k % L;
        const int c = row / (kh * kw);                          // row = (c*kh + i)*kw + j
        const int i = row / kw % kh;
        const int j = row % kw;
        const int n = col / ((long long)oh * ow);               // col = (n*oh + oy)*ow + ox
        const int oy = col / ow % oh;
        const int ox = col % ow;
        const int y = oy * sh - ph + i * dh;                    // the input pixel tap (i, j) reads
        const int x = ox * sw - pw + j * dw;
        const bool inside = 0 <= y && y < H && 0 <= x && x < W;
        cols[k] = inside ? img[(((long long)n * C + c) * H + y) * W + x] : (T)0;   // img[n, c, y, x]
    }
}

extern "C" __global__
void col2im(const T* cols, T* img,
            int N, int C, int H, int W, int kh, int kw, int oh, int ow,
            int sh, int sw, int ph, int pw, int dh, int dw)
{
    // img[n, c, y, x] = sum over every tap (i, j) of every window (oy, ox) that read pixel (y, x)
    //                   of cols[(c*kh + i)*kw + j, (n*oh + oy)*ow + ox]
    // One thread per pixel, gathering (see "Gather, not scatter"); taps in (i, j) order.
    const long long L = (long long)N * oh * ow;
    const long long total = (long long)N * C * H * W;          // elements of img
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (long long)blockDim.x * gridDim.x) {
        const int x = k % W;                                    // k = ((n*C + c)*H + y)*W + x
        const int y = k / W % H;
        const int c = k / ((long long)H * W) % C;
        const int n = k / ((long long)C * H * W);
        T sum = 0;
        for (int i = 0; i < kh; ++i) {
            const int ty = y + ph - i * dh;                     // = oy*sh if window row oy read row y
            if (ty < 0 || ty % sh != 0) continue;
            const int oy = ty / sh;
            if (oy >= oh) continue;
            for (int j = 0; j < kw; ++j) {
                const int tx = x + pw - j * dw;                 // = ox*sw if window column ox read column x
                if (tx < 0 || tx % sw != 0) continue;
                const int ox = tx / sw;
                if (ox >= ow) continue;
                const long long row = ((long long)c * kh + i) * kw + j;
                sum += cols[row * L + ((long long)n * oh + oy) * ow + ox];
            }
        }
        img[k] = sum;
    }
}
"""

MAX_POOL_SOURCE = r"""
// -inf from its bit pattern (no math headers needed): padding that never wins a comparison
__device__ inline float negative_infinity(float) { return __int_as_float(0xff800000); }
__device__ inline double negative_infinity(double) { return __longlong_as_double(0xfff0000000000000LL); }

extern "C" __global__
void max_pool_forward(const T* img, T* out, I* argmax,
                      int N, int C, int H, int W, int kh, int kw, int oh, int ow,
                      int sh, int sw, int ph, int pw)
{
    // out[n, c, oy, ox] = max over the taps (i, j) of img[n, c, oy*sh - ph + i, ox*sw - pw + j];
    // argmax[n, c, oy, ox] = the first tap i*kw + j that attains it (">" is strict).
    // A NaN always wins (v != v only for NaN), as in PyTorch: the window pools to NaN.
    // Pixels in the padding count as -inf, so they never win. One thread per output.
    const long long total = (long long)N * C * oh * ow;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (long long)blockDim.x * gridDim.x) {
        const int ox = k % ow;                                  // k = (plane*oh + oy)*ow + ox
        const int oy = k / ow % oh;
        const long long plane = k / ((long long)oh * ow);       // plane = n*C + c
        const T* image = img + plane * H * W;                   // the (n, c) input plane
        T best = negative_infinity((T)0);
        int winner = max(0, ph - oy * sh) * kw + max(0, pw - ox * sw);   // the first real pixel,
                                                // so that a window of -inf routes to it (PyTorch's)
        for (int i = 0; i < kh; ++i) {
            const int y = oy * sh - ph + i;                     // the row tap i reads
            if (y < 0 || y >= H) continue;
            for (int j = 0; j < kw; ++j) {
                const int x = ox * sw - pw + j;                 // the column tap j reads
                if (x < 0 || x >= W) continue;
                const T v = image[(long long)y * W + x];
                if (v > best || v != v) { best = v; winner = i * kw + j; }
            }
        }
        out[k] = best;
        argmax[k] = (I)winner;
    }
}

extern "C" __global__
void max_pool_backward(const T* gy, const I* argmax, T* dx,
                       int N, int C, int H, int W, int kh, int kw, int oh, int ow,
                       int sh, int sw, int ph, int pw)
{
    // dx[n, c, y, x] = sum of gy[n, c, oy, ox] over the windows (oy, ox) whose winning tap
    //                  read pixel (y, x). One thread per pixel, gathering; taps in (i, j) order.
    const long long total = (long long)N * C * H * W;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (long long)blockDim.x * gridDim.x) {
        const int x = k % W;                                    // k = (plane*H + y)*W + x
        const int y = k / W % H;
        const long long plane = k / ((long long)H * W);
        const T* grad = gy + plane * oh * ow;                   // the (n, c) planes of gy, argmax
        const I* won = argmax + plane * oh * ow;
        T sum = 0;
        for (int i = 0; i < kh; ++i) {
            const int ty = y + ph - i;                          // = oy*sh if window row oy read row y
            if (ty < 0 || ty % sh != 0) continue;
            const int oy = ty / sh;
            if (oy >= oh) continue;
            for (int j = 0; j < kw; ++j) {
                const int tx = x + pw - j;                      // = ox*sw if window column ox read column x
                if (tx < 0 || tx % sw != 0) continue;
                const int ox = tx / sw;
                if (ox >= ow) continue;
                if (won[oy * ow + ox] == i * kw + j) sum += grad[oy * ow + ox];
            }
        }
        dx[k] = sum;
    }
}
"""

FUSED_POOL_SOURCE = r"""
// -inf from its bit pattern, as in MAX_POOL_SOURCE (each source is compiled on its own)
__device__ inline float negative_infinity(float) { return __int_as_float(0xff800000); }
__device__ inline double negative_infinity(double) { return __longlong_as_double(0xfff0000000000000LL); }

extern "C" __global__
void bias_relu_max_pool_forward(const T* y, const T* bias, T* out, I* argmax,
                                int N, int C, int H, int W, int kh, int kw, int oh, int ow,
                                int sh, int sw)
{
    // out[n, c, oy, ox] = relu(max over the taps (i, j) of y[c, n, oy*sh + i, ox*sw + j] + bias[c]);
    // argmax[n, c, oy, ox] = the first tap i*kw + j that attains the max (">" is strict, from -inf),
    // or -1 where that max is <= 0: relu clipped the window, so no gradient comes back through it.
    // A NaN wins its window and is not clipped (nan <= 0 is false): out is NaN, as unfused.
    // y is the convolution's output, channel first; out is batch first, the order the next
    // layer reads: the transpose costs nothing here, it is only where the thread reads from.
    // No padding: every tap lies inside the plane. One thread per output.
    const long long total = (long long)N * C * oh * ow;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (long long)blockDim.x * gridDim.x) {
        const int ox = k % ow;                                  // k = ((n*C + c)*oh + oy)*ow + ox
        const int oy = k / ow % oh;
        const int c = k / ((long long)oh * ow) % C;
        const int n = k / ((long long)C * oh * ow);
        const T* image = y + ((long long)c * N + n) * H * W;   // the (c, n) plane of y
        const T b = bias[c];
        T best = negative_infinity((T)0);
        int winner = 0;
        for (int i = 0; i < kh; ++i) {
            const T* row = image + (long long)(oy * sh + i) * W;   // the row tap i reads
            for (int j = 0; j < kw; ++j) {
                // the bias before the comparison, as the unfused layers add it: two values can
                // round to the same sum, and that tie must go to the same (first) tap
                const T v = row[ox * sw + j] + b;
                if (v > best || v != v) { best = v; winner = i * kw + j; }
            }
        }
        // relu after the max (it is monotone: relu(max) == max of the relus), on one value, not kh*kw
        const bool clipped = best <= 0;                         // false for NaN: relu(nan) = nan
        out[k] = clipped ? (T)0 : best;
        argmax[k] = (I)(clipped ? -1 : winner);
    }
}

extern "C" __global__
void bias_relu_max_pool_backward(const T* gout, const I* argmax, T* dy,
                                 int N, int C, int H, int W, int kh, int kw, int oh, int ow,
                                 int sh, int sw)
{
    // dy[c, n, y, x] = sum of gout[n, c, oy, ox] over the windows (oy, ox) whose winning tap
    //                  read pixel (y, x). A clipped window's argmax, -1, equals no tap: it adds
    //                  nothing (relu's derivative is 0 there). dy comes out channel first, the dY
    //                  the convolution's backward products take. One thread per pixel of dy,
    //                  gathering; taps in (i, j) order, the order numpy_ref adds them in.
    const long long total = (long long)C * N * H * W;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (long long)blockDim.x * gridDim.x) {
        const int x = k % W;                                    // k = ((c*N + n)*H + y)*W + x
        const int y = k / W % H;
        const int n = k / ((long long)H * W) % N;
        const int c = k / ((long long)N * H * W);
        const long long plane = (long long)n * C + c;           // the (n, c) planes of gout, argmax
        const T* grad = gout + plane * oh * ow;
        const I* won = argmax + plane * oh * ow;
        T sum = 0;
        for (int i = 0; i < kh; ++i) {
            const int ty = y - i;                               // = oy*sh if window row oy read row y
            if (ty < 0 || ty % sh != 0) continue;
            const int oy = ty / sh;
            if (oy >= oh) continue;
            for (int j = 0; j < kw; ++j) {
                const int tx = x - j;                           // = ox*sw if window column ox read column x
                if (tx < 0 || tx % sw != 0) continue;
                const int ox = tx / sw;
                if (ox >= ow) continue;
                if (won[oy * ow + ox] == i * kw + j) sum += grad[oy * ow + ox];
            }
        }
        dy[k] = sum;
    }
}
"""

AVG_POOL_SOURCE = r"""
__device__ inline int window_size(int oy, int ox, int kh, int kw, int sh, int sw, int ph, int pw,
                                  int H, int W, int count_include_pad)
{
    // kh*kw, or (count_include_pad == 0) the number of real pixels in window (oy, ox)
    if (count_include_pad) return kh * kw;
    const int top = oy * sh - ph, left = ox * sw - pw;         // the window's first row and column
    const int rows = min(top + kh, H) - max(top, 0);           // its rows inside [0, H)
    const int columns = min(left + kw, W) - max(left, 0);      // its columns inside [0, W)
    return rows * columns;
}

extern "C" __global__
void avg_pool_forward(const T* img, T* out,
                      int N, int C, int H, int W, int kh, int kw, int oh, int ow,
                      int sh, int sw, int ph, int pw, int count_include_pad)
{
    // out[n, c, oy, ox] = (sum of the window's real pixels; padding adds 0) / window_size.
    // One thread per output.
    const long long total = (long long)N * C * oh * ow;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (long long)blockDim.x * gridDim.x) {
        const int ox = k % ow;                                  // k = (plane*oh + oy)*ow + ox
        const int oy = k / ow % oh;
        const long long plane = k / ((long long)oh * ow);
        const T* image = img + plane * H * W;
        T sum = 0;
        for (int i = 0; i < kh; ++i) {
            const int y = oy * sh - ph + i;                     // the row tap i reads
            if (y < 0 || y >= H) continue;
            for (int j = 0; j < kw; ++j) {
                const int x = ox * sw - pw + j;                 // the column tap j reads
                if (x < 0 || x >= W) continue;
                sum += image[(long long)y * W + x];
            }
        }
        out[k] = sum / (T)window_size(oy, ox, kh, kw, sh, sw, ph, pw, H, W, count_include_pad);
    }
}

extern "C" __global__
void avg_pool_backward(const T* gy, T* dx,
                       int N, int C, int H, int W, int kh, int kw, int oh, int ow,
                       int sh, int sw, int ph, int pw, int count_include_pad)
{
    // dx[n, c, y, x] = sum over the windows (oy, ox) that contain pixel (y, x)
    //                  of gy[n, c, oy, ox] / window_size(oy, ox). One thread per pixel, gathering.
    const long long total = (long long)N * C * H * W;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (long long)blockDim.x * gridDim.x) {
        const int x = k % W;                                    // k = (plane*H + y)*W + x
        const int y = k / W % H;
        const long long plane = k / ((long long)H * W);
        const T* grad = gy + plane * oh * ow;
        T sum = 0;
        for (int i = 0; i < kh; ++i) {
            const int ty = y + ph - i;                          // = oy*sh if window row oy holds row y
            if (ty < 0 || ty % sh != 0) continue;
            const int oy = ty / sh;
            if (oy >= oh) continue;
            for (int j = 0; j < kw; ++j) {
                const int tx = x + pw - j;                      // = ox*sw if window column ox holds column x
                if (tx < 0 || tx % sw != 0) continue;
                const int ox = tx / sw;
                if (ox >= ow) continue;
                sum += grad[oy * ow + ox] /
                       (T)window_size(oy, ox, kh, kw, sh, sw, ph, pw, H, W, count_include_pad);
            }
        }
        dx[k] = sum;
    }
}
"""

DEPTHWISE_SOURCE = r"""
extern "C" __global__
void depthwise_forward(const T* img, const T* w, T* out,
                       int N, int C, int H, int W, int kh, int kw, int oh, int ow,
                       int sh, int sw, int ph, int pw, int dh, int dw)
{
    // out[n, c, oy, ox] = sum over taps (i, j), in numpy_ref's order, of
    //                     w[c, 0, i, j] * img[n, c, oy*sh - ph + i*dh, ox*sw - pw + j*dw] (0 off the image)
    const long long total = (long long)N * C * oh * ow;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (long long)blockDim.x * gridDim.x) {
        const int ox = k % ow;                                  // k = (plane*oh + oy)*ow + ox
        const int oy = k / ow % oh;
        const long long plane = k / ((long long)oh * ow);       // = n*C + c
        const int c = plane % C;
        const T* x = img + plane * H * W;
        T sum = 0;
        for (int i = 0; i < kh; ++i) {
            const int y = oy * sh - ph + i * dh;
            for (int j = 0; j < kw; ++j) {
                const int xx = ox * sw - pw + j * dw;
                const T value = (y >= 0 && y < H && xx >= 0 && xx < W) ? x[y * W + xx] : (T)0;
                sum += w[(c * kh + i) * kw + j] * value;
            }
        }
        out[k] = sum;
    }
}

extern "C" __global__
void depthwise_backward_input(const T* gy, const T* w, T* dx,
                              int N, int C, int H, int W, int kh, int kw, int oh, int ow,
                              int sh, int sw, int ph, int pw, int dh, int dw)
{
    // dx[n, c, y, x] = sum over the taps (i, j) and outputs (oy, ox) that read pixel (y, x)
    //                  of w[c, 0, i, j] * gy[n, c, oy, ox]. One thread per pixel, gathering.
    const long long total = (long long)N * C * H * W;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (long long)blockDim.x * gridDim.x) {
        const int x = k % W;                                    // k = (plane*H + y)*W + x
        const int y = k / W % H;
        const long long plane = k / ((long long)H * W);
        const int c = plane % C;
        const T* grad = gy + plane * oh * ow;
        T sum = 0;
        for (int i = 0; i < kh; ++i) {
            const int ty = y + ph - i * dh;                     // = oy*sh if output row oy reads row y
            if (ty < 0 || ty % sh != 0) continue;
            const int oy = ty / sh;
            if (oy >= oh) continue;
            for (int j = 0; j < kw; ++j) {
                const int tx = x + pw - j * dw;
                if (tx < 0 || tx % sw != 0) continue;
                const int ox = tx / sw;
                if (ox >= ow) continue;
                sum += w[(c * kh + i) * kw + j] * grad[oy * ow + ox];
            }
        }
        dx[k] = sum;
    }
}

extern "C" __global__
void depthwise_backward_weight(const T* gy, const T* img, T* dweight,
                               int N, int C, int H, int W, int kh, int kw, int oh, int ow,
                               int sh, int sw, int ph, int pw, int dh, int dw)
{
    // dweight[c, 0, i, j] = sum over n, oy, ox of gy[n, c, oy, ox] * img[n, c, oy*sh - ph + i*dh, ...].
    // One thread per weight: C*kh*kw threads, each summing N*oh*ow products.
    const long long total = (long long)C * kh * kw;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (long long)blockDim.x * gridDim.x) {
        const int j = k % kw;                                   // k = (c*kh + i)*kw + j
        const int i = k / kw % kh;
        const int c = k / ((long long)kh * kw);
        T sum = 0;
        for (int n = 0; n < N; ++n) {
            const T* x = img + ((long long)n * C + c) * H * W;
            const T* grad = gy + ((long long)n * C + c) * oh * ow;
            for (int oy = 0; oy < oh; ++oy) {
                const int y = oy * sh - ph + i * dh;
                if (y < 0 || y >= H) continue;
                for (int ox = 0; ox < ow; ++ox) {
                    const int xx = ox * sw - pw + j * dw;
                    if (xx < 0 || xx >= W) continue;
                    sum += grad[oy * ow + ox] * x[y * W + xx];
                }
            }
        }
        dweight[k] = sum;
    }
}
"""

NORM_SOURCE = r"""
extern "C" __global__
void batch_norm_normalize(const T* x, const T* mean, const T* inv_std, const T* weight,
                          const T* bias, T* y, T* xhat, int N, int C, int L, int keep_xhat)
{
    // xhat[n, c, k] = (x[n, c, k] - mean[c]) * inv_std[c];  y[n, c, k] = xhat * weight[c] + bias[c]
    // (x seen as (N, C, L): L = H*W, or 1 for an (N, C) input). One thread per element: the
    // normalisation and the affine map in one pass, where the composition makes four. xhat is
    // written only if keep_xhat (evaluation without a backward does not need it).
    const long long total = (long long)N * C * L;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (long long)blockDim.x * gridDim.x) {
        const int c = k / L % C;                                // k = (n*C + c)*L + l
        const T h = (x[k] - mean[c]) * inv_std[c];
        if (keep_xhat) xhat[k] = h;
        y[k] = h * weight[c] + bias[c];
    }
}

extern "C" __global__
void batch_norm_backward_input(const T* gy, const T* xhat, const T* inv_std, const T* weight,
                               const T* mean_g, const T* mean_g_xhat, T* dx, int N, int C, int L)
{
    // dx[n, c, k] = inv_std[c] * (weight[c] * gy - mean_g[c] - xhat * mean_g_xhat[c]), with
    // mean_g = mean of g = gy * weight over the channel and mean_g_xhat = mean of g * xhat
    // (the reductions, computed before). One thread per element.
    const long long total = (long long)N * C * L;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (long long)blockDim.x * gridDim.x) {
        const int c = k / L % C;
        dx[k] = inv_std[c] * (weight[c] * gy[k] - mean_g[c] - xhat[k] * mean_g_xhat[c]);
    }
}

extern "C" __global__
void relu_forward(const T* x, T* y, bool* passes, int rows, int columns, int keep_mask)
{
    // y = max(x, 0), a NaN staying NaN; passes = !(x <= 0) — true at a NaN too, so the
    // backward keeps its trace (numpy_ref.relu_forward). x seen as (rows, columns).
    const long long total = (long long)rows * columns;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (long long)blockDim.x * gridDim.x) {
        const T v = x[k];
        const bool blocked = v <= (T)0;                         // false for NaN
        y[k] = blocked ? (T)0 : v;
        if (keep_mask) passes[k] = !blocked;
    }
}

extern "C" __global__
void relu_backward(const T* gy, const bool* passes, T* dx, int rows, int columns)
{
    // dx = gy * passes: where blocked, gy * 0 — a NaN or an infinite gradient gives NaN there,
    // as numpy_ref's product does (not a silent 0).
    const long long total = (long long)rows * columns;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (long long)blockDim.x * gridDim.x) {
        dx[k] = gy[k] * (T)(passes[k] ? 1 : 0);
    }
}
"""

_SOURCES = {"UNFOLD": UNFOLD_SOURCE, "MAX_POOL": MAX_POOL_SOURCE, "FUSED_POOL": FUSED_POOL_SOURCE,
            "AVG_POOL": AVG_POOL_SOURCE, "DEPTHWISE": DEPTHWISE_SOURCE,
            "NORM": NORM_SOURCE}
_FLOAT_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_INDEX_TYPES = {np.dtype(np.int8): "signed char", np.dtype(np.int32): "int"}


# -----------------------------------------------------------------------------
# Compiling and launching
# -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _kernel(source, name, float_type, index_type="int"):
    """The compiled kernel ``name`` of ``_SOURCES[source]`` for these C types (cached)."""
    code = f"typedef {float_type} T;\ntypedef {index_type} I;\n" + _SOURCES[source]
    return cupy.RawModule(code=code).get_function(name)


@functools.lru_cache(maxsize=None)
def _parameters(source, name):
    """``[(c_type, name), ...]`` of kernel ``name``, read from its C signature."""
    signature = re.search(r"void\s+" + name + r"\s*\(([^)]*)\)", _SOURCES[source]).group(1)
    params = []
    for declaration in signature.split(","):               # "const T* img", "int N", ...
        *c_type, param = declaration.split()
        params.append((" ".join(c_type), param))
    return params


def _launch(source, name, total, dtype, index_dtype=np.int8, **args):
    """Run kernel ``name`` with one thread per element (``total`` of them).

    CUDA arguments are positional; the call sites name them, and this puts
    them in the order of the C signature, converting each ``int`` to np.int32.
    """
    params = _parameters(source, name)
    names = [p for _, p in params]
    if sorted(names) != sorted(args):
        raise TypeError(f"kernel {name}: expected arguments {names}, got {sorted(args)}")
    values = [np.int32(args[p]) if c_type == "int" else args[p] for c_type, p in params]
    if total == 0:
        return
    blocks = min((total + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK, MAX_BLOCKS)
    kernel = _kernel(source, name, _FLOAT_TYPES[np.dtype(dtype)], _INDEX_TYPES[np.dtype(index_dtype)])
    kernel((blocks,), (THREADS_PER_BLOCK,), tuple(values))


# -----------------------------------------------------------------------------
# Argument checks shared by the wrappers
# -----------------------------------------------------------------------------
def _device_array(a, name, ndim, dtypes=_FLOAT_TYPES):
    """A C-contiguous CuPy array of rank ``ndim`` and one of ``dtypes`` (what the kernels index)."""
    if not isinstance(a, cupy.ndarray):
        raise TypeError(f"{name} must be a cupy.ndarray in GPU memory, got "
                        f"{type(a).__module__}.{type(a).__name__}; move host data with "
                        "minicnn.backend.to_device first")
    if a.dtype not in dtypes:
        raise TypeError(f"{name} must be {' or '.join(str(np.dtype(d)) for d in dtypes)}, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return cupy.ascontiguousarray(a)


def _geometry(x_shape, kh, kw, stride, padding, dilation=(1, 1)):
    """The size arguments every kernel takes, by name."""
    N, C, H, W = (int(s) for s in x_shape)
    oh, ow = conv_output_shape((H, W), (kh, kw), stride, padding, dilation)
    return dict(N=N, C=C, H=H, W=W, kh=kh, kw=kw, oh=oh, ow=ow,
                sh=stride[0], sw=stride[1], ph=padding[0], pw=padding[1])


# -----------------------------------------------------------------------------
# im2col / col2im
# -----------------------------------------------------------------------------
def im2col(x, kh, kw, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """Unfold every receptive field of ``x`` (N, C, H, W) into a column: (C*kh*kw, N*oh*ow)."""
    x = _device_array(x, "im2col: x", 4)
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    dilation = pair(dilation, "dilation")
    dh, dw = dilation
    g = _geometry(x.shape, kh, kw, stride, padding, dilation)
    cols = cupy.empty((g["C"] * kh * kw, g["N"] * g["oh"] * g["ow"]), dtype=x.dtype)
    _launch("UNFOLD", "im2col", cols.size, x.dtype, img=x, cols=cols, dh=dh, dw=dw, **g)
    return cols


def col2im(cols, x_shape, kh, kw, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """The adjoint of :func:`im2col`: sum columns back into an (N, C, H, W) image."""
    cols = _device_array(cols, "col2im: cols", 2)
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    dilation = pair(dilation, "dilation")
    dh, dw = dilation
    g = _geometry(x_shape, kh, kw, stride, padding, dilation)
    expected = (g["C"] * kh * kw, g["N"] * g["oh"] * g["ow"])
    if cols.shape != expected:
        raise ValueError(f"col2im: expected cols of shape {expected} for x_shape "
                         f"{tuple(x_shape)}, got {cols.shape}")
    img = cupy.empty((g["N"], g["C"], g["H"], g["W"]), dtype=cols.dtype)
    _launch("UNFOLD", "col2im", img.size, cols.dtype, cols=cols, img=img, dh=dh, dw=dw, **g)
    return img


# -----------------------------------------------------------------------------
# Max pooling
# -----------------------------------------------------------------------------
def max_pool2d_forward(x, kh, kw, stride, padding):
    """Returns ``(y, argmax)``: the window maxima and which tap ``i*kw + j`` won
    (int8 when kh*kw fits, int32 otherwise — as in the reference)."""
    x = _device_array(x, "max_pool2d: x", 4)
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    g = _geometry(x.shape, kh, kw, stride, padding)
    y = cupy.empty((g["N"], g["C"], g["oh"], g["ow"]), dtype=x.dtype)
    argmax = cupy.empty(y.shape, dtype=np.int8 if kh * kw <= 127 else np.int32)
    _launch("MAX_POOL", "max_pool_forward", y.size, x.dtype, argmax.dtype,
            img=x, out=y, argmax=argmax, **g)
    return y, argmax


def max_pool2d_backward(gy, argmax, x_shape, kh, kw, stride, padding):
    """Route each output gradient to its window's winning input; overlaps add up."""
    gy = _device_array(gy, "max_pool2d_backward: gy", 4)
    argmax = _device_array(argmax, "max_pool2d_backward: argmax", 4, _INDEX_TYPES)
    if argmax.shape != gy.shape:
        raise ValueError(f"max_pool2d_backward: argmax {argmax.shape} and gy {gy.shape} differ")
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    g = _geometry(x_shape, kh, kw, stride, padding)
    dx = cupy.empty((g["N"], g["C"], g["H"], g["W"]), dtype=gy.dtype)
    _launch("MAX_POOL", "max_pool_backward", dx.size, gy.dtype, argmax.dtype,
            gy=gy, argmax=argmax, dx=dx, **g)
    return dx


# -----------------------------------------------------------------------------
# Fused: a convolution's bias + ReLU + max pooling, in one pass
# -----------------------------------------------------------------------------
def _fused_geometry(y_shape, kh, kw, stride):
    """The size arguments of the fused kernels, by name. y is (C, N, H, W), channel
    first; the windows have no padding and no dilation."""
    C, N, H, W = (int(s) for s in y_shape)
    oh, ow = conv_output_shape((H, W), (kh, kw), stride, (0, 0))
    return dict(N=N, C=C, H=H, W=W, kh=kh, kw=kw, oh=oh, ow=ow, sh=stride[0], sw=stride[1])


def bias_relu_max_pool2d_forward(y, bias, kh, kw, stride):
    """``(out, argmax)`` = max_pool2d(relu(y + bias)) for y in (C, N, H, W) order (see numpy_ref).

    Both (N, C, oh, ow); argmax is the winning tap, -1 where relu clipped the
    window (int8 when kh*kw fits, int32 otherwise — as in the reference).
    """
    y = _device_array(y, "bias_relu_max_pool2d: y", 4)
    stride = pair(stride, "stride")
    g = _fused_geometry(y.shape, kh, kw, stride)
    if bias is None:
        # no bias: add zeros (x + 0.0 is x, up to the sign of a zero that relu clips
        # anyway), so one kernel serves both cases
        bias = cupy.zeros(g["C"], dtype=y.dtype)
    else:
        bias = _device_array(bias, "bias_relu_max_pool2d: bias", 1).astype(y.dtype, copy=False)
        if bias.shape != (g["C"],):               # the kernel reads bias[c] for every channel c
            raise ValueError(f"bias_relu_max_pool2d: bias must have shape ({g['C']},), one value "
                             f"per channel of y {y.shape}, got {bias.shape}")
    out = cupy.empty((g["N"], g["C"], g["oh"], g["ow"]), dtype=y.dtype)
    argmax = cupy.empty(out.shape, dtype=np.int8 if kh * kw <= 127 else np.int32)
    _launch("FUSED_POOL", "bias_relu_max_pool_forward", out.size, y.dtype, argmax.dtype,
            y=y, bias=bias, out=out, argmax=argmax, **g)
    return out, argmax


def bias_relu_max_pool2d_backward(gout, argmax, y_shape, kh, kw, stride):
    """The gradient (C, N, H, W) with respect to y of :func:`bias_relu_max_pool2d_forward`."""
    gout = _device_array(gout, "bias_relu_max_pool2d_backward: gout", 4)
    argmax = _device_array(argmax, "bias_relu_max_pool2d_backward: argmax", 4, _INDEX_TYPES)
    if argmax.shape != gout.shape:
        raise ValueError(f"bias_relu_max_pool2d_backward: argmax {argmax.shape} and gout "
                         f"{gout.shape} differ")
    stride = pair(stride, "stride")
    g = _fused_geometry(y_shape, kh, kw, stride)
    expected = (g["N"], g["C"], g["oh"], g["ow"])
    if gout.shape != expected:                    # the kernel indexes gout with these sizes
        raise ValueError(f"bias_relu_max_pool2d_backward: expected gout of shape {expected} for "
                         f"y_shape {tuple(y_shape)}, got {gout.shape}")
    dy = cupy.empty((g["C"], g["N"], g["H"], g["W"]), dtype=gout.dtype)
    _launch("FUSED_POOL", "bias_relu_max_pool_backward", dy.size, gout.dtype, argmax.dtype,
            gout=gout, argmax=argmax, dy=dy, **g)
    return dy


# -----------------------------------------------------------------------------
# Average pooling
# -----------------------------------------------------------------------------
def avg_pool2d_forward(x, kh, kw, stride, padding, count_include_pad=True):
    """y[n,c,oy,ox] = mean of the kh×kw window (zero padding counts if count_include_pad)."""
    x = _device_array(x, "avg_pool2d: x", 4)
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    g = _geometry(x.shape, kh, kw, stride, padding)
    y = cupy.empty((g["N"], g["C"], g["oh"], g["ow"]), dtype=x.dtype)
    _launch("AVG_POOL", "avg_pool_forward", y.size, x.dtype,
            img=x, out=y, count_include_pad=bool(count_include_pad), **g)
    return y


def avg_pool2d_backward(gy, x_shape, kh, kw, stride, padding, count_include_pad=True):
    """Each input of a window receives gy / window size; overlapping windows add up."""
    gy = _device_array(gy, "avg_pool2d_backward: gy", 4)
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    g = _geometry(x_shape, kh, kw, stride, padding)
    dx = cupy.empty((g["N"], g["C"], g["H"], g["W"]), dtype=gy.dtype)
    _launch("AVG_POOL", "avg_pool_backward", dx.size, gy.dtype,
            gy=gy, dx=dx, count_include_pad=bool(count_include_pad), **g)
    return dx


# -----------------------------------------------------------------------------
# Depthwise convolution, directly
# -----------------------------------------------------------------------------
def _depthwise_geometry(x_shape, w, stride, padding, dilation):
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    C = int(x_shape[1])
    if w.ndim != 4 or w.shape[:2] != (C, 1):
        raise ValueError(f"depthwise_conv2d: w must be ({C}, 1, kh, kw) for {C} channels, got {w.shape}")
    g = _geometry(x_shape, int(w.shape[2]), int(w.shape[3]), stride, padding, dilation)
    return dict(g, dh=dilation[0], dw=dilation[1])


def depthwise_conv2d_forward(x, w, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """y (N, C, oh, ow): each channel convolved with its own filter w (C, 1, kh, kw)."""
    x = _device_array(x, "depthwise_conv2d_forward: x", 4)
    w = _device_array(w, "depthwise_conv2d_forward: w", 4).astype(x.dtype, copy=False)
    g = _depthwise_geometry(x.shape, w, stride, padding, dilation)
    y = cupy.empty((g["N"], g["C"], g["oh"], g["ow"]), dtype=x.dtype)
    _launch("DEPTHWISE", "depthwise_forward", y.size, x.dtype, img=x, w=w, out=y, **g)
    return y


def depthwise_conv2d_backward(gy, x, w, stride=(1, 1), padding=(0, 0), dilation=(1, 1), need_dx=True):
    """``(dx or None, dw)`` of :func:`depthwise_conv2d_forward` (gathers, no atomics)."""
    gy = _device_array(gy, "depthwise_conv2d_backward: gy", 4)
    x = _device_array(x, "depthwise_conv2d_backward: x", 4).astype(gy.dtype, copy=False)
    w = _device_array(w, "depthwise_conv2d_backward: w", 4).astype(gy.dtype, copy=False)
    g = _depthwise_geometry(x.shape, w, stride, padding, dilation)
    if gy.shape != (g["N"], g["C"], g["oh"], g["ow"]):
        raise ValueError(f"depthwise_conv2d_backward: gy {gy.shape} does not match the output "
                         f"{(g['N'], g['C'], g['oh'], g['ow'])}")
    dweight = cupy.empty(w.shape, dtype=gy.dtype)
    _launch("DEPTHWISE", "depthwise_backward_weight", dweight.size, gy.dtype, gy=gy, img=x,
            dweight=dweight, **g)
    dx = None
    if need_dx:
        dx = cupy.empty(x.shape, dtype=gy.dtype)
        _launch("DEPTHWISE", "depthwise_backward_input", dx.size, gy.dtype, gy=gy, w=w, dx=dx, **g)
    return dx, dweight


# -----------------------------------------------------------------------------
# A plain convolution that keeps its input, not its columns (nn.ChunkedConv2d)
# -----------------------------------------------------------------------------
# On the CPU, numba's conv2d_forward / conv2d_backward take a few images at a time so that
# the columns stay in cache. A GPU wants the opposite — the whole batch in one launch and
# one cuBLAS product — but the other half of the idea pays here too: ChunkedConv2dFn with
# these kernels keeps x (not the 9x larger columns) for the backward, which unfolds x again
# with the CUDA im2col above; GPU memory, not time, is what that saves. The arithmetic is
# numpy_ref.conv2d_forward / _backward's.
def conv2d_forward(x, w, bias, stride, padding, dilation):
    """numpy_ref.conv2d_forward: im2col (CUDA) and one product (cuBLAS) over the whole batch."""
    x = _device_array(x, "conv2d_forward: x", 4)
    w = _device_array(w, "conv2d_forward: weight", 4).astype(x.dtype, copy=False)
    N, C = x.shape[:2]
    Cout, Cw, kh, kw = w.shape
    if Cw != C:
        raise ValueError(f"conv2d_forward: x has {C} channels but the weight {tuple(w.shape)} "
                         f"expects {Cw} (this kernel has no groups)")
    cols = im2col(x, kh, kw, stride, padding, dilation)                  # (C*kh*kw, N*oh*ow)
    oh, ow = conv_output_shape(x.shape[2:], (kh, kw), pair(stride, "stride"),
                               pair(padding, "padding"), pair(dilation, "dilation"))
    y = (w.reshape(Cout, -1) @ cols).reshape(Cout, N, oh, ow)
    if bias is not None:
        y += cupy.ascontiguousarray(bias).astype(x.dtype, copy=False).reshape(Cout, 1, 1, 1)
    return cupy.ascontiguousarray(y.transpose(1, 0, 2, 3))              # (N, Cout, oh, ow)


def conv2d_backward(gy, x, w, stride, padding, dilation, need_dx=True):
    """numpy_ref.conv2d_backward: the columns made again from x, dW and dX by cuBLAS, col2im (CUDA)."""
    x = _device_array(x, "conv2d_backward: x", 4)
    gy = _device_array(gy, "conv2d_backward: gy", 4).astype(x.dtype, copy=False)
    w = _device_array(w, "conv2d_backward: weight", 4).astype(x.dtype, copy=False)
    Cout, _, kh, kw = w.shape
    cols = im2col(x, kh, kw, stride, padding, dilation)
    if gy.shape[:2] != (x.shape[0], Cout) or gy.shape[0] * gy.shape[2] * gy.shape[3] != cols.shape[1]:
        raise ValueError(f"conv2d_backward: gy {gy.shape} does not match the output of x "
                         f"{x.shape} and the weight {w.shape}")
    dy = cupy.ascontiguousarray(gy.transpose(1, 0, 2, 3)).reshape(Cout, -1)   # (Cout, N*oh*ow)
    dw = (dy @ cols.T).reshape(w.shape)
    db = dy.sum(axis=1)
    dx = None
    if need_dx:
        dx = col2im(cupy.ascontiguousarray(w.reshape(Cout, -1).T @ dy), x.shape, kh, kw,
                    stride, padding, dilation)
    return dx, dw, db


# -----------------------------------------------------------------------------
# Batch norm and ReLU: the optional one-pass kernels (kernels/contract.py)
# -----------------------------------------------------------------------------
# numpy_ref composes batch norm from array operations: on a GPU each is a kernel launch
# and a trip through memory. Here the per-channel sums are CuPy's reductions (its own
# tuned, deterministic kernels) and everything elementwise is one launch of the CUDA C
# above. The numbers are numpy_ref's expressions; the last bits may differ (the GPU's
# reductions add in another order, and nvcc may fuse a multiply and an add).
def _channels(a, name):
    """(N, C) or (N, C, H, W) -> a contiguous (N, C, L) view (L = H*W, or 1)."""
    if not isinstance(a, cupy.ndarray):
        raise TypeError(f"{name} must be a cupy.ndarray in GPU memory, got "
                        f"{type(a).__module__}.{type(a).__name__}; move host data with "
                        "minicnn.backend.to_device first")
    if a.ndim not in (2, 4) or a.dtype not in _FLOAT_TYPES:
        raise ValueError(f"{name} must be a float32/float64 (N, C) or (N, C, H, W) array, "
                         f"got {a.dtype} {a.shape}")
    a = cupy.ascontiguousarray(a)
    return a.reshape(a.shape[0], a.shape[1], -1)


def _per_channel_vector(v, C, dtype, default):
    """weight or bias (C,) on the device in ``dtype`` — or ``default`` everywhere for None."""
    if v is None:
        return cupy.full(C, default, dtype=dtype)
    return cupy.ascontiguousarray(v).astype(dtype, copy=False).reshape(C)


def _normalize(x3, mean, inv_std, weight, bias, keep_xhat):
    N, C, L = x3.shape
    y = cupy.empty(x3.shape, dtype=x3.dtype)
    xhat = cupy.empty(x3.shape if keep_xhat else (1,), dtype=x3.dtype)
    _launch("NORM", "batch_norm_normalize", y.size, x3.dtype, x=x3,
            mean=cupy.ascontiguousarray(mean).astype(x3.dtype, copy=False),
            inv_std=inv_std, weight=_per_channel_vector(weight, C, x3.dtype, 1),
            bias=_per_channel_vector(bias, C, x3.dtype, 0), y=y, xhat=xhat,
            N=N, C=C, L=L, keep_xhat=int(bool(keep_xhat)))
    return y, (xhat if keep_xhat else None)


def batch_norm_train_forward(x, weight, bias, eps):
    """numpy_ref.batch_norm_train_forward: CuPy's reductions for the statistics, then one
    launch for xhat and y."""
    x3 = _channels(x, "batch_norm_train_forward: x")
    mean, var = x3.mean(axis=(0, 2)), x3.var(axis=(0, 2))          # numpy_ref's mean and biased var
    inv_std = (1.0 / cupy.sqrt(var + eps)).astype(x3.dtype)
    y, xhat = _normalize(x3, mean, inv_std, weight, bias, True)
    return y.reshape(x.shape), xhat.reshape(x.shape), mean, var, inv_std


def batch_norm_train_backward(gy, xhat, inv_std, weight, need_dx=True):
    """numpy_ref.batch_norm_train_backward: the two sums by CuPy, dx in one launch."""
    gy3 = _channels(gy, "batch_norm_train_backward: gy")
    xhat3 = _channels(xhat, "batch_norm_train_backward: xhat").astype(gy3.dtype, copy=False)
    if xhat3.shape != gy3.shape:
        raise ValueError(f"batch_norm_train_backward: gy {gy.shape} and xhat {xhat.shape} differ")
    N, C, L = gy3.shape
    dbias, dweight = gy3.sum(axis=(0, 2)), (gy3 * xhat3).sum(axis=(0, 2))
    dx = None
    if need_dx:
        w = _per_channel_vector(weight, C, gy3.dtype, 1)
        m = N * L
        dx = cupy.empty(gy3.shape, dtype=gy3.dtype)
        _launch("NORM", "batch_norm_backward_input", dx.size, gy3.dtype, gy=gy3, xhat=xhat3,
                inv_std=cupy.ascontiguousarray(inv_std).astype(gy3.dtype, copy=False), weight=w,
                mean_g=w * dbias / m, mean_g_xhat=w * dweight / m, dx=dx, N=N, C=C, L=L)
        dx = dx.reshape(gy.shape)
    return dx, dweight, dbias


def batch_norm_eval_forward(x, weight, bias, running_mean, running_var, eps, need_xhat=True):
    """numpy_ref.batch_norm_eval_forward in one launch."""
    x3 = _channels(x, "batch_norm_eval_forward: x")
    inv_std = (1.0 / cupy.sqrt(running_var + eps)).astype(x3.dtype)   # numpy_ref's expression
    y, xhat = _normalize(x3, running_mean, inv_std, weight, bias, need_xhat)
    return y.reshape(x.shape), (xhat.reshape(x.shape) if need_xhat else None), inv_std


def _rows_columns(a):
    """Any shape as (rows, columns) for the elementwise kernels (int32 sizes each)."""
    rows = a.shape[0] if a.ndim and a.shape[0] else 1
    return rows, a.size // rows


def relu_forward(x, need_mask=True):
    """numpy_ref.relu_forward in one launch: y, and the bool mask if a backward wants it."""
    if not isinstance(x, cupy.ndarray):
        raise TypeError(f"relu_forward: x must be a cupy.ndarray in GPU memory, got {type(x).__name__}")
    if x.dtype not in _FLOAT_TYPES:
        raise TypeError(f"relu_forward: x must be float32 or float64, got {x.dtype}")
    x = cupy.ascontiguousarray(x)
    y = cupy.empty(x.shape, dtype=x.dtype)
    passes = cupy.empty(x.shape if need_mask else (1,), dtype=np.bool_)
    rows, columns = _rows_columns(x)
    _launch("NORM", "relu_forward", x.size, x.dtype, x=x, y=y, passes=passes, rows=rows,
            columns=columns, keep_mask=int(bool(need_mask)))
    return y, (passes if need_mask else None)


def relu_backward(gy, passes):
    """numpy_ref.relu_backward (dx = gy * passes) in one launch."""
    if not isinstance(gy, cupy.ndarray) or not isinstance(passes, cupy.ndarray):
        raise TypeError("relu_backward: gy and passes must be cupy.ndarray arrays in GPU memory")
    if gy.dtype not in _FLOAT_TYPES or passes.dtype != np.bool_ or gy.shape != passes.shape:
        raise ValueError(f"relu_backward: expected a float gy and a bool mask of one shape, got "
                         f"{gy.dtype} {gy.shape} and {passes.dtype} {passes.shape}")
    gy, passes = cupy.ascontiguousarray(gy), cupy.ascontiguousarray(passes)
    dx = cupy.empty(gy.shape, dtype=gy.dtype)
    rows, columns = _rows_columns(gy)
    _launch("NORM", "relu_backward", gy.size, gy.dtype, gy=gy, passes=passes, dx=dx, rows=rows,
            columns=columns)
    return dx


# -----------------------------------------------------------------------------
# Scatter-add and special functions: CuPy has them
# -----------------------------------------------------------------------------
def scatter_add(dst, index, values):
    """``dst[index] += values`` in place, repeated indices adding up (numpy_ref's ``add.at``).

    ``cupyx.scatter_add`` does it with atomic additions, so a position selected
    several times receives every contribution. (The order of those additions is
    not fixed: the last bits may differ from NumPy's when an index repeats.)
    """
    if not isinstance(dst, cupy.ndarray):
        raise TypeError(f"scatter_add: dst must be a cupy.ndarray, got {type(dst).__name__}")
    cupyx.scatter_add(dst, index, values)


def erf(x):
    """The error function, elementwise (for the exact GELU): ``cupyx.scipy.special.erf``."""
    if not isinstance(x, cupy.ndarray):
        raise TypeError(f"erf: x must be a cupy.ndarray in GPU memory, got {type(x).__name__}")
    if x.dtype not in _FLOAT_TYPES:
        raise TypeError(f"erf: x must be float32 or float64, got {x.dtype}")
    return cupyx.scipy.special.erf(x).astype(x.dtype, copy=False)


# -----------------------------------------------------------------------------
# Integer matrix product (int8 inference)
# -----------------------------------------------------------------------------
def qgemm_u8s8(w_q, cols, x_zero_point):
    """acc[m, l] = sum_k w_q[m, k] * (cols[k, l] - x_zero_point), exactly, in int32 (see numpy_ref).

    CuPy's integer matmul (its own kernel; cuBLAS has no int8 GEMM through
    CuPy's API): int32 operands, exact integer sums.
    """
    w_q = _device_array(w_q, "qgemm_u8s8: w_q", 2, (np.int8,))
    cols = _device_array(cols, "qgemm_u8s8: cols", 2, (np.uint8,))
    if w_q.shape[1] != cols.shape[0]:
        raise ValueError(f"qgemm_u8s8: shapes {w_q.shape} and {cols.shape} do not multiply")
    x = cols.astype(cupy.int32) - cupy.int32(x_zero_point)
    return cupy.matmul(w_q.astype(cupy.int32), x).astype(cupy.int32)
