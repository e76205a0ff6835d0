"""Devices: where a tensor's array lives (PyTorch's ``torch.device``).

``mc.device("cpu")``, ``mc.device("cuda")``, ``mc.device("cuda:0")``;
``t.device`` answers where ``t.array`` lives: a NumPy array is on the ``cpu``;
a CuPy array is on ``cuda``, and so is an array of the test-only
``simulator`` backend, which pretends to be a device.

The one place minicnn differs from PyTorch: the backend (NumPy, Numba or
CuPy) is chosen once per process (``MINICNN_BACKEND``, ``mc.set_backend``).
``t.to(device)`` and ``module.to(device)`` move arrays between host and GPU;
they do not switch the backend, so compute where the backend computes — run
with ``MINICNN_BACKEND=cupy`` to train on a GPU.
"""
from __future__ import annotations

import numpy as np

from .backend import BackendError, current, load_backend, to_device, to_host

TYPES = ("cpu", "cuda")


class DeviceError(ValueError, RuntimeError):
    """A device string minicnn (and PyTorch) does not know; a ValueError and, as PyTorch's, a RuntimeError."""


class device:  # noqa: N801 - PyTorch's name
    """``device("cpu")``, ``device("cuda")``, ``device("cuda:0")``, ``device("cuda", 0)``.

    Equal to another device of the same type and index, and (unlike PyTorch) to
    the string that names it: ``t.device == "cpu"``.
    """

    __slots__ = ("type", "index")

    def __init__(self, type, index=None):  # noqa: A002 - PyTorch's name
        if isinstance(type, device):
            type, index = type.type, type.index if index is None else index
        if isinstance(type, int) and not isinstance(type, bool):       # torch.device(0) is cuda:0
            type, index = "cuda", type
        if not isinstance(type, str):
            raise TypeError(f"device: expected a string such as 'cpu' or 'cuda:0', got {type!r}")
        name, _, number = type.strip().partition(":")
        if name not in TYPES or (number and not number.isdigit()):
            raise DeviceError(f"unknown device {type!r}: expected one of 'cpu', 'cuda' or 'cuda:N' "
                              "(N a GPU number)")
        if number:
            if index is not None:
                raise DeviceError(f"device {type!r}: give the index in the string or as index=, not both")
            index = int(number)
        if index is not None and (not isinstance(index, int) or index < 0):
            raise DeviceError(f"device index must be a non-negative int, got {index!r}")
        if name == "cpu" and index not in (None, 0):
            raise DeviceError(f"device 'cpu' has no index {index}")
        self.type, self.index = name, index

    def __eq__(self, other):
        if isinstance(other, str):
            try:
                other = device(other)
            except DeviceError:
                return False
        if not isinstance(other, device):
            return NotImplemented
        return self.type == other.type and self.index == other.index

    def __hash__(self):
        return hash((self.type, self.index))

    def __repr__(self):
        index = "" if self.index is None else f", index={self.index}"
        return f"device(type='{self.type}'{index})"

    def __str__(self):
        return self.type if self.index is None else f"{self.type}:{self.index}"


def device_of(array) -> device:
    """Where ``array`` lives: ``cpu`` for NumPy; ``cuda:N`` for CuPy and the simulator's."""
    if isinstance(array, np.ndarray):
        return device("cpu")
    gpu = getattr(array, "device", None)
    return device("cuda", int(getattr(gpu, "id", 0) or 0))


_cuda = None          # (cupy module or None, number of GPUs, why none), probed once


def probe_cuda():
    """``(cupy, count, reason)``: CuPy and the number of usable GPUs, or ``(None, 0, why)``.

    Asks the same questions as ``set_backend("cupy")`` (``backend.load_backend``)
    without switching the backend; answered once per process.
    """
    global _cuda
    if _cuda is None:
        try:
            cupy, _ = load_backend("cupy")
            _cuda = (cupy, int(cupy.cuda.runtime.getDeviceCount()), "")
        except (BackendError, ImportError) as e:
            _cuda = (None, 0, str(e))
    return _cuda


def move(array, to):
    """``array`` on device ``to`` (itself when it is already there)."""
    to = device(to)
    if device_of(array).type == to.type:
        return array
    if to.type == "cpu":
        return to_host(array)
    if current.xp is not np:             # a device backend (cupy, simulator): its own device
        return to_device(array)
    cupy, _, reason = probe_cuda()
    if cupy is None:
        raise BackendError(f"cuda requested but no CUDA GPU is usable: {reason}")
    return cupy.asarray(array)
