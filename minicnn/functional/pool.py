"""Pooling: max, average and adaptive average, each with its backward.

A pooling window slides over each channel independently (no weights), so the
output size follows the same formula as a convolution:
``out = floor((in + 2*pad - k) / stride) + 1`` with ``stride = k`` by default.

Both backwards are linear in the output gradient (with the winners of a max
fixed), so with ``create_graph=True`` (``backward_graph``) they are written as
Functions whose own backward is known: routing to the winners is a scatter
(:class:`~minicnn.functional.shape.ScatterAddFn`, whose gradient is indexing);
spreading an average back is :class:`AvgPool2dBackwardFn`, whose gradient is
the average pooling itself.
"""
from __future__ import annotations

import numbers

from ..backend import current
from ..autograd.tensor import Function, Tensor
from .helpers import check_4d, check_window_fits, pair
from .shape import ScatterAddFn


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

    def backward_graph(self, gy):
        """Scatter gy to the winners: ``dx.flat[winner[n, c, i, j]] += gy[n, c, i, j]``."""
        xp = current.xp
        argmax, = self.saved_tensors                        # tap t = a*kw + b of each window
        N, C, H, W = self.x_shape
        kh, kw = self.kernel_size
        oh, ow = argmax.shape[2:]
        row = xp.arange(oh).reshape(oh, 1) * self.stride[0] + argmax // kw - self.padding[0]
        col = xp.arange(ow).reshape(1, ow) * self.stride[1] + argmax % kw - self.padding[1]
        plane = xp.arange(N * C).reshape(N, C, 1, 1)      # which (n, c) image plane
        winner = ((plane * H + row) * W + col).reshape(-1)  # flat index into x, (N*C*oh*ow,)
        dx = ScatterAddFn.apply(gy.reshape(-1), index=winner, shape=(N * C * H * W,))
        return dx.reshape(self.x_shape)


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

    def backward_graph(self, gy):
        return AvgPool2dBackwardFn.apply(gy, x_shape=self.x_shape, kernel_size=self.kernel_size,
                                         stride=self.stride, padding=self.padding,
                                         count_include_pad=self.count_include_pad)


class AvgPool2dBackwardFn(Function):
    """dx = the average pooling's backward, as a Function of gy (``create_graph=True``).

    Each window's gy[i, j] / D_ij is added to every input of the window. It is
    linear in gy, and its adjoint is the pooling itself: for a gradient h of
    x's shape, d gy[i, j] = (1/D_ij) * sum of h over window (i, j) = avg_pool2d(h).
    """

    def forward(self, gy, x_shape, kernel_size, stride, padding, count_include_pad):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.count_include_pad = count_include_pad
        return current.kernels.avg_pool2d_backward(gy, x_shape, *kernel_size, stride, padding,
                                                   count_include_pad)

    def backward(self, h):
        return current.kernels.avg_pool2d_forward(h, *self.kernel_size, self.stride, self.padding,
                                                  self.count_include_pad)

    def backward_graph(self, h):
        return AvgPool2dFn.apply(h, kernel_size=self.kernel_size, stride=self.stride,
                                 padding=self.padding, count_include_pad=self.count_include_pad)


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
        N, C, H, W = x.shape
        oh, ow = output_size
        self.x_shape = x.shape
        self.rows, self.cols = adaptive_bins(H, oh), adaptive_bins(W, ow)
        return adaptive_average(x, self.rows, self.cols)

    def backward(self, gy):
        return adaptive_average_backward(gy, self.x_shape, self.rows, self.cols)

    def backward_graph(self, gy):
        return AdaptiveAvgPool2dBackwardFn.apply(gy, x_shape=self.x_shape, rows=self.rows, cols=self.cols)


class AdaptiveAvgPool2dBackwardFn(Function):
    """dx = the adaptive average's backward, as a Function of gy (``create_graph=True``).

    Linear in gy; its adjoint is the adaptive average itself (as for AvgPool2dBackwardFn).
    """

    def forward(self, gy, x_shape, rows, cols):
        self.rows, self.cols = rows, cols
        return adaptive_average_backward(gy, x_shape, rows, cols)

    def backward(self, h):
        return adaptive_average(h, self.rows, self.cols)

    def backward_graph(self, h):
        return AdaptiveAvgPool2dFn.apply(h, output_size=(len(self.rows), len(self.cols)))


def adaptive_average(x, rows, cols):
    """The adaptive average pooling of an array over the bins ``rows`` x ``cols``."""
    xp = current.xp
    N, C = x.shape[:2]
    y = xp.empty((N, C, len(rows), len(cols)), dtype=x.dtype)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            y[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return y


def adaptive_average_backward(gy, x_shape, rows, cols):
    """Each pixel of bin (i, j) receives ``gy[i, j] / |bin|`` (overlaps add up)."""
    xp = current.xp
    dx = xp.zeros(x_shape, dtype=gy.dtype)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
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
