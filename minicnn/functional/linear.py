"""The fully connected (affine) layer as one Function."""
from __future__ import annotations

import math

from ..autograd.tensor import Function, Tensor
from .helpers import matmul, shape_str


class LinearFn(Function):
    """y = x W^T + b   for x (N, in), W (out, in), b (out,) -> y (N, out).

    Backward:  dx = gy W   (N, out)(out, in);   dW = gy^T x   (out, N)(N, in);
    db = sum of gy over the batch. Leading batch axes (..., in) are flattened first.
    """

    def forward(self, x, weight, bias):
        self.x_shape = x.shape
        x2 = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # (N, in); not -1: in may be 0
        y = matmul(x2, weight.T)                              # (N, out)
        if bias is not None:
            y += bias
        self.save_for_backward(x2, weight)
        return y.reshape(*x.shape[:-1], weight.shape[0])

    def backward(self, gy):
        x2, weight = self.saved_tensors
        g2 = gy.reshape(math.prod(gy.shape[:-1]), gy.shape[-1])   # (N, out)
        dx = matmul(g2, weight).reshape(self.x_shape) if self.needs_input_grad[0] else None
        dw = matmul(g2.T, x2) if self.needs_input_grad[1] else None
        db = g2.sum(axis=0) if self.needs_input_grad[2] else None
        return dx, dw, db

    def backward_graph(self, gy):
        """The same three formulas with Tensor operations (``create_graph=True``)."""
        x, weight, bias = self.inputs
        g2 = gy.reshape(-1, gy.shape[-1])                     # (N, out)
        dx = (g2 @ weight).reshape(self.x_shape) if self.needs_input_grad[0] else None
        dw = g2.T @ x.reshape(-1, x.shape[-1]) if self.needs_input_grad[1] else None
        db = g2.sum(axis=0) if self.needs_input_grad[2] else None
        return dx, dw, db


def linear(x: Tensor, weight: Tensor, bias: Tensor = None) -> Tensor:
    """PyTorch's ``F.linear``: y = x @ weight.T + bias."""
    if x.ndim < 1 or weight.ndim != 2:
        raise ValueError(f"linear: expected input (..., in_features) and weight (out, in), got "
                         f"{shape_str(x.shape)} and {shape_str(weight.shape)}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input has {x.shape[-1]} features (shape {shape_str(x.shape)}) "
                         f"but the weight {shape_str(weight.shape)} expects {weight.shape[1]}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear: expected a bias of shape ({weight.shape[0]},), got {shape_str(bias.shape)}")
    if weight.dtype != x.dtype:
        raise TypeError(f"linear: input is {x.dtype} but weight is {weight.dtype}; use one dtype")
    return LinearFn.apply(x, weight, bias)
