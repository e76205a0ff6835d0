"""Making tensors, with PyTorch's names and defaults: ``mc.zeros(2, 3)``, ``mc.randn(4)``, ...

Every function takes a size as ``f(2, 3)`` or ``f((2, 3))``, and ``dtype=``,
``requires_grad=``, ``device=``. Floats default to float32; ``arange`` of
integers gives int64, as in PyTorch. Random ones draw from minicnn's generator
(``minicnn/rng.py``), so ``mc.manual_seed`` repeats them on every backend.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import rng
from ..backend import current, to_device
from ..device import device as _device, move
from .tensor import DEFAULT_FLOAT, Tensor, TensorError, resolve_dtype


def _size(size, who):
    size = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else tuple(size)
    if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in size):
        raise TypeError(f"{who}: the size must be ints, as {who}(2, 3) or {who}((2, 3)), got {size}")
    if any(n < 0 for n in size):
        raise TensorError(f"{who}: the size must not be negative, got {size}")
    return tuple(int(n) for n in size)


def _wrap(array, dtype=None, requires_grad=False, device=None):
    """A leaf tensor of ``array`` (a host or backend array) with ``dtype``, on ``device``."""
    array = to_device(array) if isinstance(array, np.ndarray) else array
    if dtype is not None:
        array = array.astype(resolve_dtype(dtype), copy=False)
    if device is not None:
        array = move(array, _device(device))
    return Tensor(array, dtype=array.dtype, requires_grad=requires_grad)


def _float(dtype):
    return DEFAULT_FLOAT if dtype is None else dtype


def zeros(*size, dtype=None, requires_grad=False, device=None):
    return _wrap(current.xp.zeros(_size(size, "zeros"), dtype=resolve_dtype(_float(dtype))), None, requires_grad, device)


def ones(*size, dtype=None, requires_grad=False, device=None):
    return _wrap(current.xp.ones(_size(size, "ones"), dtype=resolve_dtype(_float(dtype))), None, requires_grad, device)


def empty(*size, dtype=None, requires_grad=False, device=None):
    """Unlike PyTorch's, filled with zeros (never garbage)."""
    return zeros(*size, dtype=dtype, requires_grad=requires_grad, device=device)


def full(size, fill_value, dtype=None, requires_grad=False, device=None):
    """The dtype follows ``fill_value`` when not given: bool, int64 or float32 (PyTorch's rule)."""
    if dtype is None:
        dtype = (np.bool_ if isinstance(fill_value, (bool, np.bool_)) else
                 np.int64 if isinstance(fill_value, numbers.Integral) else DEFAULT_FLOAT)
    return _wrap(current.xp.full(_size((size,), "full"), fill_value, dtype=resolve_dtype(dtype)),
                 None, requires_grad, device)


def rand(*size, dtype=None, requires_grad=False, device=None):
    """Uniform on [0, 1)."""
    return _wrap(rng.generator().random(_size(size, "rand")), _float(dtype), requires_grad, device)


def randn(*size, dtype=None, requires_grad=False, device=None):
    """Standard normal."""
    return _wrap(rng.generator().standard_normal(_size(size, "randn")), _float(dtype), requires_grad, device)


def randint(low, high=None, size=None, *, dtype=None, requires_grad=False, device=None):
    """Integers in [low, high): ``randint(high, size)`` or ``randint(low, high, size)``; int64."""
    if size is None:
        low, high, size = 0, low, high
    if size is None:
        raise TypeError("randint: give a size, as randint(10, (3,)) or randint(0, 10, (3,))")
    if high <= low:
        raise TensorError(f"randint: high ({high}) must be greater than low ({low})")
    drawn = rng.generator().integers(low, high, _size((size,), "randint"), dtype=np.int64)
    return _wrap(drawn, np.int64 if dtype is None else dtype, requires_grad, device)


def arange(start, end=None, step=1, *, dtype=None, requires_grad=False, device=None):
    """``arange(end)``, ``arange(start, end, step)``: int64 when all are ints, else float32."""
    if end is None:
        start, end = 0, start
    if step == 0:
        raise ValueError("arange: step must not be zero")
    ints = all(isinstance(v, numbers.Integral) for v in (start, end, step))
    if dtype is None:
        dtype = np.int64 if ints else DEFAULT_FLOAT
    count = max(0, int(np.ceil((end - start) / step)))
    values = start + step * np.arange(count, dtype=np.int64 if ints else np.float64)
    return _wrap(values, dtype, requires_grad, device)


def linspace(start, end, steps, *, dtype=None, requires_grad=False, device=None):
    return _wrap(np.linspace(start, end, steps), _float(dtype), requires_grad, device)


def eye(n, m=None, *, dtype=None, requires_grad=False, device=None):
    return _wrap(current.xp.eye(n, n if m is None else m, dtype=resolve_dtype(_float(dtype))),
                 None, requires_grad, device)


def _like(maker, t, dtype, requires_grad, device):
    out = maker(t.shape, dtype=t.dtype if dtype is None else dtype)
    return _wrap(out.array, None, requires_grad, t.device if device is None else device)


def zeros_like(t, *, dtype=None, requires_grad=False, device=None):
    return _like(zeros, t, dtype, requires_grad, device)


def ones_like(t, *, dtype=None, requires_grad=False, device=None):
    return _like(ones, t, dtype, requires_grad, device)


def empty_like(t, *, dtype=None, requires_grad=False, device=None):
    return _like(empty, t, dtype, requires_grad, device)


def rand_like(t, *, dtype=None, requires_grad=False, device=None):
    return _like(rand, t, dtype, requires_grad, device)


def randn_like(t, *, dtype=None, requires_grad=False, device=None):
    return _like(randn, t, dtype, requires_grad, device)


def full_like(t, fill_value, *, dtype=None, requires_grad=False, device=None):
    return _wrap(full(t.shape, fill_value, dtype=t.dtype if dtype is None else dtype).array,
                 None, requires_grad, t.device if device is None else device)


def from_numpy(array):
    """A tensor of a NumPy array, any dtype kept; it shares the memory on the CPU backends."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy: expected a numpy.ndarray, got {type(array).__name__}")
    return _wrap(array)


def as_tensor(data, dtype=None, device=None):
    """``data`` itself when it is already a tensor of that dtype and device; a NumPy array keeps its dtype
    (and shares memory on the CPU backends); lists and numbers as ``mc.tensor``."""
    if isinstance(data, Tensor):
        out = data
    elif isinstance(data, np.ndarray) or isinstance(data, current.xp.ndarray):
        out = _wrap(data)
    else:
        out = Tensor(data)
    return out.to(*(a for a in (device, dtype) if a is not None))
