"""Elementwise arithmetic and the matrix product, each with its backward.

Broadcasting. ``a + b`` with ``a: (4, 3)`` and ``b: (3,)`` behaves as if ``b``
were copied to every row. Each copy of ``b`` contributes to the output, so the
gradient of ``b`` is the *sum* of the output gradient over the broadcast axes:
:func:`unbroadcast` undoes broadcasting in every binary backward.

Gradients of gradients. Each Function also has a ``backward_graph``: the same
formulas written with Tensor operations (``create_graph=True``, see
``Function`` in autograd/tensor.py). It reads the inputs as Tensors
(``self.inputs``) and recomputes what ``backward`` had saved (``x.exp()`` for
ExpFn), so the gradient it returns is connected to them by a graph.
:func:`unbroadcast` works on Tensors as well as arrays (only ``sum`` and
``reshape``), and :class:`ExpandFn` is broadcasting as a Function — the
differentiable backward of a sum.
"""
from __future__ import annotations

import numpy as np

from ..backend import current
from ..device import device_of, move
from ..autograd.tensor import Function, Tensor, lift
from .helpers import matmul as array_matmul


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``, undoing NumPy broadcasting.

    Broadcasting (1) prepends size-1 axes and (2) stretches size-1 axes. Undo
    both: sum away the extra leading axes, then sum (keepdims) over every axis
    where the original had size 1 but the gradient does not.
    """
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad.reshape(shape)


def constant(array, like):
    """``array`` (a mask, a sign, ...) as a Tensor outside the graph, with ``like``'s float dtype."""
    dtype = like.dtype if array.dtype.kind == "f" else array.dtype
    return Tensor(array, dtype=dtype)


class ExpandFn(Function):
    """y = x broadcast to ``shape`` (a copy), NumPy's broadcasting rule.

    dx = gy summed back over the broadcast axes (:func:`unbroadcast`). It is
    the backward of a sum (and a mean), written as a Function so that a
    gradient built with it can be differentiated again.
    """

    def forward(self, x, shape):
        self.x_shape = x.shape
        return current.xp.broadcast_to(x, shape).copy()

    def backward(self, gy):
        return unbroadcast(gy, self.x_shape)

    def backward_graph(self, gy):
        return unbroadcast(gy, self.x_shape)


def _check_broadcast(a, b, op):
    try:
        # shapes are plain tuples on the host: NumPy's rule, whatever the backend
        # (CuPy has no broadcast_shapes)
        return np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{op}: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be "
                         "broadcast together (sizes must match or be 1, aligned from the right)") from None


class AddFn(Function):
    """y = a + b.   da = gy, db = gy (each summed over its broadcast axes)."""

    def forward(self, a, b):
        _check_broadcast(a, b, "add")
        self.a_shape, self.b_shape = a.shape, b.shape
        return a + b

    def backward(self, gy):
        return unbroadcast(gy, self.a_shape), unbroadcast(gy, self.b_shape)

    def backward_graph(self, gy):
        return unbroadcast(gy, self.a_shape), unbroadcast(gy, self.b_shape)


class SubFn(Function):
    """y = a - b.   da = gy, db = -gy."""

    def forward(self, a, b):
        _check_broadcast(a, b, "sub")
        self.a_shape, self.b_shape = a.shape, b.shape
        return a - b

    def backward(self, gy):
        db = unbroadcast(-gy, self.b_shape) if self.needs_input_grad[1] else None
        return unbroadcast(gy, self.a_shape), db

    def backward_graph(self, gy):
        db = unbroadcast(-gy, self.b_shape) if self.needs_input_grad[1] else None
        return unbroadcast(gy, self.a_shape), db


class MulFn(Function):
    """y = a * b.   da = gy * b, db = gy * a."""

    def forward(self, a, b):
        _check_broadcast(a, b, "mul")
        self.save_for_backward(a, b)
        return a * b

    def backward(self, gy):
        a, b = self.saved_tensors
        da = unbroadcast(gy * b, a.shape) if self.needs_input_grad[0] else None
        db = unbroadcast(gy * a, b.shape) if self.needs_input_grad[1] else None
        return da, db

    def backward_graph(self, gy):
        a, b = self.inputs
        da = unbroadcast(gy * b, a.shape) if self.needs_input_grad[0] else None
        db = unbroadcast(gy * a, b.shape) if self.needs_input_grad[1] else None
        return da, db


