"""A pretend GPU for machines without one: the ``simulator`` backend (tests only).

What a device boundary is
-------------------------
A GPU has its own memory. An array that lives there (a ``cupy.ndarray``) is
not a NumPy array, and the two never mix silently:

* ``device_array + host_array`` is an error (CuPy: ``TypeError: Unsupported
  type <class 'numpy.ndarray'>``) — move the host array over first
  (``xp.asarray(host)``, one explicit copy host -> device);
* ``np.asarray(device_array)`` is an error too — copy it back explicitly
  with ``device_array.get()`` (one copy device -> host);
* Python numbers and NumPy scalars may be mixed freely (they travel as kernel
  arguments), and a one-element result may be read as a number
  (``float(a.sum())``, ``a.item()``): the GPU waits and sends four bytes back.

Code written and tested only on NumPy breaks at this boundary the first time
it meets a GPU: a mask drawn with ``np.random`` multiplied into a device
array, a ``np.where`` on device data, a checkpoint that pickles device arrays.
This module lets the test suite find those places on a CPU.

How it works
------------
:class:`DeviceArray` wraps a NumPy array — the "device memory" — that only
this module touches. It answers the array API (shape, dtype, indexing,
reshape, sum, arithmetic, ...) by computing with NumPy on that memory and
wrapping the result again, so every number is exactly what the ``numpy``
backend computes. What it refuses is exactly what CuPy refuses:

* through ``__array_ufunc__`` (``+``, ``np.exp``, ...) and
  ``__array_function__`` (``np.concatenate``, ``np.where``, ...): any host
  ``numpy.ndarray`` among the operands;
* through ``__array__``: any conversion to a host array that is not ``.get()``;
* ``pickle``: a checkpoint must hold host arrays (CuPy would pickle the device
  array and the file would need a GPU to load; we make that an error);
* ``xp.<name>`` for a NumPy function CuPy does not have (``CUPY_FUNCTIONS``
  lists the ones it does): ``xp.broadcast_shapes`` runs on NumPy and is an
  AttributeError on a GPU.

Every crossing is also counted in :data:`transfers` (``"host_to_device"``,
``"device_to_host"``: copies in either direction, scalar reads included), so
a test can pin down how many copies a training step makes — each one is a
synchronisation on a real GPU.

It is deliberately *not* a ``numpy.ndarray`` subclass: ``np.asarray`` returns
any subclass instance as a plain host array without asking it, and
``isinstance(a, np.ndarray)`` would be True — the two leaks we want to catch.

``xp`` below is the backend's array module (CuPy's place): NumPy's names that
CuPy shares, with ``xp.asarray`` as the explicit host -> device copy. The kernels at the bottom
are ``numpy_ref``'s, behind the same wall: device arrays in, device arrays out,
and a host array passed to a kernel is an error naming the argument.
"""
from __future__ import annotations

import collections
import copy
import functools
import numbers
import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from . import numpy_ref

NAME = "simulator"

# what CuPy says when a host array meets a device operation
_UNSUPPORTED = ("Unsupported type {kind}: {where} mixes a host numpy.ndarray with device arrays. "
                "Move it to the device first (xp.asarray(a) or minicnn.backend.to_device(a)) — "
                "CuPy raises this same TypeError on a GPU.")
_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed: this is a device array. "
             "Copy it to the host explicitly with .get() (or minicnn.backend.to_host, Tensor.numpy()).")
# numpy.ndarray attributes that hand out host memory itself
_HOST_ONLY = {"data", "ctypes", "tofile", "tobytes", "dump", "dumps", "flat", "base"}


#: How many copies crossed the wall, by direction (reset it with ``transfers.clear()``).
transfers = collections.Counter()


def _is_scalar(value):
    """Python numbers and NumPy scalars: passed by value, fine on either side."""
    return isinstance(value, (numbers.Number, np.generic)) and not isinstance(value, np.ndarray)


