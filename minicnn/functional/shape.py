"""Shape operations: reshape, transpose, flatten, indexing, concatenate, stack.

None of these change a single value, they only move values around; so each
backward moves the gradient back the same way (reshape back, transpose by the
inverse permutation, scatter into the indexed positions, split).
Each ``backward_graph`` (``create_graph=True``) does the same with Tensor
operations; indexing and :class:`ScatterAddFn` are each other's gradient.
"""
from __future__ import annotations

import itertools

from ..backend import current
from ..autograd.tensor import Function, Tensor
from .helpers import shape_str


class ReshapeFn(Function):
    """y = x viewed with a new shape (same number of elements).   dx = gy reshaped back."""

    def forward(self, x, shape):
        self.x_shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot view a tensor of shape {shape_str(x.shape)} "
                             f"({x.size} elements) as {tuple(shape)}") from None

    def backward(self, gy):
        return gy.reshape(self.x_shape)

    def backward_graph(self, gy):
        return gy.reshape(self.x_shape)


class TransposeFn(Function):
    """y = x with its axes permuted (reversed when ``axes`` is None).

    dx = gy permuted by the inverse permutation.
    """

    def forward(self, x, axes=None):
        if axes is None:
            axes = tuple(reversed(range(x.ndim)))
        if sorted(a % max(x.ndim, 1) for a in axes) != list(range(x.ndim)):
            raise ValueError(f"transpose: axes {tuple(axes)} are not a permutation of "
                             f"the {x.ndim} axes of a tensor of shape {shape_str(x.shape)}")
        self.axes = tuple(a % x.ndim for a in axes)
        return x.transpose(self.axes)

    def backward(self, gy):
        inverse = [0] * len(self.axes)
        for i, a in enumerate(self.axes):
            inverse[a] = i
        return gy.transpose(inverse)

    def backward_graph(self, gy):
        inverse = [0] * len(self.axes)
        for i, a in enumerate(self.axes):
            inverse[a] = i
        return TransposeFn.apply(gy, axes=tuple(inverse))


class GetItemFn(Function):
    """y = x[index] (slices, integers, integer arrays, boolean masks).

    dx is zero except at the selected positions, where the gradient is added;
    the ``scatter_add`` kernel (NumPy's ``add.at``, ``cupyx.scatter_add`` on a
    GPU) makes a position selected twice (x[[0, 0]]) receive both.
    """

    def forward(self, x, index):
        self.x_shape, self.dtype, self.index = x.shape, x.dtype, index
        try:
            return x[index]
        except IndexError as e:
            raise IndexError(f"index {index!r} is invalid for a tensor of shape "
                             f"{shape_str(x.shape)}: {e}") from None

    def backward(self, gy):
        xp = current.xp
        dx = xp.zeros(self.x_shape, dtype=gy.dtype)
        current.kernels.scatter_add(dx, self.index, gy)
        return dx

    def backward_graph(self, gy):
        return ScatterAddFn.apply(gy, index=self.index, shape=self.x_shape)


class ScatterAddFn(Function):
    """y = zeros(shape) with ``values`` added at ``index`` (repeats add up): GetItemFn's backward.

    It is linear in ``values``, and its backward reads the same positions
    back: dvalues = gy[index]. The two are each other's gradient, so
    gradients of indexing can be differentiated again.
    """

    def forward(self, values, index, shape):
        self.index = index
        y = current.xp.zeros(shape, dtype=values.dtype)
        current.kernels.scatter_add(y, index, values)
        return y

    def backward(self, gy):
        return gy[self.index]

    def backward_graph(self, gy):
        return GetItemFn.apply(gy, index=self.index)


def flatten(x: Tensor, start_dim=0, end_dim=-1) -> Tensor:
    """Merge axes start_dim..end_dim into one (PyTorch's ``torch.flatten``)."""
    nd = x.ndim
    if nd == 0:
        return x.reshape(1)
    s, e = start_dim % nd, end_dim % nd
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} "
                         f"for a tensor with {nd} dimensions")
    merged = 1
    for n in x.shape[s:e + 1]:
        merged *= n
    return x.reshape(x.shape[:s] + (merged,) + x.shape[e + 1:])


class ConcatenateFn(Function):
    """y = the inputs joined along ``axis``.   Each dx is its slice of gy."""

    def forward(self, *xs, axis=0):
        if not xs:
            raise ValueError("concatenate: expected at least one tensor")
        ref = xs[0]
        ax = axis % ref.ndim
        for i, x in enumerate(xs):
            if x.ndim != ref.ndim or any(x.shape[d] != ref.shape[d] for d in range(ref.ndim) if d != ax):
                raise ValueError(f"concatenate along axis {axis}: tensor {i} has shape "
                                 f"{shape_str(x.shape)}, expected {shape_str(ref.shape)} "
                                 "except along that axis")
        self.axis = ax
        self.sizes = [x.shape[ax] for x in xs]
        return current.xp.concatenate(xs, axis=ax)

    def backward(self, gy):
        bounds = list(itertools.accumulate(self.sizes[:-1]))    # where each input's slice ends
        return tuple(current.xp.split(gy, bounds, axis=self.axis))

    def backward_graph(self, gy):
        bounds = [0] + list(itertools.accumulate(self.sizes))
        before = (slice(None),) * self.axis
        return tuple(gy[before + (slice(lo, hi),)] for lo, hi in zip(bounds[:-1], bounds[1:]))


class StackFn(Function):
    """y = the inputs (all of one shape) stacked along a new ``axis``.   dx_i = gy[i along axis]."""

    def forward(self, *xs, axis=0):
        if not xs:
            raise ValueError("stack: expected at least one tensor")
        for i, x in enumerate(xs):
            if x.shape != xs[0].shape:
                raise ValueError(f"stack: tensor {i} has shape {shape_str(x.shape)}, "
                                 f"expected {shape_str(xs[0].shape)} like tensor 0")
        self.axis = axis % (xs[0].ndim + 1)
        return current.xp.stack(xs, axis=self.axis)

    def backward(self, gy):
        xp = current.xp
        return tuple(xp.take(gy, i, axis=self.axis) for i in range(gy.shape[self.axis]))

    def backward_graph(self, gy):
        before = (slice(None),) * self.axis
        return tuple(gy[before + (i,)] for i in range(gy.shape[self.axis]))


def concatenate(tensors, dim=0, *, axis=None) -> Tensor:
    """PyTorch's ``torch.cat(tensors, dim=0)`` (``axis=`` accepted too)."""
    return ConcatenateFn.apply(*tensors, axis=dim if axis is None else axis)


def stack(tensors, dim=0, *, axis=None) -> Tensor:
    return StackFn.apply(*tensors, axis=dim if axis is None else axis)


def reshape(x, shape):
    return ReshapeFn.apply(x, shape=tuple(shape))


def transpose(x, axes=None):
    return TransposeFn.apply(x, axes=axes)


cat = concatenate