class DivFn(Function):
    """y = a / b.   da = gy / b, db = -gy * a / b**2."""

    def forward(self, a, b):
        _check_broadcast(a, b, "div")
        self.save_for_backward(a, b)
        return a / b

    def backward(self, gy):
        a, b = self.saved_tensors
        da = unbroadcast(gy / b, a.shape) if self.needs_input_grad[0] else None
        db = unbroadcast(-gy * a / (b * b), b.shape) if self.needs_input_grad[1] else None
        return da, db

    def backward_graph(self, gy):
        a, b = self.inputs
        da = unbroadcast(gy / b, a.shape) if self.needs_input_grad[0] else None
        db = unbroadcast(-gy * a / (b * b), b.shape) if self.needs_input_grad[1] else None
        return da, db


class NegFn(Function):
    """y = -x.   dx = -gy."""

    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy

    def backward_graph(self, gy):
        return -gy


class PowScalarFn(Function):
    """y = x ** p for a constant number p.   dx = gy * p * x**(p-1)."""

    def forward(self, x, exponent):
        self.save_for_backward(x)
        self.p = exponent
        return x ** exponent

    def backward(self, gy):
        x, = self.saved_tensors
        return gy * self.p * x ** (self.p - 1)

    def backward_graph(self, gy):
        x, = self.inputs
        return gy * self.p * x ** (self.p - 1)


class PowFn(Function):
    """y = a ** b (both tensors).   da = gy * b * a**(b-1),  db = gy * y * log(a)."""

    def forward(self, a, b):
        _check_broadcast(a, b, "pow")
        y = a ** b
        self.save_for_backward(a, b, y)
        return y

    def backward(self, gy):
        xp = current.xp
        a, b, y = self.saved_tensors
        da = unbroadcast(gy * b * a ** (b - 1), a.shape) if self.needs_input_grad[0] else None
        db = unbroadcast(gy * y * xp.log(a), b.shape) if self.needs_input_grad[1] else None
        return da, db

    def backward_graph(self, gy):
        a, b = self.inputs
        da = unbroadcast(gy * b * a ** (b - 1), a.shape) if self.needs_input_grad[0] else None
        db = unbroadcast(gy * a ** b * a.log(), b.shape) if self.needs_input_grad[1] else None
        return da, db


class MatMulFn(Function):
    """Y = A @ B for A: (..., n, k), B: (..., k, m) -> Y: (..., n, m).

    dA = dY @ B^T  (n, m)(m, k) -> (n, k);   dB = A^T @ dY  (k, n)(n, m) -> (k, m);
    batch axes broadcast like any binary op. 1-D operands are promoted to a
    row (A) or a column (B) vector, as NumPy does, and demoted again in backward.
    """

    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: both operands need at least 1 dimension, got shapes "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        ka, kb = a.shape[-1], (b.shape[0] if b.ndim == 1 else b.shape[-2])
        if ka != kb:
            raise ValueError(f"matmul: shape mismatch {tuple(a.shape)} @ {tuple(b.shape)}: the last axis "
                             f"of the left ({ka}) must equal the "
                             f"{'first' if b.ndim == 1 else 'second-to-last'} axis of the right ({kb})")
        self.save_for_backward(a, b)
        return array_matmul(a, b)

    def backward(self, gy):
        xp = current.xp
        a, b = self.saved_tensors
        if a.ndim == 1 and b.ndim == 1:                   # dot product: y is a scalar
            return gy * b, gy * a
        a2 = a[None, :] if a.ndim == 1 else a            # (1, k)
        b2 = b[:, None] if b.ndim == 1 else b            # (k, 1)
        g2 = gy
        if a.ndim == 1:
            g2 = g2[..., None, :]                        # (..., 1, m)
        if b.ndim == 1:
            g2 = g2[..., :, None]                        # (..., n, 1)
        da = db = None
        if self.needs_input_grad[0]:
            da = array_matmul(g2, xp.swapaxes(b2, -1, -2))
            da = unbroadcast(da, a2.shape).reshape(a.shape)
        if self.needs_input_grad[1]:
            db = array_matmul(xp.swapaxes(a2, -1, -2), g2)
            db = unbroadcast(db, b2.shape).reshape(b.shape)
        return da, db

    def backward_graph(self, gy):
        """The same products as ``backward``, on Tensors (so each is a MatMulFn again)."""
        a, b = self.inputs
        if a.ndim == 1 and b.ndim == 1:
            return gy * b, gy * a
        a2 = a.reshape(1, -1) if a.ndim == 1 else a
        b2 = b.reshape(-1, 1) if b.ndim == 1 else b
        g2 = gy
        if a.ndim == 1:
            g2 = g2.unsqueeze(-2)
        if b.ndim == 1:
            g2 = g2.unsqueeze(-1)
        da = db = None
        if self.needs_input_grad[0]:
            da = unbroadcast(g2 @ b2.transpose(-1, -2), a2.shape).reshape(a.shape)
        if self.needs_input_grad[1]:
            db = unbroadcast(a2.transpose(-1, -2) @ g2, b2.shape).reshape(b.shape)
        return da, db