class DeviceArray(NDArrayOperatorsMixin):
    """An array in (simulated) device memory. Read the module docstring first.

    ``DeviceArray(memory)`` takes ownership of the NumPy array ``memory``;
    create device arrays with ``xp.asarray(host_data)`` instead.
    """

    __slots__ = ("_memory",)

    def __init__(self, memory):
        if not isinstance(memory, np.ndarray):
            raise TypeError(f"DeviceArray wraps a numpy.ndarray, got {type(memory).__name__}")
        self._memory = memory

    # -- metadata lives beside the data pointer, on the host, as in CuPy ------------
    shape = property(lambda self: self._memory.shape)
    dtype = property(lambda self: self._memory.dtype)
    ndim = property(lambda self: self._memory.ndim)
    size = property(lambda self: self._memory.size)
    itemsize = property(lambda self: self._memory.itemsize)
    nbytes = property(lambda self: self._memory.nbytes)
    strides = property(lambda self: self._memory.strides)
    flags = property(lambda self: self._memory.flags)
    T = property(lambda self: DeviceArray(self._memory.T))

    # -- the one door to the host ------------------------------------------------------
    def get(self):
        """Copy device -> host: a new ``numpy.ndarray`` (CuPy's ``ndarray.get()``)."""
        transfers["device_to_host"] += 1
        return self._memory.copy()

    def item(self):
        """The single element as a Python number (a device -> host copy)."""
        transfers["device_to_host"] += 1
        return self._memory.item()

    def tolist(self):
        """The elements as nested Python lists (a device -> host copy)."""
        transfers["device_to_host"] += 1
        return self._memory.tolist()

    def __array__(self, dtype=None, copy=None):
        raise TypeError(_IMPLICIT)

    def __reduce_ex__(self, protocol):
        raise TypeError("a device array is being pickled: save host copies instead "
                        "(.get(), minicnn.backend.to_host, Tensor.numpy()) so that the file "
                        "loads on any machine")

    def __copy__(self):
        return DeviceArray(self._memory.copy())

    def __deepcopy__(self, memo):
        return DeviceArray(copy.deepcopy(self._memory, memo))

    # -- NumPy's dispatch protocols: compute on device memory, refuse host arrays -----
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _apply_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, _types, args, kwargs):
        if func.__name__ not in CUPY_FUNCTIONS:  # CuPy dispatches only to functions it has
            return NotImplemented
        where = f"numpy.{func.__name__}"
        return _wrap(func(*_memory_of(args, where), **_memory_of(kwargs, where)))

    # -- indexing: index arrays may come from the host (CuPy copies them over) --------
    def __getitem__(self, index):
        return _wrap(self._memory[_index(index)])

    def __setitem__(self, index, value):
        if isinstance(value, DeviceArray):
            value = value._memory
        elif not _is_scalar(value):
            raise TypeError(f"cannot assign a host {type(value).__name__} into a device array; "
                            "move it to the device first (xp.asarray)")
        self._memory[_index(index)] = value

    def __len__(self):
        return len(self._memory)

    def __iter__(self):
        return (_wrap(row) for row in self._memory)

    # -- a single value may be read as a Python number (the GPU syncs) ----------------
    def __bool__(self):
        transfers["device_to_host"] += 1
        return bool(self._memory)

    def __float__(self):
        transfers["device_to_host"] += 1
        return float(self._memory)

    def __int__(self):
        transfers["device_to_host"] += 1
        return int(self._memory)

    def __index__(self):
        transfers["device_to_host"] += 1
        return self._memory.__index__()

    def __format__(self, spec):
        transfers["device_to_host"] += 1
        return format(self._memory.item() if self._memory.size == 1 else self._memory, spec)

    def __repr__(self):
        transfers["device_to_host"] += 1
        return "device_" + repr(self._memory)

    # -- everything else: NumPy's ndarray methods, run on device memory ---------------
    def __getattr__(self, name):
        if name.startswith("__") or name == "_memory":
            raise AttributeError(name)          # __array_interface__ & co. must not leak memory
        if name in _HOST_ONLY:
            raise AttributeError(f"a device array has no host-memory attribute .{name}; "
                                 "copy it to the host with .get() first")
        attr = getattr(self._memory, name)
        if not callable(attr):
            return _wrap(attr)

        @functools.wraps(attr)
        def method(*args, **kwargs):
            where = f"DeviceArray.{name}"
            return _wrap(attr(*_memory_of(args, where), **_memory_of(kwargs, where)))
        return method


