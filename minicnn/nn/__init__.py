"""Layers and models (``import minicnn.nn as nn``), PyTorch's names.

``minicnn.nn.functional`` is PyTorch's import path for the functional layer
(``torch.nn.functional``): it is registered below as another name of the one
module ``minicnn.functional``, not a copy, so ``import minicnn.nn.functional
as F`` and ``import minicnn.functional as F`` give the very same object.
"""
import sys

from . import init, utils
from .. import functional
from .containers import ModuleList, Sequential
from .fusion import ChunkedConv2d, ConvReLUMaxPool2d, DepthwiseConv2d, fuse
from .layers import (GELU, AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d,
                     BCEWithLogitsLoss, Conv2d, CrossEntropyLoss, DepthwiseSeparableConv2d, Dropout, Flatten,
                     GroupNorm, Identity, LayerNorm, LazyConv2d, LazyLinear, LeakyReLU, Linear, LogSoftmax,
                     MaxPool2d, Mish, MixedPool2d, MSELoss, MultiMarginLoss, NLLLoss, Normalize, ReLU,
                     Sigmoid, SiLU, SmoothL1Loss, Softmax, Tanh)
from .module import Module, Parameter

# `import minicnn.nn.functional` finds this entry and stops there: no second module object.
sys.modules[__name__ + ".functional"] = functional

__all__ = [
    "fuse", "ConvReLUMaxPool2d", "DepthwiseConv2d", "ChunkedConv2d", "init", "utils", "Module", "Parameter", "Sequential", "ModuleList", "Linear", "Conv2d", "MaxPool2d",
    "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm1d", "BatchNorm2d", "Dropout", "Flatten",
    "Identity", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "SiLU", "Mish", "GELU", "Softmax",
    "LogSoftmax", "CrossEntropyLoss", "NLLLoss", "MSELoss", "SmoothL1Loss", "BCEWithLogitsLoss",
    "Normalize", "MixedPool2d", "DepthwiseSeparableConv2d", "LayerNorm", "GroupNorm", "MultiMarginLoss",
    "LazyConv2d", "LazyLinear", "functional",
]


def __getattr__(name):
    """``nn.SyncBatchNorm`` lives with the rest of data-parallel training (minicnn/distributed/);
    it loads on first use, so that nn does not import distributed (which builds on nn)."""
    if name == "SyncBatchNorm":
        from ..distributed.sync_batchnorm import SyncBatchNorm
        return SyncBatchNorm
    raise AttributeError(f"module 'minicnn.nn' has no attribute {name!r}")
