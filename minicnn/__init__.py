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
from .autograd.tensor import Function, Tensor, enable_grad, is_grad_enabled, no_grad, tensor  # noqa: E402

from . import functional  # noqa: E402  (after tensor: functional builds on it)
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


import numpy as _np  # noqa: E402

float32, float64 = _np.float32, _np.float64

__all__ = [
    "BackendError", "Function", "GradcheckError", "Tensor", "cat", "concatenate", "enable_grad",
    "data", "functional", "get_backend", "gradcheck", "is_grad_enabled", "manual_seed", "models", "nn",
    "no_grad", "optim", "set_backend", "stack", "Summary", "summary", "tensor", "train", "save", "load",
    "detect_anomaly", "fuse",
]