# -----------------------------------------------------------------------------
# Crossing the wall: unwrap device arrays, refuse host arrays, wrap results
# -----------------------------------------------------------------------------
def _memory_of(value, where):
    """The device memory behind ``value`` (recursing into lists, tuples and dicts).

    A host ``numpy.ndarray`` here means host data reached a device operation: error.
    """
    if isinstance(value, DeviceArray):
        return value._memory
    if isinstance(value, np.ndarray):
        raise TypeError(_UNSUPPORTED.format(kind=type(value), where=where))
    if isinstance(value, (list, tuple)):
        return type(value)(_memory_of(v, where) for v in value)
    if isinstance(value, dict):
        return {k: _memory_of(v, where) for k, v in value.items()}
    return value


def _index(index):
    """An index for device memory. Device index arrays are unwrapped; host lists
    and index arrays are allowed, because CuPy copies them to the device itself."""
    if isinstance(index, DeviceArray):
        return index._memory
    if isinstance(index, tuple):
        return tuple(_index(i) for i in index)
    return index


def _wrap(result):
    """Arrays (and NumPy scalars, which CuPy returns as 0-d arrays) become device arrays."""
    if isinstance(result, np.ndarray):
        return DeviceArray(result)
    if isinstance(result, np.generic):
        return DeviceArray(np.asarray(result))
    if isinstance(result, (list, tuple)) and any(isinstance(r, (np.ndarray, np.generic)) for r in result):
        return type(result)(_wrap(r) for r in result)
    return result


def _apply_ufunc(ufunc, method, inputs, kwargs):
    """Run ``ufunc.method`` (``__call__``, ``reduce``, ``at``, ...) on device memory."""
    where = f"numpy.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
    if method == "at":                       # ufunc.at(a, indices, b): the middle one is an index
        a, index, *rest = inputs
        args = [_memory_of(a, where), _index(index), *(_memory_of(b, where) for b in rest)]
    else:
        args = []
        for x in inputs:
            if not (isinstance(x, DeviceArray) or _is_scalar(x)):
                if isinstance(x, np.ndarray):
                    raise TypeError(_UNSUPPORTED.format(kind=type(x), where=where))
                raise TypeError(f"Unsupported type {type(x)}: {where} takes device arrays "
                                "and scalars")
            args.append(_memory_of(x, where))
    kwargs = dict(kwargs)
    out = kwargs.pop("out", None)
    kwargs = _memory_of(kwargs, where)
    if out is not None:
        kwargs["out"] = _memory_of(out, where)
    result = getattr(ufunc, method)(*args, **kwargs)
    if out is not None:                      # in place (a += b): hand back the same objects
        return out[0] if isinstance(out, tuple) and len(out) == 1 else out
    return _wrap(result)


