"""Fusion before quantization: fold BatchNorm into the layer before it, merge ReLU.

**Conv + BN folding.** In evaluation BatchNorm is an affine map per channel::

    bn(y) = gamma * (y - mu) / sqrt(var + eps) + beta = a * y + c,
    a = gamma / sqrt(var + eps),   c = beta - a * mu

and y = W * x + b is linear, so bn(conv(x)) = (a W) * x + (a b + c): a conv
with weight ``W' = a[:, None, None, None] * W`` and bias ``b' = a * b + c``.
The same holds for Linear + BatchNorm1d (``W' = a[:, None] * W``). One layer
fewer, and — what matters for int8 — one quantization step fewer.

**Conv/Linear + ReLU fusion.** quantize(relu(y)) is quantize(y) clipped at the
zero point's code, so the ReLU becomes the lower bound of the requantization
clamp: :class:`ConvReLU2d` / :class:`LinearReLU` (``torch.ao.nn.intrinsic``'s
names) carry a ``relu`` flag and the observer sees the post-ReLU values.

:func:`fuse` walks a model made of ``nn.Sequential``s (nested ones are
flattened) and returns a new flat ``Sequential``; the original is not changed.
The matching is ``mc.fuse``'s walker (``minicnn/nn/fusion.py``) with the patterns
of :func:`quant_patterns` instead of its default Conv2d -> ReLU -> MaxPool2d.
"""
from __future__ import annotations

import copy

import numpy as np

from .. import functional as F
from .. import nn
from ..backend import to_device, to_host
from ..nn.fusion import fuse as fuse_model
from ..nn.module import Parameter


class QuantError(ValueError):
    """A model (or a layer of it) that cannot be quantized as asked; the message names the layer."""


class FusedReLU(nn.Module):
    """A Conv2d or Linear followed by ReLU, as one module (``self[0]`` is the layer)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def __getitem__(self, i):
        if i != 0:
            raise IndexError(i)
        return self.layer

    def forward(self, x):
        return F.relu(self.layer(x))


class ConvReLU2d(FusedReLU):
    pass


class LinearReLU(FusedReLU):
    pass


def fold_bn(layer, bn):
    """A copy of ``layer`` (Conv2d or Linear) with the eval-mode ``bn`` after it folded in.

    Computed in float64 and stored in the layer's dtype; equal to bn(layer(x))
    within float32 rounding (the tests check 1e-6).
    """
    if bn.running_mean is None:
        raise QuantError(f"{type(bn).__name__} without running statistics cannot be folded")
    channels = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
    if bn.num_features != channels:
        raise QuantError(f"{type(bn).__name__}({bn.num_features}) cannot follow a layer with {channels} outputs")
    mu = to_host(bn.running_mean.array).astype(np.float64)
    var = to_host(bn.running_var.array).astype(np.float64)
    gamma = to_host(bn.weight.array).astype(np.float64) if bn.weight is not None else np.ones_like(mu)
    beta = to_host(bn.bias.array).astype(np.float64) if bn.bias is not None else np.zeros_like(mu)
    a = gamma / np.sqrt(var + bn.eps)
    w = to_host(layer.weight.array).astype(np.float64)
    b = to_host(layer.bias.array).astype(np.float64) if layer.bias is not None else np.zeros_like(mu)
    dtype = layer.weight.array.dtype
    folded = copy.deepcopy(layer)
    folded.weight = Parameter(to_device((w * a.reshape((-1,) + (1,) * (w.ndim - 1))).astype(dtype)))
    folded.bias = Parameter(to_device((a * b + beta - a * mu).astype(dtype)))
    return folded


def flatten_layers(model, prefix=""):
    """[(name, module)] of the leaves of nested Sequentials, in order.

    A module with its own ``forward`` (a residual block, ...) is not a chain of
    layers this pass understands: quantizing it is an error naming it.
    """
    if isinstance(model, nn.Sequential):
        out = []
        for name, child in model.named_children():
            out += flatten_layers(child, f"{prefix}{name}.")
        return out
    return [(prefix.rstrip("."), model)]


def quant_patterns(fold_batchnorm=True):
    """The runs quantization fuses, as ``mc.fuse`` patterns: [(module types in a row, builder)].

    Longest first: Conv2d/Linear + BatchNorm + ReLU, then + BatchNorm, then + ReLU.
    With ``fold_batchnorm=False`` the BatchNorm is matched (its name goes into
    the group) but left out of the result.
    """
    def with_bn(layer, bn):
        return fold_bn(layer, bn) if fold_batchnorm else copy.deepcopy(layer)

    def relu_of(layer):
        return (ConvReLU2d if isinstance(layer, nn.Conv2d) else LinearReLU)(layer)

    patterns = []
    for layer_type, bn_type in ((nn.Conv2d, nn.BatchNorm2d), (nn.Linear, nn.BatchNorm1d)):
        patterns += [((layer_type, bn_type, nn.ReLU), lambda layer, bn, relu: relu_of(with_bn(layer, bn))),
                     ((layer_type, bn_type), lambda layer, bn: with_bn(layer, bn)),
                     ((layer_type, nn.ReLU), lambda layer, relu: relu_of(copy.deepcopy(layer)))]
    return patterns


def fuse(model, fold_batchnorm=True):
    """Fold every Conv/Linear + BatchNorm and fuse every Conv/Linear (+ BN) + ReLU.

    With ``fold_batchnorm=False`` (QAT) the BatchNorm is left out of the result
    and its name kept in ``names``: the QAT layer owns and trains it.

    Returns ``(fused_sequential, names)``: a new ``nn.Sequential`` in eval mode
    (nothing shared with ``model``; Identity layers dropped) and, for each of its
    layers, the dotted name(s) it came from ("0+1+2" for conv 0, BN 1, ReLU 2).
    """
    if not isinstance(model, nn.Sequential):
        raise QuantError(f"minicnn.quant works on nn.Sequential models; {type(model).__name__} has its own "
                         "forward (e.g. residual additions), which needs a quantized add this package "
                         "does not have. Export it to ONNX in float32 instead.")
    layers = flatten_layers(model)
    names = [name for name, _ in layers]
    flat = nn.Sequential(*copy.deepcopy([m for _, m in layers]))     # children "0", "1", ...: indices
    fused = fuse_model(flat, quant_patterns(fold_batchnorm))
    # a fused run keeps its first layer's index as its name, so the layers of
    # the run starting at index i are the indices up to the next kept name
    starts = [int(k) for k in fused._modules] + [len(layers)]
    out, groups = [], []
    for (start, end), m in zip(zip(starts, starts[1:]), fused._modules.values()):
        if isinstance(m, nn.Identity):
            continue
        out.append(m)
        groups.append("+".join(names[start:end]))
    result = nn.Sequential(*out)
    result.eval()
    return result, groups
