"""minicnn — a from-scratch convolutional-network framework for learning.

    import minicnn as mc
    import minicnn.functional as F
    import minicnn.nn as nn

The backend (NumPy, Numba-JIT CPU kernels, or CuPy on a GPU) is chosen by the
environment variable ``MINICNN_BACKEND`` at import, or later with
``mc.set_backend``.
"""
from .backend import BackendError, get_backend, set_backend
from .functional.shape import cat, concatenate, stack
from .gradcheck import GradcheckError, gradcheck
from .rng import manual_seed
from .serialization import load, save
from .anomaly import detect_anomaly
from .tensor import Function, Tensor, enable_grad, is_grad_enabled, no_grad, tensor

from . import functional  # noqa: E402  (after tensor: functional builds on it)
from . import nn  # noqa: E402
from . import optim  # noqa: E402
from . import data  # noqa: E402
from . import models, train  # noqa: E402
from .summary import Summary, summary  # noqa: E402  (the function; the module is minicnn.summary's file)

__version__ = "0.1.0"


def __getattr__(name):
    """``mc.metrics`` and ``mc.viz`` load on first use (viz pulls in matplotlib)."""
    if name in ("metrics", "viz"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'minicnn' has no attribute {name!r}")


import numpy as _np  # noqa: E402

float32, float64 = _np.float32, _np.float64

__all__ = [
    "BackendError", "Function", "GradcheckError", "Tensor", "cat", "concatenate", "enable_grad",
    "data", "functional", "get_backend", "gradcheck", "is_grad_enabled", "manual_seed", "models", "nn",
    "no_grad", "optim", "set_backend", "stack", "Summary", "summary", "tensor", "train", "save", "load",
    "detect_anomaly",
]
