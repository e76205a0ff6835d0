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
"""
from __future__ import annotations

import copy

import numpy as np

from .. import functional as F
from .. import nn
from ..backend import to_device, to_host
from ..nn.module import Parameter


class QuantError(ValueError):
    """A model (or a layer of it) that cannot be quantized as asked; the message names the layer."""


class _FusedReLU(nn.Module):
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


class ConvReLU2d(_FusedReLU):
    pass


class LinearReLU(_FusedReLU):
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
    mu = to_host(bn.running_mean.data).astype(np.float64)
    var = to_host(bn.running_var.data).astype(np.float64)
    gamma = to_host(bn.weight.data).astype(np.float64) if bn.weight is not None else np.ones_like(mu)
    beta = to_host(bn.bias.data).astype(np.float64) if bn.bias is not None else np.zeros_like(mu)
    a = gamma / np.sqrt(var + bn.eps)
    w = to_host(layer.weight.data).astype(np.float64)
    b = to_host(layer.bias.data).astype(np.float64) if layer.bias is not None else np.zeros_like(mu)
    dtype = layer.weight.data.dtype
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


def fuse(model, fold_batchnorm=True):
    """Fold every Conv/Linear + BatchNorm and fuse every Conv/Linear (+ BN) + ReLU.

    With ``fold_batchnorm=False`` (QAT) the BatchNorm is left out of the result
    and its name kept in ``names``: the QAT layer owns and trains it.

    Returns ``(fused_sequential, names)``: a new ``nn.Sequential`` in eval mode
    and, for each of its layers, the dotted name(s) it came from.
    """
    if not isinstance(model, nn.Sequential):
        raise QuantError(f"minicnn.quant works on nn.Sequential models; {type(model).__name__} has its own "
                         "forward (e.g. residual additions), which needs a quantized add this package "
                         "does not have. Export it to ONNX in float32 instead.")
    layers = flatten_layers(model)
    out, names, i = [], [], 0
    while i < len(layers):
        name, m = layers[i]
        group = [name]
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m = copy.deepcopy(m)
            nxt = layers[i + 1][1] if i + 1 < len(layers) else None
            bn_type = nn.BatchNorm2d if isinstance(m, nn.Conv2d) else nn.BatchNorm1d
            if isinstance(nxt, bn_type):          # without folding (QAT) the caller keeps the BN
                if fold_batchnorm:
                    m = fold_bn(m, nxt)
                group.append(layers[i + 1][0])
                i += 1
                nxt = layers[i + 1][1] if i + 1 < len(layers) else None
            if isinstance(nxt, nn.ReLU):
                m = (ConvReLU2d if isinstance(m, nn.Conv2d) else LinearReLU)(m)
                group.append(layers[i + 1][0])
                i += 1
        elif isinstance(m, nn.Identity):
            i += 1
            continue
        else:
            m = copy.deepcopy(m)
        out.append(m)
        names.append("+".join(group))
        i += 1
    fused = nn.Sequential(*out)
    fused.eval()
    return fused, names
