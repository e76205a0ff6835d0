"""Batch normalisation with its closed-form backward.

Per channel c, over the m values it takes in a batch (N for (N, C) inputs,
N*H*W for (N, C, H, W) inputs)::

    mu = mean(x),  var = mean((x - mu)^2)          (biased: divide by m)
    xhat = (x - mu) / sqrt(var + eps)
    y = gamma * xhat + beta

Training uses the batch's mu and var, and updates the running estimates the
way PyTorch does (momentum 0.1; the *unbiased* variance, m/(m-1) * var, goes
into running_var). Evaluation normalises with the running estimates instead.

Backward in training. mu and var depend on every x, so the chain rule through
them collapses to (with g = dL/dxhat = gy * gamma, means over the m values)::

    dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)
    dgamma = sum(gy * xhat),   dbeta = sum(gy)

In evaluation mu and var are constants: dx = gy * gamma / sqrt(running_var + eps).
"""
from __future__ import annotations

from ..backend import current
from ..autograd.tensor import Function, Tensor
from .helpers import shape_str


class BatchNormFn(Function):
    """y = gamma * (x - mu) / sqrt(var + eps) + beta, per channel (axis 1)."""

    def forward(self, x, weight, bias, running_mean, running_var, training, momentum, eps):
        xp = current.xp
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)          # broadcast per channel
        if training:
            m = x.size // x.shape[1]
            mean = x.mean(axis=axes)
            var = x.var(axis=axes)
            if running_mean is not None:
                running_mean *= (1 - momentum)
                running_mean += momentum * mean
                running_var *= (1 - momentum)
                running_var += momentum * var * (m / (m - 1))
        else:
            mean, var = running_mean, running_var
        inv_std = (1.0 / xp.sqrt(var + eps)).astype(x.dtype)           # (C,)
        xhat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
        self.save_for_backward(xhat, inv_std, weight)                   # (x's shape), (C,), (C,) or None
        self.training, self.axes, self.shape = training, axes, shape
        y = xhat
        if weight is not None:
            y = y * weight.reshape(shape)
        if bias is not None:
            y = y + bias.reshape(shape)
        return y

    def backward(self, gy):
        xhat, inv_std, weight = self.saved_tensors
        training, axes, shape = self.training, self.axes, self.shape
        g = gy if weight is None else gy * weight.reshape(shape)       # dL/dxhat
        dx = None
        if self.needs_input_grad[0]:
            if training:
                dx = (g - g.mean(axis=axes, keepdims=True)
                      - xhat * (g * xhat).mean(axis=axes, keepdims=True)) * inv_std.reshape(shape)
            else:
                dx = g * inv_std.reshape(shape)
        dweight = (gy * xhat).sum(axis=axes) if self.needs_input_grad[1] else None
        dbias = gy.sum(axis=axes) if self.needs_input_grad[2] else None
        return dx, dweight, dbias


def batch_norm(x: Tensor, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5) -> Tensor:
    """PyTorch's ``F.batch_norm``: x (N, C) or (N, C, H, W); running stats (C,) or None."""
    if x.ndim not in (2, 4):
        raise ValueError(f"batch_norm: expected a 2-D (N, C) or 4-D (N, C, H, W) input, "
                         f"got shape {shape_str(x.shape)}")
    C = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (C,):
            raise ValueError(f"batch_norm: {name} should have shape ({C},) for an input with "
                             f"{C} channels, got {shape_str(t.shape)}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: give both running_mean and running_var, or neither")
    if not training and running_mean is None:
        raise ValueError("batch_norm: evaluation mode needs running_mean and running_var")
    if training and x.numel() // C <= 1:
        raise ValueError(f"batch_norm: training needs more than one value per channel to compute "
                         f"a variance, got input shape {shape_str(x.shape)}")
    rm = None if running_mean is None else running_mean.data
    rv = None if running_var is None else running_var.data
    return BatchNormFn.apply(x, weight, bias, running_mean=rm, running_var=rv,
                           training=bool(training), momentum=float(momentum), eps=float(eps))
