"""im2col as a differentiable operation (PyTorch calls it ``unfold``).

Forward copies every receptive field into a column; backward is col2im, the
scatter-add that sends each column entry back to the pixel it came from.
"""
from __future__ import annotations

from ..backend import current
from ..autograd.tensor import Function, Tensor
from .helpers import check_4d, check_window_fits, pair


class UnfoldFn(Function):
    """cols = im2col(x):  (N, C, H, W) -> (C*kh*kw, N*oh*ow).   dx = col2im(dcols)."""

    def forward(self, x, kernel_size, stride, padding, dilation):
        self.x_shape, self.kernel_size = x.shape, kernel_size
        self.stride, self.padding, self.dilation = stride, padding, dilation
        return current.kernels.im2col(x, *kernel_size, stride, padding, dilation)

    def backward(self, gcols):
        # nothing saved: col2im needs only the shapes
        return current.kernels.col2im(gcols, self.x_shape, *self.kernel_size, self.stride,
                                      self.padding, self.dilation)


def unfold(x: Tensor, kernel_size, stride=1, padding=0, dilation=1) -> Tensor:
    """Differentiable im2col. Returns (C*kh*kw, N*oh*ow) — minicnn's column layout."""
    check_4d("unfold", x)
    k = pair(kernel_size, "unfold: kernel_size", 1)
    s, p, d = pair(stride, "unfold: stride", 1), pair(padding, "unfold: padding", 0), \
        pair(dilation, "unfold: dilation", 1)
    check_window_fits("unfold", x.shape[2:], k, p, d)
    return UnfoldFn.apply(x, kernel_size=k, stride=s, padding=p, dilation=d)