# -----------------------------------------------------------------------------
# xp: the simulated device's array module (CuPy's place)
# -----------------------------------------------------------------------------
#: The NumPy functions CuPy also has (from CuPy's API; each is in cupy/__init__.py
#: since CuPy 8). NumPy has more — ``xp.broadcast_shapes``, say — and code that
#: uses one of those works on NumPy and fails on the GPU, so the simulator refuses
#: every function not listed. Add a name here only after checking CuPy has it.
CUPY_FUNCTIONS = frozenset("""
    empty empty_like eye full full_like identity ones ones_like zeros zeros_like
    array asarray asanyarray ascontiguousarray copy arange linspace meshgrid diag tril triu
    copyto ravel reshape moveaxis swapaxes transpose atleast_1d atleast_2d atleast_3d
    broadcast_arrays broadcast_to expand_dims squeeze concatenate stack vstack hstack
    split array_split repeat tile flip roll unique pad
    take take_along_axis diagonal put where nonzero flatnonzero choose compress
    dot matmul outer inner vdot tensordot einsum trace
    allclose isclose isfinite isinf isnan all any logical_and logical_or logical_not logical_xor
    equal not_equal greater greater_equal less less_equal
    add subtract multiply divide true_divide floor_divide negative power remainder mod fmod
    reciprocal absolute abs sign sqrt square cbrt exp exp2 expm1 log log2 log10 log1p
    logaddexp logaddexp2 sin cos tan arcsin arccos arctan arctan2 hypot sinh cosh tanh
    arcsinh arccosh arctanh maximum minimum fmax fmin clip floor ceil trunc rint around
    copysign signbit nextafter ldexp frexp nan_to_num invert bitwise_and bitwise_or bitwise_xor
    sum prod cumsum cumprod mean var std amax amin max min argmax argmin count_nonzero
    nansum nanmean nanmax nanmin nanargmax nanargmin average ptp percentile
    sort argsort searchsorted partition argpartition bincount histogram digitize cov corrcoef
    can_cast result_type promote_types isscalar may_share_memory shares_memory
""".split())
class _DeviceUfunc:
    """``xp.exp``, ``xp.add``, ...: NumPy's ufunc, on device arrays only."""

    def __init__(self, ufunc):
        self._ufunc = ufunc

    def __call__(self, *inputs, **kwargs):
        return _apply_ufunc(self._ufunc, "__call__", inputs, kwargs)

    def __getattr__(self, name):
        if name in ("reduce", "accumulate", "reduceat", "outer", "at"):
            return lambda *inputs, **kwargs: _apply_ufunc(self._ufunc, name, inputs, kwargs)
        return getattr(self._ufunc, name)


def _device_function(func):
    """``xp.zeros``, ``xp.where``, ``xp.concatenate``, ...: NumPy's function on device memory."""
    @functools.wraps(func)
    def on_device(*args, **kwargs):
        where = f"xp.{func.__name__}"
        return _wrap(func(*_memory_of(args, where), **_memory_of(kwargs, where)))
    return on_device


class _DeviceNumPy:
    """The ``xp`` of the simulator backend: ``xp.zeros(...)`` makes a device array,
    ``xp.asarray(host)`` copies host data to the device, ``xp.asnumpy(a)`` back."""

    ndarray = DeviceArray

    def asarray(self, a, dtype=None):
        """Host data -> a device array (a copy); a device array is returned as is (cast if asked)."""
        if isinstance(a, DeviceArray):
            return a if dtype is None or a.dtype == dtype else a.astype(dtype)
        transfers["host_to_device"] += 1
        return DeviceArray(np.array(a, dtype=dtype))

    def array(self, a, dtype=None, copy=True):
        if isinstance(a, DeviceArray):
            return DeviceArray(np.array(a._memory, dtype=dtype, copy=copy))
        transfers["host_to_device"] += 1
        return DeviceArray(np.array(a, dtype=dtype))

    def asnumpy(self, a):
        """Device -> host copy (``cupy.asnumpy``); host data passes through."""
        return a.get() if isinstance(a, DeviceArray) else np.asarray(a)

    def __getattr__(self, name):
        value = getattr(np, name)                # AttributeError for names NumPy lacks
        if isinstance(value, types.ModuleType):
            raise AttributeError(f"the simulated device has no xp.{name} submodule (minicnn draws "
                                 "random numbers on the host: see minicnn/rng.py)")
        if callable(value) and not isinstance(value, type) and name not in CUPY_FUNCTIONS:
            raise AttributeError(f"xp.{name}: NumPy has it but CuPy does not (not in the simulator's "
                                 "CUPY_FUNCTIONS), so this line would fail on a GPU; for shapes and "
                                 "other host values call numpy directly")
        if isinstance(value, np.ufunc):
            value = _DeviceUfunc(value)
        elif callable(value) and not isinstance(value, type):
            value = _device_function(value)
        # else: dtypes (xp.float32) and constants (xp.inf) are the same on host and device
        setattr(self, name, value)               # look each name up once
        return value

    def __repr__(self):
        return "<simulated device array module (minicnn test backend)>"


