"""Window geometry shared by every kernel module and the functional layer: plain Python on shapes.

Written once here, used by ``numpy_ref``, ``numba_cpu``, ``cupy_gpu``, the
simulator and ``minicnn/functional`` (which re-exports :func:`pair` and
:func:`conv_output_shape`). Like the rest of ``kernels/`` it knows nothing of
tensors.

A window of size k, dilation d, moved by stride s over an axis of length n
padded by p on both sides, fits in

    out = floor((n + 2p - d(k - 1) - 1) / s) + 1

positions (:func:`conv_out_size`, one axis; :func:`conv_output_shape`, both).
"""
from __future__ import annotations

import numbers

import numpy as np


def pair(value, name="value", minimum=None):
    """``3`` -> ``(3, 3)``, ``(3, 2)`` -> ``(3, 2)``: a (vertical, horizontal) pair of ints.

    For a kernel size, stride, padding or dilation. TypeError unless ``value``
    is an int or a tuple/list of two ints (a bool is not a size); ValueError if
    ``minimum`` is given and a value is below it.
    """
    if isinstance(value, numbers.Integral):
        both = (value, value)
    elif isinstance(value, (tuple, list)):
        both = tuple(value)
    else:
        both = ()
    if len(both) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in both):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if minimum is not None and any(v < minimum for v in both):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(both[0]), int(both[1])


def conv_out_size(size, k, stride, pad, dilation=1):
    """Positions of a window along one axis: floor((size + 2*pad - dilation*(k - 1) - 1) / stride) + 1."""
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def conv_output_shape(in_hw, kernel_hw, stride=1, padding=0, dilation=1):
    """``(oh, ow)`` of a ``kernel_hw`` window over an ``in_hw`` = (H, W) plane (convolution and
    pooling alike): :func:`conv_out_size` along each axis.

    ``stride``, ``padding`` and ``dilation`` are ints or pairs (checked: stride and
    dilation >= 1, padding >= 0). ValueError if the window fits nowhere (fewer
    than one position along an axis) — which also keeps a kernel's loops from
    writing out of bounds.
    """
    (H, W), (kh, kw) = in_hw, kernel_hw
    sh, sw = pair(stride, "stride", 1)
    ph, pw = pair(padding, "padding", 0)
    dh, dw = pair(dilation, "dilation", 1)
    oh, ow = conv_out_size(H, kh, sh, ph, dh), conv_out_size(W, kw, sw, pw, dw)
    if oh < 1 or ow < 1:
        raise ValueError(f"a {kh}x{kw} window (dilation {(dh, dw)}, padding {(ph, pw)}) does not "
                         f"fit in a {H}x{W} input")
    return oh, ow


def pad_planes(x, padding, value=0.0):
    """A host array (N, C, H, W) with ``padding`` rows/columns of ``value`` around each plane
    (no copy when there is no padding)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def first_real_taps(oh, ow, kw, stride, padding, dtype):
    """(oh, ow): for each pooling window, the tap ``i*kw + j`` of its first pixel that is not padding.

    Window (oy, ox) starts at row ``oy*sh - ph``, so its first real row is tap
    ``i = max(0, ph - oy*sh)``, and likewise ``j = max(0, pw - ox*sw)``. Max
    pooling starts each window's winner there (PyTorch does too): a window of
    nothing but -inf then routes its gradient to a real pixel, not into the
    padding, where it would be lost.
    """
    (sh, sw), (ph, pw) = stride, padding
    i = np.maximum(0, ph - np.arange(oh) * sh)[:, None]              # (oh, 1)
    j = np.maximum(0, pw - np.arange(ow) * sw)[None, :]              # (1, ow)
    return (i * kw + j).astype(dtype)
