"""im2col as a differentiable operation (PyTorch calls it ``unfold``).

Forward copies every receptive field into a column; backward is col2im, the
scatter-add that sends each column entry back to the pixel it came from.
"""
from __future__ import annotations

from ..backend import current
from ..tensor import Function, Tensor, _shape_str
from .conv import _check_window_fits, _pair


class Unfold(Function):
    """cols = im2col(x):  (N, C, H, W) -> (C*kh*kw, N*oh*ow).   dx = col2im(dcols)."""

    def forward(self, x, kernel_size, stride, padding, dilation):
        self.args = (x.shape, *kernel_size, stride, padding, dilation)
        return current.kernels.im2col(x, *kernel_size, stride, padding, dilation)

    def backward(self, gcols):
        return current.kernels.col2im(gcols, *self.args)


def unfold(x: Tensor, kernel_size, stride=1, padding=0, dilation=1) -> Tensor:
    """Differentiable im2col. Returns (C*kh*kw, N*oh*ow) — minicnn's column layout."""
    if x.ndim != 4:
        raise ValueError(f"unfold: expected a 4-D input (N, C, H, W), got shape {_shape_str(x.shape)}")
    k = _pair(kernel_size, "unfold: kernel_size", 1)
    s, p, d = _pair(stride, "unfold: stride", 1), _pair(padding, "unfold: padding", 0), \
        _pair(dilation, "unfold: dilation", 1)
    _check_window_fits("unfold", x.shape[2:], k, p, d)
    return Unfold.apply(x, kernel_size=k, stride=s, padding=p, dilation=d)