xp = _DeviceNumPy()


# -----------------------------------------------------------------------------
# Kernels: numpy_ref's, behind the device wall
# -----------------------------------------------------------------------------
def _device_kernel(reference):
    """Wrap a ``numpy_ref`` kernel: device arrays in, device arrays out.

    A host ``numpy.ndarray`` argument is an error naming the argument — on a GPU
    the kernel would be handed a pointer it cannot dereference.
    """
    @functools.wraps(reference)
    def kernel(*args, **kwargs):
        memory, named = [], {}
        for position, a in [*enumerate(args), *kwargs.items()]:
            if isinstance(a, np.ndarray):
                raise TypeError(f"kernel {reference.__name__}: argument {position} is a host "
                                "numpy.ndarray; a device kernel needs device arrays "
                                "(move it with xp.asarray / minicnn.backend.to_device)")
            value = a._memory if isinstance(a, DeviceArray) else a
            if isinstance(position, str):
                named[position] = value
            else:
                memory.append(value)
        return _wrap(reference(*memory, **named))
    return kernel


im2col = _device_kernel(numpy_ref.im2col)
col2im = _device_kernel(numpy_ref.col2im)
max_pool2d_forward = _device_kernel(numpy_ref.max_pool2d_forward)
max_pool2d_backward = _device_kernel(numpy_ref.max_pool2d_backward)
bias_relu_max_pool2d_forward = _device_kernel(numpy_ref.bias_relu_max_pool2d_forward)
bias_relu_max_pool2d_backward = _device_kernel(numpy_ref.bias_relu_max_pool2d_backward)
avg_pool2d_forward = _device_kernel(numpy_ref.avg_pool2d_forward)
avg_pool2d_backward = _device_kernel(numpy_ref.avg_pool2d_backward)
depthwise_conv2d_forward = _device_kernel(numpy_ref.depthwise_conv2d_forward)
depthwise_conv2d_backward = _device_kernel(numpy_ref.depthwise_conv2d_backward)
erf = _device_kernel(numpy_ref.erf)
# the optional one-pass kernels kernels/cupy_gpu.py has, so that the layers take the same path
batch_norm_train_forward = _device_kernel(numpy_ref.batch_norm_train_forward)
batch_norm_train_backward = _device_kernel(numpy_ref.batch_norm_train_backward)
batch_norm_eval_forward = _device_kernel(numpy_ref.batch_norm_eval_forward)
relu_forward = _device_kernel(numpy_ref.relu_forward)
relu_backward = _device_kernel(numpy_ref.relu_backward)
conv2d_forward = _device_kernel(numpy_ref.conv2d_forward)
conv2d_backward = _device_kernel(numpy_ref.conv2d_backward)
qgemm_u8s8 = _device_kernel(numpy_ref.qgemm_u8s8)


def scatter_add(dst, index, values):
    """``dst[index] += values`` in place, repeated indices adding up (see numpy_ref)."""
    for name, a in (("dst", dst), ("values", values)):
        if isinstance(a, np.ndarray):
            raise TypeError(f"kernel scatter_add: {name} is a host numpy.ndarray; a device "
                            "kernel needs device arrays")
    if not isinstance(dst, DeviceArray):
        raise TypeError(f"kernel scatter_add: dst must be a device array, got {type(dst).__name__}")
    numpy_ref.scatter_add(dst._memory, _index(index),
                          values._memory if isinstance(values, DeviceArray) else values)
