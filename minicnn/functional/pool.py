"""Pooling: max, average and adaptive average, each with its backward.

A pooling window slides over each channel independently (no weights), so the
output size follows the same formula as a convolution:
``out = floor((in + 2*pad - k) / stride) + 1`` with ``stride = k`` by default.
"""
from __future__ import annotations

import numbers

from ..backend import current
from ..autograd.tensor import Function, Tensor
from .helpers import check_4d, check_window_fits, pair


def _pool_args(op, x, kernel_size, stride, padding):
    check_4d(op, x)
    k = pair(kernel_size, f"{op}: kernel_size", 1)
    s = k if stride is None else pair(stride, f"{op}: stride", 1)
    p = pair(padding, f"{op}: padding", 0)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"{op}: padding {p} must be at most half the kernel size {k} "
                         "(otherwise a window could hold nothing but padding)")
    check_window_fits(op, x.shape[2:], k, p, (1, 1))
    return k, s, p


class MaxPool2dFn(Function):
    """y[n,c,i,j] = max over the kh×kw window at (i*sh - ph, j*sw - pw).

    Backward: the gradient flows only to the argmax of each window (the first
    maximum on ties, like PyTorch); an input in several overlapping windows
    collects the sum.

    NaN, as PyTorch: a window holding a NaN pools to NaN, and its gradient goes
    to that NaN (the window's last, if several) — a NaN is never dropped, so
    the training loop's NaN guard sees it.
    """

    def forward(self, x, kernel_size, stride, padding):
        self.x_shape, self.kernel_size, self.stride, self.padding = x.shape, kernel_size, stride, padding
        y, argmax = current.kernels.max_pool2d_forward(x, *kernel_size, stride, padding)
        self.save_for_backward(argmax)                  # (N, C, oh, ow): the winner's flat index
        return y

    def backward(self, gy):
        argmax, = self.saved_tensors
        return current.kernels.max_pool2d_backward(gy, argmax, self.x_shape, *self.kernel_size,
                                                   self.stride, self.padding)


class AvgPool2dFn(Function):
    """y[n,c,i,j] = (1/D) * sum of the window, D = kh*kw (or the count of real,
    non-padding pixels when ``count_include_pad=False``).

    Backward: every input of the window receives gy / D.
    """

    def forward(self, x, kernel_size, stride, padding, count_include_pad):
        self.x_shape, self.kernel_size, self.stride, self.padding = x.shape, kernel_size, stride, padding
        self.count_include_pad = count_include_pad
        return current.kernels.avg_pool2d_forward(x, *kernel_size, stride, padding, count_include_pad)

    def backward(self, gy):
        # nothing saved: the average's gradient depends only on the shapes
        return current.kernels.avg_pool2d_backward(gy, self.x_shape, *self.kernel_size, self.stride,
                                                   self.padding, self.count_include_pad)


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0) -> Tensor:
    k, s, p = _pool_args("max_pool2d", x, kernel_size, stride, padding)
    return MaxPool2dFn.apply(x, kernel_size=k, stride=s, padding=p)


def avg_pool2d(x: Tensor, kernel_size, stride=None, padding=0, count_include_pad=True) -> Tensor:
    k, s, p = _pool_args("avg_pool2d", x, kernel_size, stride, padding)
    return AvgPool2dFn.apply(x, kernel_size=k, stride=s, padding=p,
                           count_include_pad=bool(count_include_pad))


def adaptive_bins(size, out):
    """PyTorch's adaptive windows: bin i covers [floor(i*size/out), ceil((i+1)*size/out))."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


class AdaptiveAvgPool2dFn(Function):
    """y[n,c,i,j] = mean of x over rows bin_i and columns bin_j (see adaptive_bins).

    The bins cover the input exactly and may overlap by one pixel when the sizes
    do not divide. Backward: each pixel of bin (i, j) receives ``gy[i, j] / |bin|``.
    """

    def forward(self, x, output_size):
        xp = current.xp
        N, C, H, W = x.shape
        oh, ow = output_size
        self.x_shape = x.shape
        self.rows, self.cols = adaptive_bins(H, oh), adaptive_bins(W, ow)
        y = xp.empty((N, C, oh, ow), dtype=x.dtype)
        for i, (r0, r1) in enumerate(self.rows):
            for j, (c0, c1) in enumerate(self.cols):
                y[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
        return y

    def backward(self, gy):
        xp = current.xp
        dx = xp.zeros(self.x_shape, dtype=gy.dtype)
        for i, (r0, r1) in enumerate(self.rows):
            for j, (c0, c1) in enumerate(self.cols):
                area = (r1 - r0) * (c1 - c0)
                dx[:, :, r0:r1, c0:c1] += (gy[:, :, i, j] / area)[:, :, None, None]
        return dx


def adaptive_avg_pool2d(x: Tensor, output_size) -> Tensor:
    """Average-pool to a fixed (oh, ow), whatever the input size (``1`` = global pooling)."""
    check_4d("adaptive_avg_pool2d", x)
    H, W = x.shape[2:]
    if isinstance(output_size, numbers.Integral):
        output_size = (output_size, output_size)
    oh, ow = (H if output_size[0] is None else output_size[0],
              W if output_size[1] is None else output_size[1])
    if not (isinstance(oh, numbers.Integral) and isinstance(ow, numbers.Integral) and oh >= 1 and ow >= 1):
        raise ValueError(f"adaptive_avg_pool2d: output_size must be positive ints, got {output_size!r}")
    return AdaptiveAvgPool2dFn.apply(x, output_size=(int(oh), int(ow)))
