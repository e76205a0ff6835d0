"""Tensor, Function and reverse-mode automatic differentiation.

The whole engine fits on one screen:

* A :class:`Tensor` holds an array (``.array``), a flag ``requires_grad``, and —
  if an operation made it — the :class:`Function` that did (``._ctx``).
* A :class:`Function` has a ``forward`` (arrays in, one array out; it saves what
  the backward will need) and a ``backward`` (the gradient of the loss w.r.t.
  its output in, one gradient per input out). ``Function.apply`` runs the
  forward and, when gradients are wanted, links the output to the function and
  the function to its inputs. Calling operations therefore *records a graph*
  as a side effect: "define by run".
* :meth:`Tensor.backward` hands the graph to two functions in engine.py:
  ``topological_order`` lists every tensor after all the tensors it was
  computed from, and ``backpropagate`` walks that list once from the output to
  the leaves, calling each function's ``backward`` and adding up the gradients
  that arrive at each tensor — a tensor used twice receives the sum (the
  multivariate chain rule). Both are iterative, so a chain of 10,000
  operations does not hit Python's recursion limit.

Only leaves (tensors you created, such as parameters) keep their ``.grad``;
intermediate gradients are dropped once used, as in PyTorch (call
``retain_grad()`` on an intermediate to keep its gradient).
"""
from __future__ import annotations

import contextlib
import numbers

import numpy as np

from ..backend import current, to_device, to_host
from ..device import device as _device, device_of, move
from .observer import observers
from .. import rng as _rng

# ----------------------------------------------------------------------------
# Gradient mode
# ----------------------------------------------------------------------------
_grad_enabled = True


def is_grad_enabled() -> bool:
    return _grad_enabled


@contextlib.contextmanager
def no_grad():
    """Context manager: operations inside record no graph (evaluation, updates)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


@contextlib.contextmanager
def enable_grad():
    """Context manager: turn gradient recording back on inside ``no_grad``."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, True
    try:
        yield
    finally:
        _grad_enabled = previous


# ----------------------------------------------------------------------------
# dtypes
# ----------------------------------------------------------------------------
DEFAULT_FLOAT = np.float32


def resolve_dtype(dtype):
    """Accept np.float32, "float64", np.dtype(...) or a Python type; return np.dtype."""
    if dtype is None:
        return None
    try:
        return np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype: expected a NumPy dtype such as np.float32 or "
                        f"'float64', got {dtype!r}") from e


def _as_array(data, dtype=None):
    """Turn array-likes (lists, scalars, NumPy or CuPy arrays) into a backend array.

    Floats default to float32 (the framework's working precision); integer and
    boolean data keep their type (class labels are int64). Pass ``dtype`` to
    choose, e.g. ``dtype="float64"`` for gradient checks.
    """
    dtype = resolve_dtype(dtype)
    xp = current.xp
    if isinstance(data, Tensor):
        data = data.array
    if not isinstance(data, xp.ndarray):
        # lists and scalars; host arrays go to the device, device arrays to the host
        data = xp.asarray(to_host(data)) if xp is np else to_device(data)
    if dtype is None:
        if data.dtype.kind == "f" and data.dtype != DEFAULT_FLOAT:
            data = data.astype(DEFAULT_FLOAT)
        elif data.dtype.kind not in "fiub":
            raise TypeError(f"tensor data must be numeric, got dtype {data.dtype}")
    elif data.dtype != dtype:
        data = data.astype(dtype)
    return data


def shape_str(shape):
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


class TensorError(ValueError, RuntimeError):
    """A bad value where PyTorch raises RuntimeError (item() of many, t() of 3-D, ...): catch either."""


class Size(tuple):
    """``x.size()``: a tuple of the dimensions, like ``torch.Size``."""

    def __repr__(self):
        return f"minicnn.Size({list(self)})"

    def numel(self) -> int:
        n = 1
        for d in self:
            n *= d
        return n


def check_dim(d, ndim):
    """``d`` (negative counts from the end) as a non-negative dimension, or PyTorch's IndexError."""
    if not isinstance(d, (int, np.integer)) or isinstance(d, bool):
        raise TypeError(f"a dimension must be an int, got {d!r}")
    n = max(ndim, 1)
    if not -n <= d < n:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {d})")
    return int(d) % n


