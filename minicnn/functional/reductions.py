"""Reductions: sum, mean, max (and var built from them).

A reduction over some axes maps many inputs to one output, so in backward
the output gradient is *spread back* over the reduced axes: copied for a sum,
divided by the count for a mean, routed to the maximum for a max.

With ``create_graph=True`` (``backward_graph``) the spreading back is an
:class:`~minicnn.functional.math.ExpandFn`, a Function whose own backward is
a sum: the two are each other's gradient.
"""
from __future__ import annotations

import builtins
import collections
import contextlib

from ..backend import current
from ..autograd.tensor import Function, Tensor, check_dim, dim_args
from .math import ExpandFn, MaximumFn, constant

#: what ``x.max(dim)`` / ``x.min(dim)`` return, like ``torch.return_types.max``
MaxResult = collections.namedtuple("max", ["values", "indices"])
MinResult = collections.namedtuple("min", ["values", "indices"])


def normalize_axes(axis, ndim, op=""):
    """None -> all axes; int or tuple -> a sorted tuple of non-negative axes (IndexError out of range)."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if not isinstance(axis, (tuple, list)) else tuple(axis)
    return tuple(sorted({check_dim(a, ndim) for a in axes}))


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
        self.axes = normalize_axes(axis, x.ndim, "sum")
        self.keepdims = keepdims
        return x.sum(axis=self.axes, keepdims=keepdims)

    def backward(self, gy):
        g = _expand(gy, self.x_shape, self.axes, self.keepdims)
        return current.xp.broadcast_to(g, self.x_shape).copy()

    def backward_graph(self, gy):
        g = _expand(gy, self.x_shape, self.axes, self.keepdims)
        return ExpandFn.apply(g, shape=self.x_shape)


class ProdFn(Function):
    """y = product of x over ``axis`` (one axis, or all).

    dx_i = gy * (product of every *other* element of its row): written as the
    product of the elements before i times the product of those after i
    (exclusive cumulative products from both ends), so a zero in the row gives
    the right gradient too — not gy * y / x_i, which divides by it.
    """

    def forward(self, x, axis=None, keepdims=False):
        xp = current.xp
        self.x_shape, self.axis, self.keepdims = x.shape, axis, keepdims
        rows = xp.moveaxis(x, axis, -1) if axis is not None else x.reshape(1, -1)   # (..., K)
        self.save_for_backward(rows)
        return x.prod(axis=axis, keepdims=keepdims)

    def backward(self, gy):
        xp = current.xp
        rows, = self.saved_tensors                                            # (..., K)
        ones = xp.ones(rows.shape[:-1] + (1,), dtype=rows.dtype)
        before = xp.cumprod(xp.concatenate([ones, rows[..., :-1]], axis=-1), axis=-1)
        after = xp.flip(xp.cumprod(xp.concatenate([ones, xp.flip(rows, -1)[..., :-1]], axis=-1), axis=-1), -1)
        if self.axis is None:
            return (gy.reshape(1, 1) * before * after).reshape(self.x_shape)
        g = gy if not self.keepdims else xp.squeeze(gy, self.axis)
        return xp.moveaxis(g[..., None] * before * after, -1, self.axis)


class MeanFn(Function):
    """y = mean of x over ``axis`` (n elements each).   dx = gy / n, broadcast back."""

    def forward(self, x, axis=None, keepdims=False):
        self.x_shape = x.shape
        self.axes = normalize_axes(axis, x.ndim, "mean")
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

    def backward_graph(self, gy):
        g = _expand(gy, self.x_shape, self.axes, self.keepdims) / self.count
        return ExpandFn.apply(g, shape=self.x_shape)


class MaxFn(Function):
    """y = max of x over ``axis``; a NaN anywhere in the reduced elements makes y NaN.

    Backward: the gradient goes to the element(s) that attained the maximum;
    when several tie it is shared equally among them (like ``torch.amax``), so
    the total gradient is preserved.

    Where y is NaN, PyTorch has two rules and we follow both:

    * ``x.amax()``: the winners are ``x == y``, and nothing equals NaN, so the
      share is 0/0 — the gradient of that slice is NaN (``torch.amax``'s).
    * ``x.max()`` (no dim; ``nan_wins=True``): the NaNs are the winners and
      share the gradient (``torch.max``'s "evenly distribute").
    """

    def forward(self, x, axis=None, keepdims=False, nan_wins=False):
        self.axes = normalize_axes(axis, x.ndim, "max")
        if x.size == 0:
            raise ValueError("max: cannot reduce an empty tensor")
        self.keepdims, self.nan_wins = keepdims, nan_wins
        y = x.max(axis=self.axes, keepdims=True)
        self.save_for_backward(x, y)
        return y if keepdims else y.reshape([n for i, n in enumerate(x.shape) if i not in self.axes])

    def backward(self, gy):
        xp = current.xp
        x, y = self.saved_tensors                     # y with the reduced axes kept (size 1)
        g = _expand(gy, x.shape, self.axes, self.keepdims)
        winners = (x == y)
        if self.nan_wins:                             # where y is NaN, its NaNs win; elsewhere no x is NaN
            winners |= xp.isnan(x)
        count = winners.sum(axis=self.axes, keepdims=True)
        with errstate_of(xp):                         # count 0 (y NaN, amax's rule): 0/0 = NaN, meant
            return (winners * (g / count)).astype(gy.dtype)

    def backward_graph(self, gy):
        """The winners and their count are constants (a max is piecewise linear)."""
        xp = current.xp
        x, y = self.saved_tensors
        g = _expand(gy, x.shape, self.axes, self.keepdims)
        winners = (x == y)
        if self.nan_wins:
            winners |= xp.isnan(x)
        with errstate_of(xp):
            share = winners / winners.sum(axis=self.axes, keepdims=True)
        return ExpandFn.apply(g, shape=x.shape) * constant(share.astype(x.dtype), gy)


def errstate_of(xp):
    """``numpy.errstate(divide="ignore", invalid="ignore")`` for NumPy; CuPy never warns (a no-op)."""
    errstate = getattr(xp, "errstate", None)
    return errstate(divide="ignore", invalid="ignore") if errstate else contextlib.nullcontext()


class TakeAlongDimFn(Function):
    """y = x[..., index, ...] along ``dim``: one element of each slice (``torch.take_along_dim``).

    ``x.max(dim)`` / ``x.min(dim)`` take their values this way, at the indices
    argmax / argmin chose (the first maximum on ties, the first NaN if any), so
    the backward routes the whole gradient to that one element — PyTorch's
    rule for ``max(dim)``: dx = gy where the position is the index, else 0.

    Shapes: x (..., K, ...) with K at ``dim``; index (..., 1, ...) int64; y
    without that axis unless ``keepdim``.
    """

    def forward(self, x, index, dim, keepdim):
        xp = current.xp
        self.x_shape, self.dim, self.keepdim = x.shape, dim, keepdim
        self.save_for_backward(index)                                    # (..., 1, ...)
        y = xp.take_along_axis(x, index, axis=dim)
        return y if keepdim else xp.squeeze(y, axis=dim)

    def backward(self, gy):
        xp = current.xp
        index, = self.saved_tensors
        g = gy if self.keepdim else xp.expand_dims(gy, self.dim)         # (..., 1, ...)
        shape = [1] * len(self.x_shape)
        shape[self.dim] = self.x_shape[self.dim]
        positions = xp.arange(self.x_shape[self.dim]).reshape(shape)      # (1, ..., K, ..., 1)
        return ((positions == index) * g).astype(gy.dtype)               # x's shape

    def backward_graph(self, gy):
        """The chosen positions are constants: dx = gy (reshaped to keep ``dim``, broadcast
        along it) times the 0/1 mask of the index."""
        index, = self.saved_tensors
        shape = [1] * len(self.x_shape)
        shape[self.dim] = self.x_shape[self.dim]
        mask = current.xp.arange(self.x_shape[self.dim]).reshape(shape) == index   # x's shape
        kept = list(self.x_shape)
        kept[self.dim] = 1
        g = gy if self.keepdim else gy.reshape(kept)
        return ExpandFn.apply(g, shape=self.x_shape) * constant(mask.astype(gy.dtype), gy)


def correction_of(unbiased, correction):
    """PyTorch's two spellings: ``unbiased=True/False`` or ``correction=1/0`` (default 1)."""
    if unbiased is not None and correction is not None:
        raise TypeError("var/std: give unbiased= or correction=, not both")
    return (1 if unbiased else 0) if unbiased is not None else (1 if correction is None else correction)


def var(x, axis=None, keepdims=False, correction=1):
    """Variance, composed from differentiable pieces: sum((x - mean(x))**2) / (n - correction)."""
    mu = x.mean(axis=axis, keepdims=True)
    sq = (x - mu) ** 2
    v = sq.mean(axis=axis, keepdims=keepdims)
    if correction:
        n = x.numel() // builtins.max(v.numel(), 1)
        v = v * (n / (n - correction) if n > correction else float("nan"))
    return v


def arg_reduce(a, op, dim, keepdim):
    """``a.argmax``/``a.argmin`` over one dim (the flat index with none), as an int64 array."""
    if dim is None:
        out = getattr(a.reshape(-1), op)()
        return current.xp.asarray(out, dtype="int64").reshape((1,) * a.ndim if keepdim else ())
    if isinstance(dim, tuple):
        raise TypeError(f"{op}: dim must be one int, got {dim}")
    return getattr(a, op)(axis=check_dim(dim, a.ndim), keepdims=keepdim).astype("int64")


def max_or_min(x, op, dim=None, keepdim=False, axis=None, keepdims=False):
    """``x.max()`` (0-d), ``x.max(dim)`` (values, indices), ``x.max(other)`` (elementwise): PyTorch's three.

    ``x`` may also be a backend array (``t.array``); ``torch.max(outputs.data, 1)``,
    common in PyTorch programs, passes a detached Tensor, as PyTorch's.
    """
    x = x if isinstance(x, Tensor) else Tensor(x)
    sign = 1 if op == "max" else -1
    if isinstance(dim, Tensor):
        return sign * MaximumFn.apply(sign * x, sign * dim)
    dim, keepdim = dim_args(dim, keepdim, axis, keepdims)
    if dim is None:                   # all elements: ties and NaNs share the gradient (torch.max's rule)
        if op == "max":
            return MaxFn.apply(x, axis=None, keepdims=False, nan_wins=True)
        return -MaxFn.apply(-x, axis=None, keepdims=False, nan_wins=True)
    if isinstance(dim, tuple):
        raise TypeError(f"{op}(dim) reduces one dim, got {dim}; amax/amin reduce several")
    if x.numel() == 0:
        raise ValueError(f"{op}: cannot reduce an empty tensor")
    dim = check_dim(dim, x.ndim)
    index = arg_reduce(x.array, "arg" + op, dim, keepdim=True)            # (..., 1, ...)
    values = TakeAlongDimFn.apply(x, index=index, dim=dim, keepdim=keepdim)
    indices = Tensor(index if keepdim else current.xp.squeeze(index, axis=dim))
    return (MaxResult if op == "max" else MinResult)(values, indices)


def sum(x, dim=None, keepdim=False, *, axis=None, keepdims=False):  # noqa: A001 - PyTorch's name
    return x.sum(dim, keepdim, axis=axis, keepdims=keepdims)


def mean(x, dim=None, keepdim=False, *, axis=None, keepdims=False):
    return x.mean(dim, keepdim, axis=axis, keepdims=keepdims)


def max(x, dim=None, keepdim=False, *, axis=None, keepdims=False):  # noqa: A001 - PyTorch's name
    """``mc.max(x)``, ``mc.max(x, dim)`` -> (values, indices), ``mc.max(a, b)`` elementwise."""
    return max_or_min(x, "max", dim, keepdim, axis, keepdims)


def min(x, dim=None, keepdim=False, *, axis=None, keepdims=False):  # noqa: A001 - PyTorch's name
    return max_or_min(x, "min", dim, keepdim, axis, keepdims)
