"""Window geometry shared by every kernel module: plain Python on shapes.

Written once here, used by ``numpy_ref``, ``numba_cpu``, ``cupy_gpu`` and the
simulator. Like the rest of ``kernels/`` it knows nothing of tensors.

A window of size k, dilation d, moved by stride s over an axis of length n
padded by p on both sides, fits in

    out = floor((n + 2p - d(k - 1) - 1) / s) + 1

positions (:func:`conv_out_size`). The functional layer has already checked
the user's arguments (``minicnn/functional/helpers.py``); the kernels only
normalise ``2`` to ``(2, 2)`` and refuse sizes their loops cannot run
(:func:`output_hw`), which also protects a direct caller from writing out of bounds.
"""
from __future__ import annotations

import numbers

import numpy as np


def conv_out_size(size, k, stride, pad, dilation=1):
    """Number of window positions along one axis (the formula above)."""
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def as_pair(value, name):
    """``2`` or ``(2, 1)`` -> a tuple of two Python ints."""
    both = (value, value) if isinstance(value, numbers.Integral) else tuple(value)
    if len(both) != 2 or not all(isinstance(v, numbers.Integral) for v in both):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(both[0]), int(both[1])


def output_hw(H, W, kh, kw, stride, padding, dilation=(1, 1)):
    """(oh, ow) of a kh x kw window over an H x W plane; at least one position each way."""
    oh = conv_out_size(H, kh, stride[0], padding[0], dilation[0])
    ow = conv_out_size(W, kw, stride[1], padding[1], dilation[1])
    if oh < 1 or ow < 1:
        raise ValueError(f"a {kh}x{kw} window (dilation {dilation}, padding {padding}) does not "
                         f"fit in a {H}x{W} input")
    return oh, ow


def pad_planes(x, padding, value=0.0):
    """A host array (N, C, H, W) with ``padding`` rows/columns of ``value`` around each plane
    (no copy when there is no padding)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)
