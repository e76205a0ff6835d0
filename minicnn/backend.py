"""Backend selection: which array module and which kernels do the work.

A backend is three things:

* a **name** — ``"numpy"``, ``"numba"`` or ``"cupy"`` (and ``"simulator"``,
  below);
* an **array module** ``xp`` — ``numpy`` or ``cupy``; layer code writes
  ``xp.exp(x)`` and never asks which one it got;
* a **kernel table** ``current.kernels`` — the hot loops (im2col, col2im,
  pooling, ...) of one module from ``minicnn.kernels``. Which kernels there
  are, their parameters and which are required is declared once, in
  ``kernels/contract.py``; :func:`set_backend` checks the module against it.
  ``kernels/numpy_ref.py`` is the readable specification; the others must
  agree with it, and the tests check that they do. An optional kernel (a
  fast path) that a backend lacks holds the contract's default: a generic
  function, or ``None`` — ask ``current.kernels.provides(name)``.

The backend is chosen once at import from the environment variable
``MINICNN_BACKEND`` (``numpy`` | ``numba`` | ``cupy`` | ``auto``; default
``auto``), and can be changed later with :func:`set_backend`. ``auto`` picks
the fastest backend that works on this machine. Asking for a backend that
cannot work here is an error that says why — never a silent fallback.

Layer code reads the live choice through the one mutable object ``current``::

    from minicnn.backend import current
    xp = current.xp                 # numpy or cupy
    cols = current.kernels.im2col(x, ...)

Host and device. With ``cupy`` every tensor's array lives in GPU memory; the
only copies between host and device are the explicit ones — :func:`to_device`
(a DataLoader batch, a drawn dropout mask, loaded weights) and :func:`to_host`
(``Tensor.numpy()``, checkpoints, metrics). Mixing a host ``numpy.ndarray``
into device arithmetic is an error on a GPU, so the test suite also runs on
``"simulator"``: a pretend device (``kernels/simulated_device.py``) that raises
the same errors on a CPU. It is for tests only and ``auto`` never picks it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import os
import sys

import numpy as np

from .kernels import contract

#: The backends for real work, in the order ``auto`` tries them.
AVAILABLE = ("cupy", "numba", "numpy")
#: Backends that exist for the tests; selectable by name, never by ``auto``.
TEST_ONLY = ("simulator",)


class BackendError(RuntimeError):
    """A backend was asked for that does not exist or cannot run here."""


class _Current:
    """The active backend. One instance, mutated by :func:`set_backend`."""

    def __init__(self):
        self.name = None
        self.xp = np
        self.kernels = None

    def __repr__(self):
        return f"<minicnn backend {self.name!r}>"


current = _Current()


def keep_freed_memory():
    """Ask glibc's malloc to keep freed big blocks for reuse (CPU backends).

    A training step allocates and frees the same big arrays every time (im2col
    columns, activations, gradients). By default glibc returns big blocks to
    the operating system on ``free``, and the next step gets them back one page
    fault per 4 KiB page: measured, that was half of a step on this project's
    2-core machines (benchmarks/README.md). Linux/glibc only; set
    ``MINICNN_TUNE_MALLOC=0`` to leave malloc alone. Returns True if applied.
    """
    if os.environ.get("MINICNN_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3          # from <malloc.h>
        # blocks up to 32 MiB (glibc's maximum) come from the reusable heap, not mmap
        ok = libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
        # keep up to 1 GiB of freed heap instead of trimming it back to the OS
        ok &= libc.mallopt(M_TRIM_THRESHOLD, 2**30)
        return bool(ok)
    except (OSError, AttributeError):                      # not glibc (musl, ...)
        return False


def spin_openmp_threads_briefly():
    """Ask GNU OpenMP's idle workers to spin ~1 ms before they sleep (numba backend).

    Why: a training step on the numba backend starts ~20 parallel loops, and a
    loop whose workers had gone to sleep took 50-70 us to start on this
    project's 2-core VMs, against 2 us for workers still spinning
    (benchmarks/README.md). ``GOMP_SPINCOUNT=100000`` rounds is about a
    millisecond. It must be set before Numba starts its thread pool, so
    :func:`load_backend` calls this before importing ``kernels/numba_cpu.py``; it then
    applies to every OpenMP library this process loads. Left alone if you set
    ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` yourself. Returns True if set.
    """
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return False
    os.environ["GOMP_SPINCOUNT"] = "100000"
    return True


def load_backend(name):
    """Return ``(xp, kernel module)`` for ``name`` or raise :class:`BackendError`."""
    if name == "numpy":
        from .kernels import numpy_ref
        return np, numpy_ref
    if name == "numba":
        spin_openmp_threads_briefly()          # before numba's thread pool exists
        try:
            import numba  # noqa: F401
        except ImportError as e:
            raise BackendError(
                "backend 'numba' needs the numba package, which did not import "
                f"({e}); install it with: pip install numba") from e
        kernels = importlib.import_module(".kernels.numba_cpu", __package__)
        return np, kernels
    if name == "cupy":
        try:
            import cupy
        except ImportError as e:
            raise BackendError(
                "backend 'cupy' needs CuPy, which is not installed "
                f"({e}); install it with: pip install 'minicnn[gpu]' "
                "(or the cupy-cudaXXx wheel matching your CUDA, e.g. cupy-cuda12x)") from e
        try:
            n = cupy.cuda.runtime.getDeviceCount()
            if n >= 1:
                cupy.zeros(1)       # a real allocation: the driver and the device answer
        except Exception as e:      # no CUDA driver, a wheel built for another CUDA, ...
            raise BackendError(
                "backend 'cupy': CuPy is installed but no CUDA device is usable "
                f"({type(e).__name__}: {e}); check nvidia-smi and that the CuPy wheel "
                "matches the driver's CUDA version") from e
        if n < 1:
            raise BackendError(
                "backend 'cupy': CuPy is installed but no CUDA device is visible "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})")
        kernels = importlib.import_module(".kernels.cupy_gpu", __package__)
        return cupy, kernels
    if name == "simulator":
        from .kernels import simulated_device
        return simulated_device.xp, simulated_device
    raise BackendError(
        f"unknown backend {name!r}; expected one of {', '.join(AVAILABLE)} or 'auto' "
        f"(or the test-only {', '.join(TEST_ONLY)})")


def check_kernels(name, module):
    """Raise :class:`BackendError` unless ``module`` has every required kernel of
    ``kernels/contract.py``, each (and each optional one it has) with the declared
    parameters. Run once per :func:`set_backend`, so a missing kernel is found at the
    switch, not in the middle of a training step."""
    missing, mismatched = contract.missing_kernels(module)
    if missing or mismatched:
        lines = [f"backend {name!r}: its kernel module {module.__name__} does not meet the "
                 "contract in kernels/contract.py (KERNELS)"]
        if missing:
            lines.append(f"missing required kernels: {', '.join(missing)}")
        lines += mismatched
        raise BackendError("\n".join(lines))


def set_backend(name: str) -> str:
    """Switch every later operation to backend ``name``; return the name chosen.

    ``"auto"`` tries ``cupy`` (only if a GPU is usable), then ``numba``, then
    ``numpy``; ``"simulator"`` (tests only) must be asked for by name. Tensors
    created before the switch keep their arrays: move them yourself (or rebuild
    the model, or reload a state_dict) when switching between host and device.
    """
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a str, got {type(name).__name__}")
    name = name.strip().lower()
    if name == "auto":
        reasons = []
        for candidate in AVAILABLE:
            try:
                xp, kernels = load_backend(candidate)
            except (BackendError, ImportError) as e:
                reasons.append(f"{candidate}: {e}")
                continue
            name = candidate
            break
        else:  # pragma: no cover - numpy_ref needs only NumPy, so only a broken copy of minicnn gets here
            raise BackendError("no backend could be loaded:\n" + "\n".join(reasons))
    else:
        xp, kernels = load_backend(name)
    check_kernels(name, kernels)
    # numpy_ref's optional kernels are the specification of what the callers compose
    # themselves, not fast paths: the numpy backend leaves them to the callers
    table = contract.kernel_table(kernels, fast_paths=name != "numpy")
    current.name, current.xp, current.kernels = name, xp, table
    if name in ("numpy", "numba"):
        keep_freed_memory()
    return name


def get_backend() -> str:
    """The name of the active backend: ``"numpy"``, ``"numba"``, ``"cupy"`` (or ``"simulator"``)."""
    return current.name


def to_host(a):
    """Return a NumPy array with the contents of ``a`` (a copy if it lives on a device).

    Device arrays (CuPy's, the simulator's) are copied with their ``.get()``;
    host arrays are returned as they are; lists and numbers become arrays.
    """
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)  # cupy.ndarray.get() copies device -> host
    if get is not None:
        return get()
    return np.asarray(a)


def to_device(a, dtype=None):
    """Return ``a`` as an array of the active backend (host -> device if needed).

    On a device backend this is ``xp.asarray``: one explicit copy of host data
    to the device (none if ``a`` is already there). On a CPU backend a device
    array is first copied to the host.
    """
    xp = current.xp
    if xp is np:
        a = to_host(a)
        return a if dtype is None else a.astype(dtype, copy=False)
    return xp.asarray(a, dtype=dtype)


set_backend(os.environ.get("MINICNN_BACKEND", "auto"))
