"""Layers and models (``import minicnn.nn as nn``), PyTorch's names."""
from . import init, utils
from .containers import ModuleList, Sequential
from .fusion import ConvReLUMaxPool2d, fuse
from .layers import (GELU, AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d,
                     BCEWithLogitsLoss, Conv2d, CrossEntropyLoss, DepthwiseSeparableConv2d, Dropout, Flatten,
                     Identity, LeakyReLU, Linear, LogSoftmax, MaxPool2d, Mish, MixedPool2d, MSELoss, NLLLoss,
                     Normalize, ReLU,
                     Sigmoid, SiLU, SmoothL1Loss, Softmax, Tanh)
from .module import Module, Parameter

__all__ = [
    "fuse", "ConvReLUMaxPool2d", "init", "utils", "Module", "Parameter", "Sequential", "ModuleList", "Linear", "Conv2d", "MaxPool2d",
    "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm1d", "BatchNorm2d", "Dropout", "Flatten",
    "Identity", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "SiLU", "Mish", "GELU", "Softmax",
    "LogSoftmax", "CrossEntropyLoss", "NLLLoss", "MSELoss", "SmoothL1Loss", "BCEWithLogitsLoss",
    "Normalize", "MixedPool2d", "DepthwiseSeparableConv2d",
]


def __getattr__(name):
    """``nn.SyncBatchNorm`` lives with the rest of data-parallel training (minicnn/distributed/);
    it loads on first use, so that nn does not import distributed (which builds on nn)."""
    if name == "SyncBatchNorm":
        from ..distributed.sync_batchnorm import SyncBatchNorm
        return SyncBatchNorm
    raise AttributeError(f"module 'minicnn.nn' has no attribute {name!r}")
