"""minicnn — a from-scratch convolutional-network framework for learning.

    import minicnn as mc
    import minicnn.functional as F
    import minicnn.nn as nn

The backend (NumPy, Numba-JIT CPU kernels, or CuPy on a GPU) is chosen by the
environment variable ``MINICNN_BACKEND`` at import, or later with
``mc.set_backend``.
"""


def _kernels_of_a_checkout():
    """Make ``minicnn.kernels`` importable from a checkout that was never installed.

    ``kernels/`` sits beside ``minicnn/`` at the top of the repository (it knows
    nothing of tensors); ``pip install -e .`` maps it to ``minicnn.kernels``. A
    student who clones the repository and opens a notebook without installing
    gets the same mapping here, made by hand; anything else is a one-line error.
    """
    import importlib.util
    import os
    import sys
    if "minicnn.kernels" in sys.modules or importlib.util.find_spec("minicnn.kernels") is not None:
        return
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
    init = os.path.join(folder, "__init__.py")
    if not os.path.isfile(init):
        raise ImportError("minicnn.kernels is missing: this copy of minicnn is neither installed nor a "
                          f"full checkout (no {init}); run `pip install -e .` in the repository")
    spec = importlib.util.spec_from_file_location("minicnn.kernels", init, submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules["minicnn.kernels"] = module
    spec.loader.exec_module(module)


_kernels_of_a_checkout()

from .backend import BackendError, get_backend, set_backend  # noqa: E402
from .functional.shape import cat, concatenate, stack  # noqa: E402
from .autograd.gradcheck import GradcheckError, gradcheck  # noqa: E402
from .rng import manual_seed  # noqa: E402
from .io import load, save  # noqa: E402
from .autograd.anomaly import detect_anomaly  # noqa: E402
from .autograd.tensor import Function, Size, Tensor, enable_grad, is_grad_enabled, no_grad, tensor  # noqa: E402
from .autograd.creation import (arange, as_tensor, empty, empty_like, eye, from_numpy, full,  # noqa: E402
                                full_like, linspace, ones, ones_like, rand, rand_like, randint, randn,
                                randn_like, zeros, zeros_like)
from .device import device  # noqa: E402
from . import accelerator, cuda  # noqa: E402  (mc.cuda.is_available(): asks CuPy, never switches backend)

from . import functional  # noqa: E402  (after tensor: functional builds on it)
from .functional.reductions import max, mean, min, sum  # noqa: E402, A004 - PyTorch's mc.max(x, dim), ...
from . import nn  # noqa: E402
from .nn.fusion import fuse  # noqa: E402  (mc.fuse(model): the fused fast path, made explicit)
from . import optim  # noqa: E402
from . import data  # noqa: E402
from . import models  # noqa: E402

__version__ = "0.1.0"


# Loaded on first use, so that ``import minicnn`` loads only the engine: the training loop brings
# tqdm and the downloader, the plots matplotlib, the techniques their own dependencies.
_LAZY = {
    "train": ("minicnn.train", None), "metrics": ("minicnn.train.metrics", None),
    "viz": ("minicnn.train.viz", None), "summary": ("minicnn.train.summary", "summary"),
    "Summary": ("minicnn.train.summary", "Summary"), "onnx": ("minicnn.quant.onnx", None),
    "attacks": ("minicnn.attacks", None), "explain": ("minicnn.explain", None),
    "compress": ("minicnn.compress", None), "tune": ("minicnn.tune", None),
    "doctor": ("minicnn.doctor", None),
    "transfer": ("minicnn.transfer", None), "distributed": ("minicnn.distributed", None),
    "quant": ("minicnn.quant", None), "course": ("minicnn.course", None),
    "utils": ("minicnn.utils", None), "vision": ("minicnn.vision", None),   # torch.utils.data, torchvision
}


def __getattr__(name):
    """``mc.train``, ``mc.summary``, ``mc.attacks``, ... load on first use (see ``_LAZY``)."""
    if name in _LAZY:
        import importlib
        module, attribute = _LAZY[name]
        value = importlib.import_module(module)
        return value if attribute is None else getattr(value, attribute)
    raise AttributeError(f"module 'minicnn' has no attribute {name!r}")


def _function_of(method):
    """``mc.eq(x, y)`` = ``x.eq(y)``: PyTorch's top-level forms of Tensor methods."""
    def function(input, *args, **kwargs):  # noqa: A002 - PyTorch's parameter name
        return getattr(input, method)(*args, **kwargs)
    function.__name__ = function.__qualname__ = method
    function.__doc__ = f"``mc.{method}(x, ...)`` is ``x.{method}(...)``."
    return function


for _name in ("eq", "ne", "lt", "le", "gt", "ge", "argmax", "argmin", "amax", "amin", "prod", "var", "std", "any",
              "all", "flatten", "reshape", "unsqueeze", "squeeze", "permute", "transpose", "t", "clone",
              "numel", "exp", "log", "sqrt", "abs", "clamp", "clip"):
    globals()[_name] = _function_of(_name)


import numpy as _np  # noqa: E402

# dtypes, PyTorch's names for NumPy's (t.dtype == mc.float32 holds)
float32 = float = _np.float32  # noqa: A001
float64 = double = _np.float64
float16 = half = _np.float16
int64 = long = _np.int64
int32 = int = _np.int32  # noqa: A001
int16, int8, uint8 = _np.int16, _np.int8, _np.uint8
bool = _np.bool_  # noqa: A001

__all__ = [
    "BackendError", "Function", "GradcheckError", "Tensor", "cat", "concatenate", "enable_grad",
    "data", "functional", "get_backend", "gradcheck", "is_grad_enabled", "manual_seed", "models", "nn",
    "no_grad", "optim", "set_backend", "stack", "Summary", "summary", "tensor", "train", "save", "load",
    "detect_anomaly", "fuse", "Size", "device", "cuda", "accelerator", "arange", "as_tensor", "empty",
    "empty_like", "eye", "from_numpy", "full", "full_like", "linspace", "ones", "ones_like", "rand",
    "rand_like", "randint", "randn", "randn_like", "zeros", "zeros_like", "max", "min", "mean", "sum",
]