def dim_args(dim, keepdim, axis, keepdims):
    """PyTorch's ``dim=``/``keepdim=`` with NumPy's ``axis=``/``keepdims=`` accepted as aliases."""
    if axis is not None:
        if dim is not None:
            raise TypeError("give dim= or its alias axis=, not both")
        dim = axis
    return (tuple(dim) if isinstance(dim, list) else dim), bool(keepdim or keepdims)


def _shape_args(shape):
    """``f(2, 3)`` and ``f((2, 3))`` alike."""
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)


#: ``t.type()`` names, PyTorch's with minicnn's prefix
TYPE_NAMES = {"float32": "FloatTensor", "float64": "DoubleTensor", "float16": "HalfTensor",
              "int64": "LongTensor", "int32": "IntTensor", "int16": "ShortTensor", "int8": "CharTensor",
              "uint8": "ByteTensor", "bool": "BoolTensor"}


# ----------------------------------------------------------------------------
# Tensor
# ----------------------------------------------------------------------------
class Tensor:
    """An n-dimensional array that remembers how it was computed.

    Attributes:
        array: the backend array (``numpy.ndarray`` or ``cupy.ndarray``) this
            tensor holds; what the engine and the kernels read.
        grad: a :class:`Tensor` with the accumulated gradient, or ``None``.
        requires_grad: whether operations on this tensor are recorded.

    ``t.data`` is PyTorch's: a detached Tensor sharing ``array`` (the property below).
    """

    __array_ufunc__ = None      # make NumPy defer: ndarray * Tensor -> Tensor.__rmul__
    __array_priority__ = 1000

    def __init__(self, data, requires_grad=False, dtype=None):
        self.array = _as_array(data, dtype)
        if requires_grad and self.array.dtype.kind != "f":
            raise TypeError("only floating-point tensors can require gradients, "
                            f"got dtype {self.array.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._ctx = None            # the Function that produced this tensor, if any
        self._retain_grad = False

    # -- basic properties ------------------------------------------------
    shape = property(lambda self: tuple(self.array.shape))
    dtype = property(lambda self: self.array.dtype)
    ndim = property(lambda self: self.array.ndim)

    def size(self, dim=None):
        """``x.size()`` -> a :class:`Size` (a tuple); ``x.size(d)`` -> the length of dimension d."""
        if dim is None:
            return Size(self.array.shape)
        if self.ndim == 0:
            raise IndexError(f"Dimension specified as {dim} but tensor has no dimensions")
        return int(self.array.shape[check_dim(dim, self.ndim)])

    def numel(self) -> int:
        """The number of elements."""
        return int(self.array.size)

    nelement = numel

    def dim(self) -> int:
        return self.array.ndim

    ndimension = dim

    @property
    def device(self) -> _device:
        """Where the array lives (``minicnn/device.py``): cpu, or cuda for CuPy and the simulator."""
        return device_of(self.array)

    @property
    def grad_fn(self):
        """The :class:`Function` that produced this tensor (PyTorch's name), ``None`` for a leaf."""
        return self._ctx

    @property
    def is_leaf(self) -> bool:
        """True for tensors not produced by a recorded operation (e.g. parameters)."""
        return self._ctx is None

    def __len__(self):
        return len(self.array)

    def __repr__(self):
        body = np.array2string(to_host(self.array), precision=4, separator=", ",
                               prefix="tensor(")
        extra = f", dtype={self.dtype}" if self.dtype != DEFAULT_FLOAT else ""
        if self._ctx is not None:
            extra += f", grad_fn=<{type(self._ctx).__name__}>"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    # -- conversion --------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """A host NumPy copy of the data (never a view into a live tensor)."""
        return np.array(to_host(self.array), copy=True)

    def __float__(self): return float(self.item())
    def __int__(self):   return int(self.item())

    def __index__(self):
        """A one-element integer tensor used as an index: ``classes[labels[j]]``."""
        if self.array.dtype.kind not in "iub":
            raise TypeError(f"only integer tensors of a single element can be converted to an index, "
                            f"got dtype {self.dtype}")
        return int(self.item())

    def item(self):
        """The single value of a one-element tensor, as a Python number."""
        if self.array.size != 1:
            raise TensorError(f"item() needs a tensor with one element, got shape {shape_str(self.shape)}")
        return to_host(self.array).reshape(()).item()

    def tolist(self):
        return to_host(self.array).tolist()

    def detach(self) -> "Tensor":
        """A new tensor sharing the data but cut off from the graph."""
        return Tensor(self.array, dtype=self.array.dtype)

    @property
    def data(self) -> "Tensor":
        """PyTorch's ``.data``: a tensor sharing this array, cut off from the graph.

        Not the array (that is :attr:`array`): ``p.data.zero_()`` and
        ``p.data -= lr * p.grad.data`` write into ``p``'s array, as in PyTorch.
        """
        return Tensor(self.array, dtype=self.array.dtype)

    @data.setter
    def data(self, value):
        """``t.data = value`` (a Tensor or an array) replaces the array; shape and dtype may change."""
        self.array = value.array if isinstance(value, Tensor) else _as_array(value)

    # -- in-place operations (on the shared array) ---------------------------
    def _check_inplace(self, other=None):
        """PyTorch's rule: no in-place change to a leaf that requires grad while grad is on.

        minicnn does not record in-place operations, so one on a tensor in the
        graph (or with an operand in it) is refused too; ``x = x + y`` is the way.
        """
        if not is_grad_enabled():
            return
        if self.requires_grad:
            if self.is_leaf:
                raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")
            raise RuntimeError("minicnn does not record in-place operations on a tensor that requires grad; "
                               "write x = x + y, or work on x.data")
        if isinstance(other, Tensor) and other.requires_grad:
            raise RuntimeError("minicnn does not record in-place operations with an operand that requires "
                               "grad; write x = x + y, or use other.detach()")

    def _write(self, values):
        """Store ``values`` into this array in place (broadcast to its shape, cast to its dtype)."""
        xp = current.xp
        values = values.array if isinstance(values, Tensor) else values
        if isinstance(values, (np.ndarray, xp.ndarray)) and not isinstance(values, xp.ndarray):
            values = to_device(values) if xp is not np else to_host(values)
        vshape = getattr(values, "shape", ())
        if np.broadcast_shapes(vshape, self.array.shape) != self.array.shape:
            raise RuntimeError(f"output with shape {list(self.array.shape)} doesn't match the broadcast "
                               f"shape {list(np.broadcast_shapes(vshape, self.array.shape))}")
        vdtype = getattr(values, "dtype", None)
        if vdtype is not None and not np.can_cast(vdtype, self.array.dtype, "same_kind"):
            raise RuntimeError(f"result type {vdtype} can't be cast to the desired output type {self.array.dtype}")
        self.array[...] = values
        return self

    def _binary_(self, other, op):
        self._check_inplace(other)
        o = other.array if isinstance(other, Tensor) else other
        return self._write(op(self.array, o))

    def zero_(self):
        """Fill with zeros, in place."""
        self._check_inplace()
        self.array[...] = 0
        return self

    def fill_(self, value):
        """Fill with ``value``, in place."""
        self._check_inplace(value)
        self.array[...] = value.item() if isinstance(value, Tensor) else value
        return self

    def copy_(self, src):
        """Copy ``src`` (broadcast, cast to this dtype) into this array, in place."""
        self._check_inplace(src)
        src = src.array if isinstance(src, Tensor) else src
        if not isinstance(src, current.xp.ndarray):
            src = _as_array(src)
        self.array[...] = src.astype(self.array.dtype, copy=False)
        return self

    def add_(self, other, alpha=1):
        """``self += alpha * other``, in place."""
        return self._binary_(other, lambda a, b: a + (b if alpha == 1 else alpha * b))

    def sub_(self, other, alpha=1):
        """``self -= alpha * other``, in place."""
        return self._binary_(other, lambda a, b: a - (b if alpha == 1 else alpha * b))

    def mul_(self, other):
        return self._binary_(other, lambda a, b: a * b)

    def div_(self, other):
        return self._binary_(other, lambda a, b: a / b)

    def clamp_(self, min=None, max=None):
        """Clamp to ``[min, max]``, in place."""
        if min is None and max is None:
            raise RuntimeError("clamp_: at least one of 'min' or 'max' must not be None")
        self._check_inplace()
        self.array[...] = current.xp.clip(self.array, min, max)
        return self

    clip_ = clamp_

    def normal_(self, mean=0.0, std=1.0):
        """Fill with samples of N(mean, std^2) from minicnn's generator, in place."""
        self._check_inplace()
        self.array[...] = to_device(_rng.generator().normal(mean, std, size=self.shape), dtype=self.dtype)
        return self

    def uniform_(self, a=0.0, b=1.0):
        """Fill with samples of U(a, b) from minicnn's generator, in place."""
        self._check_inplace()
        self.array[...] = to_device(_rng.generator().uniform(a, b, size=self.shape), dtype=self.dtype)
        return self

    def _augmented(self, other, op, name):
        """``x op= y``: in place on the array when PyTorch would allow it and the result fits.

        A tensor in the graph (or an operand that requires grad) takes the
        out-of-place path, which records the operation: ``h += x`` in a model
        keeps working and Python rebinds ``h``.
        """
        grad_on = is_grad_enabled()
        if grad_on and self.requires_grad and self.is_leaf:
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")
        if grad_on and (self.requires_grad or (isinstance(other, Tensor) and other.requires_grad)):
            return getattr(self, name)(other)
        o = other.array if isinstance(other, Tensor) else other
        values = op(self.array, o)
        if (getattr(values, "shape", ()) != self.array.shape
                or not np.can_cast(getattr(values, "dtype", self.dtype), self.dtype, "same_kind")):
            return getattr(self, name)(other)
        self.array[...] = values
        return self

    def __iadd__(self, other): return self._augmented(other, lambda a, b: a + b, "__add__")
    def __isub__(self, other): return self._augmented(other, lambda a, b: a - b, "__sub__")
    def __imul__(self, other): return self._augmented(other, lambda a, b: a * b, "__mul__")
    def __itruediv__(self, other): return self._augmented(other, lambda a, b: a / b, "__truediv__")

    def astype(self, dtype) -> "Tensor":
        """A cast; differentiable between float types (float32 <-> float64)."""
        dtype = resolve_dtype(dtype)
        if dtype == self.dtype:
            return self
        if dtype.kind != "f":                     # to int or bool: no gradient, as in PyTorch
            return Tensor(self.array.astype(dtype), dtype=dtype)
        return _math.CastFn.apply(self, dtype=dtype)

    def float(self):  return self.astype(np.float32)
    def double(self): return self.astype(np.float64)
    def half(self):   return self.astype(np.float16)
    def long(self):   return self.astype(np.int64)
    def int(self):    return self.astype(np.int32)
    def bool(self):   return self.astype(np.bool_)

    def type(self, dtype=None):
        """``t.type()`` -> its type's name ('minicnn.FloatTensor'); ``t.type(dtype)`` -> a cast."""
        if dtype is None:
            return "minicnn." + TYPE_NAMES.get(self.dtype.name, self.dtype.name)
        if isinstance(dtype, str) and dtype.startswith(("minicnn.", "torch.")):
            names = {v: k for k, v in TYPE_NAMES.items()}
            dtype = names.get(dtype.rsplit(".", 1)[1], dtype)
        return self.astype(dtype)

    def to(self, *args, dtype=None, device=None, copy=False):
        """``t.to(device)``, ``t.to(dtype)``, ``t.to(device, dtype)``, ``t.to(other_tensor)``.

        Returns ``t`` itself when nothing changes. Moving between host and GPU
        copies the array (CuPy needed for a real GPU); it does not switch the
        backend (``minicnn/device.py``).
        """
        for a in args:
            if isinstance(a, Tensor):
                device, dtype = a.device, a.dtype
            elif isinstance(a, _device) or (isinstance(a, str) and not names_a_dtype(a)):
                device = a
            else:
                dtype = a
        out = self
        if dtype is not None and resolve_dtype(dtype) != self.dtype:
            out = out.astype(dtype)
        if device is not None and _device(device).type != out.device.type:
            out = _math.MoveFn.apply(out, device=_device(device))    # recorded for backward
            out.array = move(out.array, _device(device))
        return out.clone() if copy and out is self else out

    def cpu(self):
        return self.to("cpu")

    def cuda(self, device=None):
        return self.to("cuda" if device is None else _device("cuda", device) if isinstance(device, int) else device)

    def clone(self) -> "Tensor":
        """A copy of the data, still in the graph (the gradient flows back)."""
        return _math.CloneFn.apply(self)

    def contiguous(self):
        return self

    def requires_grad_(self, flag=True) -> "Tensor":
        if flag and self.array.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require gradients, got {self.dtype}")
        self.requires_grad = bool(flag)
        return self

    def retain_grad(self):
        """Keep ``.grad`` on this intermediate tensor after backward (debugging)."""
        self._retain_grad = True

    def zero_grad(self):
        self.grad = None

    # -- autograd ------------------------------------------------------------
    def backward(self, grad=None, retain_graph=None, create_graph=False):
        """Accumulate d(self)/d(leaf) * grad into ``.grad`` of every leaf that requires it.

        ``grad`` is the gradient of some final scalar w.r.t. this tensor; it may
        be omitted only when this tensor has a single element (then it is 1).

        ``create_graph=True`` records the backward pass itself, so the ``.grad``
        it leaves are Tensors with a graph of their own, which can be
        differentiated again (``mc.autograd.grad`` is usually handier for that).
        ``retain_graph=False`` frees what the Functions saved (a second backward
        through them raises); by default minicnn keeps the graph.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() called on a tensor that does not require grad: "
                               "none of the tensors it was computed from has requires_grad=True")
        if grad is None:
            if self.array.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a scalar (one-element) tensor, "
                    f"got shape {shape_str(self.shape)}; reduce it first (e.g. .sum()) "
                    "or pass grad= with the same shape")
            grad = current.xp.ones_like(self.array)
        elif create_graph and isinstance(grad, Tensor):
            pass                       # kept as a Tensor: it may be in a graph itself
        else:
            grad = grad.array if isinstance(grad, Tensor) else _as_array(grad, self.dtype)
        if grad.shape != self.array.shape:
            raise ValueError(f"backward(grad): expected a gradient of shape {shape_str(self.shape)}, "
                             f"got {shape_str(grad.shape)}")
        if create_graph:               # the gradients travel as Tensors (engine.py)
            grad = grad if isinstance(grad, Tensor) else Tensor(grad, dtype=grad.dtype)
            backpropagate(self, grad, create_graph=True, retain_graph=retain_graph is not False)
        elif retain_graph is False:
            backpropagate(self, grad, retain_graph=False)
        else:
            backpropagate(self, grad)  # engine.py: topological order, then the chain rule

    def _accumulate(self, g):
        if isinstance(g, Tensor):      # create_graph=True: the gradient is a Tensor in a graph
            if g.dtype != self.dtype:
                g = g.astype(self.dtype)
            with enable_grad():        # recorded even if backward was called inside no_grad
                # a copy still in the graph (clone): two leaves must never share one gradient
                self.grad = g.clone() if self.grad is None else self.grad + g
            return
        if g.dtype != self.array.dtype:
            g = g.astype(self.array.dtype)
        if self.grad is None:
            # a copy: two leaves must never share one gradient array
            # (in-place clipping of one would silently change the other)
            self.grad = Tensor(g.copy(), dtype=g.dtype)
        else:
            self.grad = Tensor(self.grad.array + g, dtype=g.dtype)

    # -- operators (the Functions live in minicnn/functional/) ----------------
    def __add__(self, other):  return _math.AddFn.apply(self, lift(other, self))
    def __radd__(self, other): return _math.AddFn.apply(lift(other, self), self)
    def __sub__(self, other):  return _math.SubFn.apply(self, lift(other, self))
    def __rsub__(self, other): return _math.SubFn.apply(lift(other, self), self)
    def __mul__(self, other):  return _math.MulFn.apply(self, lift(other, self))
    def __rmul__(self, other): return _math.MulFn.apply(lift(other, self), self)
    def __truediv__(self, other):  return _math.DivFn.apply(self, lift(other, self))
    def __rtruediv__(self, other): return _math.DivFn.apply(lift(other, self), self)
    def __neg__(self): return _math.NegFn.apply(self)
    def __pos__(self): return self

    def __pow__(self, exponent):
        if isinstance(exponent, numbers.Number):
            return _math.PowScalarFn.apply(self, exponent=exponent)
        return _math.PowFn.apply(self, lift(exponent, self))

    def __rpow__(self, base):
        return _math.PowFn.apply(lift(base, self), self)

    def __matmul__(self, other):  return _math.MatMulFn.apply(self, lift(other, self))
    def __rmatmul__(self, other): return _math.MatMulFn.apply(lift(other, self), self)

    # comparisons give boolean tensors outside the graph (no gradient)
    def _compare(self, other, op):
        other = other.array if isinstance(other, Tensor) else other
        return Tensor(op(self.array, other))

    def eq(self, other): return self._compare(other, lambda a, b: a == b)
    def ne(self, other): return self._compare(other, lambda a, b: a != b)
    def lt(self, other): return self._compare(other, lambda a, b: a < b)
    def le(self, other): return self._compare(other, lambda a, b: a <= b)
    def gt(self, other): return self._compare(other, lambda a, b: a > b)
    def ge(self, other): return self._compare(other, lambda a, b: a >= b)
    __eq__, __ne__, __lt__, __le__, __gt__, __ge__ = eq, ne, lt, le, gt, ge
    __hash__ = object.__hash__   # tensors are hashable by identity, as in PyTorch

    def __bool__(self):
        if self.array.size != 1:
            raise TensorError(f"the truth value of a tensor of shape {shape_str(self.shape)} is "
                             "ambiguous; use .any() or .all()")
        return bool(self.item())

    def __getitem__(self, index):
        return _shape.GetItemFn.apply(self, index=_unwrap_index(index))

    # -- elementwise math --------------------------------------------------
    def exp(self):  return _math.ExpFn.apply(self)
    def log(self):  return _math.LogFn.apply(self)
    def sqrt(self): return _math.SqrtFn.apply(self)
    def abs(self):  return _math.AbsFn.apply(self)

    def clip(self, min=None, max=None):
        return _math.ClipFn.apply(self, low=min, high=max)

    clamp = clip

    # -- reductions (PyTorch's dim=/keepdim=; NumPy's axis=/keepdims= accepted too) ----
    def sum(self, dim=None, keepdim=False, *, axis=None, keepdims=False):
        dim, keepdim = dim_args(dim, keepdim, axis, keepdims)
        return _red.SumFn.apply(self, axis=dim, keepdims=keepdim)

    def mean(self, dim=None, keepdim=False, *, axis=None, keepdims=False):
        dim, keepdim = dim_args(dim, keepdim, axis, keepdims)
        return _red.MeanFn.apply(self, axis=dim, keepdims=keepdim)

    def prod(self, dim=None, keepdim=False, *, axis=None, keepdims=False):
        """The product over one ``dim`` (all elements by default), as PyTorch's."""
        dim, keepdim = dim_args(dim, keepdim, axis, keepdims)
        if isinstance(dim, tuple):
            raise TypeError(f"prod(dim) reduces one dim (PyTorch's rule), got {dim}")
        return _red.ProdFn.apply(self, axis=None if dim is None else check_dim(dim, self.ndim), keepdims=keepdim)

    def amax(self, dim=None, keepdim=False, *, axis=None, keepdims=False):
        """The maximum over ``dim`` (all dims by default); ties share the gradient."""
        dim, keepdim = dim_args(dim, keepdim, axis, keepdims)
        return _red.MaxFn.apply(self, axis=dim, keepdims=keepdim)

    def amin(self, dim=None, keepdim=False, *, axis=None, keepdims=False):
        return -(-self).amax(dim, keepdim, axis=axis, keepdims=keepdims)

    def max(self, dim=None, keepdim=False, *, axis=None, keepdims=False):
        """``x.max()`` -> a 0-d tensor; ``x.max(dim)`` -> ``(values, indices)``; ``x.max(y)`` -> elementwise."""
        return _red.max_or_min(self, "max", dim, keepdim, axis, keepdims)

    def min(self, dim=None, keepdim=False, *, axis=None, keepdims=False):
        """``x.min()`` -> a 0-d tensor; ``x.min(dim)`` -> ``(values, indices)``; ``x.min(y)`` -> elementwise."""
        return _red.max_or_min(self, "min", dim, keepdim, axis, keepdims)

    def var(self, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None, keepdims=False):
        """Variance; as PyTorch, unbiased (divides by n - 1) unless ``unbiased=False`` or ``correction=0``."""
        dim, keepdim = dim_args(dim, keepdim, axis, keepdims)
        return _red.var(self, axis=dim, keepdims=keepdim, correction=_red.correction_of(unbiased, correction))

    def std(self, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None, keepdims=False):
        return self.var(dim, unbiased, keepdim, correction=correction, axis=axis, keepdims=keepdims).sqrt()

    def argmax(self, dim=None, keepdim=False, *, axis=None, keepdims=False):
        dim, keepdim = dim_args(dim, keepdim, axis, keepdims)
        return Tensor(_red.arg_reduce(self.array, "argmax", dim, keepdim))

    def argmin(self, dim=None, keepdim=False, *, axis=None, keepdims=False):
        dim, keepdim = dim_args(dim, keepdim, axis, keepdims)
        return Tensor(_red.arg_reduce(self.array, "argmin", dim, keepdim))

    def any(self, dim=None, keepdim=False, *, axis=None, keepdims=False):
        """A boolean tensor (``bool(x.any())`` for a Python bool)."""
        dim, keepdim = dim_args(dim, keepdim, axis, keepdims)
        axes = _red.normalize_axes(dim, self.ndim)
        return Tensor(current.xp.asarray(self.array.any(axis=axes, keepdims=keepdim)))

    def all(self, dim=None, keepdim=False, *, axis=None, keepdims=False):
        dim, keepdim = dim_args(dim, keepdim, axis, keepdims)
        axes = _red.normalize_axes(dim, self.ndim)
        return Tensor(current.xp.asarray(self.array.all(axis=axes, keepdims=keepdim)))

    # -- shape ---------------------------------------------------------------
    def reshape(self, *shape):
        return _shape.ReshapeFn.apply(self, shape=_shape_args(shape))

    view = reshape      # minicnn never shares storage between a view and its tensor

    def view_as(self, other):    return self.reshape(other.shape)
    def reshape_as(self, other): return self.reshape(other.shape)

    def unsqueeze(self, dim):
        d = check_dim(dim, self.ndim + 1)
        return self.reshape(self.shape[:d] + (1,) + self.shape[d:])

    def squeeze(self, dim=None):
        """Drop dimensions of size 1 (only ``dim``'s, if given; a no-op if it is not 1)."""
        dims = range(self.ndim) if dim is None else [check_dim(d, self.ndim) for d in
                                                     (dim if isinstance(dim, (tuple, list)) else (dim,))]
        drop = {d for d in dims if self.ndim and self.shape[d] == 1}
        return self.reshape(tuple(n for d, n in enumerate(self.shape) if d not in drop))

    def permute(self, *dims):
        dims = _shape_args(dims)
        if len(dims) != self.ndim:
            raise ValueError(f"permute: expected {self.ndim} dims for a tensor of shape {shape_str(self.shape)}, "
                             f"got {dims}")
        return _shape.TransposeFn.apply(self, axes=tuple(check_dim(d, self.ndim) for d in dims))

    def transpose(self, dim0=None, dim1=None):
        """``x.transpose(d0, d1)`` swaps two dimensions (PyTorch); ``x.transpose()`` of a 2-D tensor is ``x.t()``."""
        if dim0 is None and dim1 is None:
            return self.t()
        if dim0 is None or dim1 is None:
            raise TypeError("transpose(dim0, dim1) swaps two dimensions: give both (permute(...) for more)")
        order = list(range(self.ndim))
        d0, d1 = check_dim(dim0, self.ndim), check_dim(dim1, self.ndim)
        order[d0], order[d1] = order[d1], order[d0]
        return _shape.TransposeFn.apply(self, axes=tuple(order))

    def t(self):
        """The transpose of a tensor with at most 2 dimensions."""
        if self.ndim > 2:
            raise TensorError(f"t() expects a tensor with <= 2 dimensions, got shape {shape_str(self.shape)}; "
                             "use transpose(dim0, dim1) or permute(...)")
        return _shape.TransposeFn.apply(self, axes=None)

    @property
    def T(self):
        return _shape.TransposeFn.apply(self, axes=None)

    def flatten(self, start_dim=0, end_dim=-1):
        return _shape.flatten(self, start_dim, end_dim)


def names_a_dtype(name: str) -> bool:
    try:
        np.dtype(name)
        return True
    except TypeError:
        return False


def lift(value, like: Tensor) -> Tensor:
    """Wrap a number or array as a constant tensor with ``like``'s dtype for floats."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, numbers.Number):
        return Tensor(current.xp.asarray(value, dtype=like.dtype), dtype=like.dtype)
    return Tensor(value)


def _unwrap_index(index):
    """Tensors used as indices become their arrays (t[mask], t[idx])."""
    if isinstance(index, Tensor):
        return index.array
    if isinstance(index, tuple):
        return tuple(i.array if isinstance(i, Tensor) else i for i in index)
    return index


def tensor(data, requires_grad=False, dtype=None) -> Tensor:
    """Create a leaf tensor (``mc.tensor([[1., 2.]], requires_grad=True)``).

    Always a copy, as ``torch.tensor``: in-place changes (``t.data.zero_()``)
    never reach the array or tensor it was made from (``mc.from_numpy`` and
    ``mc.as_tensor`` share).
    """
    out = Tensor(data, requires_grad=requires_grad, dtype=dtype)
    source = data.array if isinstance(data, Tensor) else data
    if out.array is source:
        out.array = out.array.copy()
    return out


# ----------------------------------------------------------------------------
# Function
# ----------------------------------------------------------------------------
class Function:
    """One differentiable operation: ``forward`` and ``backward`` side by side.

    Subclasses implement

    * ``forward(self, *arrays, **options) -> array`` — compute the output from
      the input arrays;
    * ``backward(self, grad_output) -> grad or tuple of grads`` — one gradient
      (an array of the input's shape, or ``None``) per tensor input.

    **What backward needs** is kept in one way, PyTorch's
    (``torch.autograd.Function``'s ``ctx``, here the Function itself):

    * arrays: ``self.save_for_backward(x, w, ...)`` in forward, then
      ``x, w, ... = self.saved_tensors`` in backward;
    * everything else (shapes, strides, flags, scalars): plain attributes,
      ``self.stride = stride``.

    ``self.needs_input_grad[i]`` tells backward whether input ``i`` wants a
    gradient, so it can skip work that nobody will use.

    **Gradients of gradients** (``create_graph=True``) use a second method,
    ``backward_graph(self, grad_output) -> Tensor or tuple of Tensors``: the
    same chain-rule step written with differentiable operations — Tensors in,
    Tensors out, built from Tensor methods and other Functions' ``apply``,
    reading the inputs as Tensors (``self.inputs``) — so the backward pass is
    recorded as a graph too (DeZero's steps 33-36, needle's design). The fast
    array ``backward`` above stays the one ordinary training runs.
    """

    inputs = ()
    needs_input_grad = ()
    saved_tensors = ()
    released = False            # set by a backward with retain_graph=False

    def backward_graph(self, grad_output):
        """The backward written with Tensor operations (``create_graph=True``); see the class doc.

        This default is for Functions that have none yet: it refuses, naming
        the Function, instead of giving second derivatives that are wrong.
        """
        raise NotImplementedError(
            f"create_graph=True: {type(self).__name__} has no differentiable backward "
            f"({type(self).__name__}.backward_graph) yet, so gradients of gradients cannot go "
            "through it; use create_graph=False, or an operation that has one (docs/api/core.md)")

    def release(self):
        """Drop what forward saved for backward (``retain_graph=False``); a later backward raises."""
        self.saved_tensors = None
        self.released = True

    def save_for_backward(self, *arrays):
        """Keep ``arrays`` (or ``None``) for backward, which reads them as ``self.saved_tensors``."""
        self.saved_tensors = arrays

    def __repr__(self):
        return f"<{type(self).__name__}>"

    @classmethod
    def apply(cls, *inputs, **options) -> Tensor:
        """Run forward; if any input requires grad (and grad mode is on), record it."""
        fn = cls()
        arrays = [t.array if t is not None else None for t in inputs]
        requires_grad = _grad_enabled and any(t is not None and t.requires_grad for t in inputs)
        if requires_grad:
            fn.needs_input_grad = tuple(t is not None and t.requires_grad for t in inputs)
        out = Tensor.__new__(Tensor)           # skip __init__'s conversions: forward gives an array
        data = fn.forward(*arrays, **options)
        if not isinstance(data, current.xp.ndarray):   # NumPy turns full reductions into scalars
            data = current.xp.asarray(data)
        out.array = data
        out.grad, out._retain_grad = None, False
        out.requires_grad = requires_grad
        if requires_grad:
            fn.inputs = inputs
            out._ctx = fn
        else:
            out._ctx = None
        if observers:                         # someone is watching (observer.py): detect_anomaly, ONNX export
            for observer in observers:
                observer.on_forward(fn, inputs, options, out)
        return out


# The operator methods and backward above call into these modules; they import
# this one, so they are loaded last (Tensor and Function already exist by then).
from .engine import backpropagate              # noqa: E402
from ..functional import math as _math          # noqa: E402
from ..functional import reductions as _red     # noqa: E402
from ..functional import shape as _shape        # noqa: E402
