"""Depthwise convolution computed directly: each channel filtered on its own, no im2col.

A convolution with ``groups = C`` input channels and ``C`` filters (one per
channel: MobileNet's depthwise step) is ``C`` independent little convolutions.
:class:`~minicnn.functional.conv.Conv2dFn` handles it as G = C matrix products
of one row each over im2col columns — correct (the tests compare the two), but
every input value is copied kh*kw times to be multiplied by a single weight.
Here each kernel tap is one strided slice of the padded input times that tap's
weights (``kernels/numpy_ref.py``'s ``depthwise_conv2d_forward`` is the readable
loop; numba runs it a plane per thread).

``mc.fuse(model)`` swaps such a ``Conv2d`` for an ``nn.DepthwiseConv2d`` that
calls :func:`depthwise_conv2d`; nothing calls it behind your back.
"""
from __future__ import annotations

from ..backend import current
from ..autograd.tensor import Function, Tensor
from .conv import check_conv2d_args


class DepthwiseConv2dFn(Function):
    """y = depthwise_conv2d(x, w) + b.

    Shapes: x (N, C, H, W), w (C, 1, kh, kw), b (C,) or None, y (N, C, oh, ow)::

        y[n, c, oy, ox] = b[c] + sum_ij w[c, 0, i, j] * x_padded[n, c, oy*sh + i*dh, ox*sw + j*dw]

    Backward (each tap is ``y += w_ij * slice_ij(x_padded)``)::

        dw[c, 0, i, j] = sum_{n, oy, ox} gy * slice_ij(x_padded)
        dx             = the slices of dx_padded += w_ij * gy, padding cut off
        db[c]          = sum_{n, oy, ox} gy
    """

    def forward(self, x, w, b, stride, padding, dilation):
        y = current.kernels.depthwise_conv2d_forward(x, w, stride, padding, dilation)   # (N, C, oh, ow)
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        self.save_for_backward(x, w)
        self.conv = (stride, padding, dilation)
        return y

    def backward(self, gy):
        x, w = self.saved_tensors
        needs = self.needs_input_grad
        dx, dw = current.kernels.depthwise_conv2d_backward(gy, x, w, *self.conv, need_dx=needs[0])
        db = gy.sum(axis=(0, 2, 3)) if len(needs) > 2 and needs[2] else None
        return dx, (dw if needs[1] else None), db


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor = None, stride=1, padding=0,
                     dilation=1) -> Tensor:
    """``conv2d(x, weight, bias, stride, padding, dilation, groups=C)`` for a weight (C, 1, kh, kw):
    the same numbers, computed without im2col."""
    C = x.shape[1] if x.ndim == 4 else None
    if weight.ndim != 4 or weight.shape[0] != C or weight.shape[1] != 1:
        raise ValueError(f"depthwise_conv2d: expected a weight of shape ({C}, 1, kh, kw) for an input "
                         f"with {C} channels, got {tuple(weight.shape)}")
    stride, padding, dilation = check_conv2d_args("depthwise_conv2d", x, weight, bias, stride, padding,
                                                  dilation, C)
    return DepthwiseConv2dFn.apply(x, weight, bias, stride=stride, padding=padding, dilation=dilation)
