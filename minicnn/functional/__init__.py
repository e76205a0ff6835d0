"""Differentiable functions (``import minicnn.functional as F``), PyTorch's names.

Each module holds a few :class:`~minicnn.autograd.tensor.Function` subclasses — forward
and backward side by side, the math in the docstring — and the plain functions
that validate arguments and call them.
"""
from .activation import (gelu, leaky_relu, log_softmax, mish, relu, sigmoid, silu, softmax,
                         softplus, swish, tanh)
from .conv import conv2d, conv2d_simple
from .depthwise import depthwise_conv2d
from .helpers import conv_output_shape
from .distill import distillation_loss, kl_div
from .dropout import dropout
from .fused import chunked_conv2d, conv2d_relu_max_pool2d
from .linear import linear
from .loss import (binary_cross_entropy_with_logits, cross_entropy, mse_loss, multi_margin_loss,
                   nll_loss, smooth_l1_loss)
from .math import abs, clip, exp, log, matmul, maximum, sqrt  # noqa: A004
from .norm import batch_norm, group_norm, layer_norm
from .pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from .quant import fake_quantize_per_channel_affine, fake_quantize_per_tensor_affine
from .reductions import max, mean, sum  # noqa: A004
from .shape import cat, concatenate, flatten, reshape, stack, transpose
from .unfold import unfold

__all__ = [
    "gelu", "leaky_relu", "log_softmax", "mish", "relu", "sigmoid", "silu", "softmax", "softplus",
    "swish", "tanh", "conv2d", "conv2d_simple", "depthwise_conv2d", "conv_output_shape", "conv2d_relu_max_pool2d", "chunked_conv2d", "distillation_loss", "kl_div", "dropout", "linear",
    "binary_cross_entropy_with_logits", "cross_entropy", "mse_loss", "multi_margin_loss", "nll_loss", "smooth_l1_loss",
    "abs", "clip", "exp", "log", "matmul", "maximum", "sqrt", "batch_norm", "layer_norm", "group_norm", "adaptive_avg_pool2d",
    "avg_pool2d", "max_pool2d", "max", "mean", "sum", "cat", "concatenate", "flatten", "reshape",
    "stack", "transpose", "unfold",
    "fake_quantize_per_tensor_affine", "fake_quantize_per_channel_affine",
]
