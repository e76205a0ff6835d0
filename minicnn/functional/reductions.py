"""Reductions: sum, mean, max (and var built from them).

A reduction over some axes maps many inputs to one output, so in backward
the output gradient is *spread back* over the reduced axes: copied for a sum,
divided by the count for a mean, routed to the maximum for a max.
"""
from __future__ import annotations

import builtins

from ..backend import current
from ..autograd.tensor import Function


def _normalize_axes(axis, ndim, op):
    """None -> all axes; int or tuple -> a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < builtins.max(ndim, 1):
            raise ValueError(f"{op}: axis {a} is out of range for a tensor with {ndim} dimensions")
        out.append(a % ndim if ndim else 0)
    return tuple(sorted(out))


def _expand(g, x_shape, axes, keepdims):
    """Put back the reduced axes (as size 1) so ``g`` broadcasts against the input."""
    if keepdims or not axes:
        return g
    shape = list(x_shape)
    for a in axes:
        shape[a] = 1
    return g.reshape(shape)


class SumFn(Function):
    """y = sum of x over ``axis``.   dx = gy broadcast back over the summed axes."""

    def forward(self, x, axis=None, keepdims=False):
        self.x_shape = x.shape
        self.axes = _normalize_axes(axis, x.ndim, "sum")
        self.keepdims = keepdims
        return x.sum(axis=self.axes, keepdims=keepdims)

    def backward(self, gy):
        g = _expand(gy, self.x_shape, self.axes, self.keepdims)
        return current.xp.broadcast_to(g, self.x_shape).copy()


class MeanFn(Function):
    """y = mean of x over ``axis`` (n elements each).   dx = gy / n, broadcast back."""

    def forward(self, x, axis=None, keepdims=False):
        self.x_shape = x.shape
        self.axes = _normalize_axes(axis, x.ndim, "mean")
        self.keepdims = keepdims
        self.count = 1
        for a in self.axes:
            self.count *= x.shape[a]
        if self.count == 0:
            raise ValueError(f"mean: cannot average over an empty axis (shape {tuple(x.shape)})")
        return x.mean(axis=self.axes, keepdims=keepdims)

    def backward(self, gy):
        g = _expand(gy, self.x_shape, self.axes, self.keepdims) / self.count
        return current.xp.broadcast_to(g, self.x_shape).astype(gy.dtype)


class MaxFn(Function):
    """y = max of x over ``axis``.

    Backward: the gradient goes to the element(s) that attained the maximum;
    when several tie it is shared equally among them (like ``torch.amax``), so
    the total gradient is preserved.
    """

    def forward(self, x, axis=None, keepdims=False):
        self.axes = _normalize_axes(axis, x.ndim, "max")
        if x.size == 0:
            raise ValueError("max: cannot reduce an empty tensor")
        self.keepdims = keepdims
        y = x.max(axis=self.axes, keepdims=True)
        self.save_for_backward(x, y)
        return y if keepdims else y.reshape([n for i, n in enumerate(x.shape) if i not in self.axes])

    def backward(self, gy):
        x, y = self.saved_tensors                     # y with the reduced axes kept (size 1)
        g = _expand(gy, x.shape, self.axes, self.keepdims)
        winners = (x == y)
        count = winners.sum(axis=self.axes, keepdims=True)
        return (winners * (g / count)).astype(gy.dtype)


def var(x, axis=None, keepdims=False, unbiased=False):
    """Variance, composed from differentiable pieces: mean((x - mean(x))**2)."""
    mu = x.mean(axis=axis, keepdims=True)
    sq = (x - mu) ** 2
    v = sq.mean(axis=axis, keepdims=keepdims)
    if unbiased:
        n = x.size // v.size
        v = v * (n / (n - 1))
    return v


def sum(x, axis=None, keepdims=False):  # noqa: A001 - PyTorch's name
    return SumFn.apply(x, axis=axis, keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    return MeanFn.apply(x, axis=axis, keepdims=keepdims)


def max(x, axis=None, keepdims=False):  # noqa: A001 - PyTorch's name
    return MaxFn.apply(x, axis=axis, keepdims=keepdims)
