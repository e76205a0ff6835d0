"""Matrix products inside Numba kernels, through NumPy's own BLAS when it can be reached.

``np.dot`` in Numba-compiled code calls the BLAS that SciPy ships
(``scipy.linalg.cython_blas``). pip's SciPy and NumPy wheels each bundle their
own OpenBLAS, and they are not equally fast at the products a convolution with
few channels makes. Measured on this project's 2-core machine, one thread, a
(16, 144) @ (144, 1568) float32 product (16 output channels, 3x3 taps over 16
input channels, two 28x28 images): SciPy's OpenBLAS 0.3.30 ~60 GFLOP/s, NumPy's
0.3.31 ~95-110 GFLOP/s; two threads in a chunked convolution kernel, 64 vs 169.

So :func:`gemm` calls NumPy's OpenBLAS directly (its ``cblas_sgemm`` /
``cblas_dgemm``) when pip's NumPy wheel has one, and falls back to ``np.dot``
otherwise (conda's MKL, a system BLAS, another platform): the same products
either way, only the speed differs. How it is wired:

* The library is found with ``threadpoolctl`` (the OpenBLAS in ``numpy.libs``,
  built with 64-bit integers: symbols ``scipy_cblas_sgemm64_``), loaded with
  ``ctypes``, and its functions' addresses are registered with LLVM under fixed
  names (``llvmlite.binding.add_symbol``); the kernels call them as external
  functions by those names, so Numba's on-disk cache of the kernels stays valid
  from one process to the next.
* Threads. The kernels call BLAS from each of Numba's threads, one product per
  thread, and that product must run on the calling thread alone (two threads
  each starting BLAS threads would put 4 threads on 2 cores). The kernels'
  Python wrappers therefore set this library to one thread while a kernel runs
  (:func:`one_thread`, entered by ``numba_cpu._OneBlasThread``) and give NumPy
  its count back after: 0.4 microseconds a switch. (OpenBLAS's
  ``openblas_set_num_threads_local`` would say it per thread, but in this build
  it changes the library's global count — measured — so it is not used.)
* Without the library, the symbols are bound to stubs that are never called
  (``FAST`` is False and :func:`gemm` takes ``np.dot``): the kernels compile and
  link the same on every machine.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np
from numba import njit
from numba.core import types

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

_i32, _i64, _ptr = types.int32, types.int64, types.intp
_SGEMM = types.ExternalFunction("minicnn_cblas_sgemm", types.void(
    _i32, _i32, _i32, _i64, _i64, _i64, types.float32, _ptr, _i64, _ptr, _i64, types.float32, _ptr, _i64))
_DGEMM = types.ExternalFunction("minicnn_cblas_dgemm", types.void(
    _i32, _i32, _i32, _i64, _i64, _i64, types.float64, _ptr, _i64, _ptr, _i64, types.float64, _ptr, _i64))

_keep = []                     # the ctypes objects whose addresses LLVM holds: never freed


def _numpy_openblas():
    """NumPy's own OpenBLAS: (library, sgemm, dgemm, set_num_threads, get_num_threads) or None."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    home = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(np.__file__))), "numpy.libs")
    for lib in ThreadpoolController().lib_controllers:
        if lib.internal_api != "openblas" or os.path.dirname(os.path.abspath(lib.filepath)) != home:
            continue
        try:
            handle = ctypes.CDLL(lib.filepath)
            for prefix in ("scipy_", ""):
                names = [prefix + n + "64_" for n in ("cblas_sgemm", "cblas_dgemm", "openblas_set_num_threads",
                                                       "openblas_get_num_threads")]
                if all(hasattr(handle, n) for n in names):
                    sgemm, dgemm, set_threads, get_threads = (getattr(handle, n) for n in names)
                    set_threads.argtypes, set_threads.restype = [ctypes.c_int], None
                    get_threads.argtypes, get_threads.restype = [], ctypes.c_int
                    return handle, sgemm, dgemm, set_threads, get_threads
        except (OSError, AttributeError):
            return None
    return None


_threads = None                # (set_num_threads, get_num_threads) of NumPy's OpenBLAS, when FAST


def _register():
    """Bind the two symbol names (to NumPy's OpenBLAS, or to stubs); True if the real ones."""
    global _threads
    import llvmlite.binding as llvm
    found = _numpy_openblas()
    if found is not None:
        handle, sgemm, dgemm, set_threads, get_threads = found
        _keep.append(handle)
        _threads = (set_threads, get_threads)
        addresses = [ctypes.cast(f, ctypes.c_void_p).value for f in (sgemm, dgemm)]
    else:                                   # never called: FAST is False and gemm takes np.dot
        def stub(*args):
            raise RuntimeError("minicnn: a BLAS stub was called")
        gemm_type = ctypes.CFUNCTYPE(None, *([ctypes.c_int] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_double]
                                            + [ctypes.c_void_p, ctypes.c_int64] * 2 + [ctypes.c_double,
                                                                                         ctypes.c_void_p, ctypes.c_int64]))
        stubs = [gemm_type(stub), gemm_type(stub)]
        _keep.extend(stubs)
        addresses = [ctypes.cast(f, ctypes.c_void_p).value for f in stubs]
    for name, address in zip(("minicnn_cblas_sgemm", "minicnn_cblas_dgemm"), addresses):
        llvm.add_symbol(name, address)
    return found is not None


#: True when the kernels' products run on NumPy's OpenBLAS (see the module docstring).
FAST = _register()


def one_thread():
    """Set NumPy's OpenBLAS to one thread; returns what to pass to :func:`restore_threads`."""
    if _threads is None:
        return None
    before = _threads[1]()
    _threads[0](1)
    return before


def blas_threads():
    """NumPy's OpenBLAS's thread count now, or None without it (FAST is False)."""
    return None if _threads is None else _threads[1]()


def restore_threads(before):
    """Give NumPy's OpenBLAS back the thread count :func:`one_thread` found."""
    if before is not None:
        _threads[0](before)


@njit(cache=True)
def gemm(trans_a, trans_b, a, b, out, fast):
    """``out = op(a) @ op(b)``; op(m) is m.T where trans_* is True (one thread: see one_thread).

    a, b, out: C-contiguous 2-D float32 or float64 arrays of one dtype; out (M, N),
    op(a) (M, K), op(b) (K, N). ``fast``: pass :data:`FAST` (NumPy's OpenBLAS, called
    directly) — otherwise ``np.dot``.
    """
    M, N = out.shape
    K = a.shape[0] if trans_a else a.shape[1]
    if fast:
        ta = TRANS if trans_a else NO_TRANS
        tb = TRANS if trans_b else NO_TRANS
        if a.itemsize == 4:
            _SGEMM(ROW_MAJOR, ta, tb, M, N, K, np.float32(1.0), a.ctypes.data, a.shape[1],
                   b.ctypes.data, b.shape[1], np.float32(0.0), out.ctypes.data, N)
        else:
            _DGEMM(ROW_MAJOR, ta, tb, M, N, K, 1.0, a.ctypes.data, a.shape[1],
                   b.ctypes.data, b.shape[1], 0.0, out.ctypes.data, N)
    elif trans_a and trans_b:
        np.dot(a.T, b.T, out)
    elif trans_a:
        np.dot(a.T, b, out)
    elif trans_b:
        np.dot(a, b.T, out)
    else:
        np.dot(a, b, out)