class ExpFn(Function):
    """y = e^x.   dx = gy * y."""

    def forward(self, x):
        y = current.xp.exp(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved_tensors
        return gy * y

    def backward_graph(self, gy):
        x, = self.inputs
        return gy * x.exp()


class LogFn(Function):
    """y = ln x.   dx = gy / x."""

    def forward(self, x):
        self.save_for_backward(x)
        return current.xp.log(x)

    def backward(self, gy):
        x, = self.saved_tensors
        return gy / x

    def backward_graph(self, gy):
        x, = self.inputs
        return gy / x


class SqrtFn(Function):
    """y = sqrt(x).   dx = gy / (2 y)."""

    def forward(self, x):
        y = current.xp.sqrt(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved_tensors
        return gy / (2 * y)

    def backward_graph(self, gy):
        x, = self.inputs
        return gy / (2 * x.sqrt())


class AbsFn(Function):
    """``y = |x|``.   ``dx = gy * sign(x)``  (0 at x = 0, as PyTorch)."""

    def forward(self, x):
        self.save_for_backward(x)
        return current.xp.abs(x)

    def backward(self, gy):
        x, = self.saved_tensors
        return gy * current.xp.sign(x)

    def backward_graph(self, gy):
        x, = self.inputs
        return gy * constant(current.xp.sign(x.array), gy)      # sign(x): a constant, d sign = 0


class ClipFn(Function):
    """y = min(max(x, low), high).   dx = gy where low <= x <= high, else 0."""

    def forward(self, x, low=None, high=None):
        if low is None and high is None:
            raise ValueError("clip: give at least one of min and max")
        self.save_for_backward(x)
        self.low, self.high = low, high
        return current.xp.clip(x, low, high)

    def backward(self, gy):
        x, = self.saved_tensors
        inside = current.xp.ones(x.shape, dtype=bool)
        if self.low is not None:
            inside &= x >= self.low
        if self.high is not None:
            inside &= x <= self.high
        return gy * inside

    def backward_graph(self, gy):
        x = self.saved_tensors[0]
        inside = current.xp.ones(x.shape, dtype=bool)
        if self.low is not None:
            inside &= x >= self.low
        if self.high is not None:
            inside &= x <= self.high
        return gy * constant(inside, gy)


class CastFn(Function):
    """y = x converted to another float dtype.   dx = gy converted back."""

    def forward(self, x, dtype):
        self.src_dtype = x.dtype
        return x.astype(dtype)

    def backward(self, gy):
        return gy.astype(self.src_dtype)

    def backward_graph(self, gy):
        return gy.astype(self.src_dtype)


class MoveFn(Function):
    """y = x copied to another device (``t.to("cuda")``).   dx = gy copied back.

    ``Function.apply`` hands back arrays of the active backend, so forward
    only records where x was; ``Tensor.to`` then moves the output's array.
    """

    def forward(self, x, device):
        self.source = device_of(x)
        return x

    def backward(self, gy):
        return move(gy, self.source)


class CloneFn(Function):
    """y = a copy of x (``t.clone()``).   dx = gy."""

    def forward(self, x):
        return x.copy()

    def backward(self, gy):
        return gy

    def backward_graph(self, gy):
        return CloneFn.apply(gy)


class MaximumFn(Function):
    """y = max(a, b) elementwise.   The gradient goes to the larger (to a on ties)."""

    def forward(self, a, b):
        _check_broadcast(a, b, "maximum")
        self.save_for_backward(a, b)
        return current.xp.maximum(a, b)

    def backward(self, gy):
        a, b = self.saved_tensors
        a_wins = a >= b
        da = unbroadcast(gy * a_wins, a.shape) if self.needs_input_grad[0] else None
        db = unbroadcast(gy * ~a_wins, b.shape) if self.needs_input_grad[1] else None
        return da, db

    def backward_graph(self, gy):
        a, b = self.saved_tensors
        a_wins = a >= b
        da = unbroadcast(gy * constant(a_wins, gy), a.shape) if self.needs_input_grad[0] else None
        db = unbroadcast(gy * constant(~a_wins, gy), b.shape) if self.needs_input_grad[1] else None
        return da, db


# -- functional spellings --------------------------------------------------------
def exp(x): return ExpFn.apply(x)
def log(x): return LogFn.apply(x)
def sqrt(x): return SqrtFn.apply(x)
def abs(x): return AbsFn.apply(x)  # noqa: A001 - PyTorch's name


def clip(x, min=None, max=None):  # noqa: A002 - PyTorch's names
    return ClipFn.apply(x, low=min, high=max)


def maximum(a, b):
    a = a if isinstance(a, Tensor) else lift(a, b)
    return MaximumFn.apply(a, lift(b, a))


def matmul(a, b):
    return MatMulFn.apply(a, lift(b, a))
