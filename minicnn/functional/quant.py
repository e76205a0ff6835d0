"""Fake quantization: round a float tensor onto an integer grid and back.

Quantization maps a real value x to an integer code and back::

    q     = clamp(round(x / s) + z, qmin, qmax)      # the code (uint8: 0..255, int8: -128..127)
    x_hat = (q - z) * s                              # the value the code stands for

with a positive **scale** s and an integer **zero point** z (the code of 0.0,
so that zero — padding, ReLU's output — is exact). *Fake* quantization returns
``x_hat`` as a float: the network computes in floats but sees exactly the
values an integer kernel would see, so its accuracy is the quantized
network's accuracy, and it can be trained (quantization-aware training).

Rounding and arithmetic are PyTorch's (``torch.fake_quantize_per_tensor_affine``):
``round`` is round-half-to-even (``np.rint``; 2.5 -> 2, 3.5 -> 4) and the
division is a multiplication by ``inv_s = 1 / s`` computed in the input's
precision, so the codes equal PyTorch's bit for bit.

Backward: the step function has zero derivative almost everywhere, so
training uses the **straight-through estimator** (Bengio et al., 2013): the
gradient passes unchanged where the code was not clipped and is zero where it
was::

    dx = gy * [qmin <= round(x / s) + z <= qmax]

Gradient checks do not apply to a step function; the tests check this rule
directly (and against PyTorch when it is installed).
"""
from __future__ import annotations

import numbers

import numpy as np

from ..backend import current, to_device
from ..autograd.tensor import Function, Tensor


def _check_range(name, quant_min, quant_max):
    if not (isinstance(quant_min, numbers.Integral) and isinstance(quant_max, numbers.Integral)):
        raise TypeError(f"{name}: quant_min and quant_max must be ints, got {quant_min!r}, {quant_max!r}")
    if quant_min >= quant_max:
        raise ValueError(f"{name}: quant_min ({quant_min}) must be < quant_max ({quant_max})")


def _codes(x, inv_scale, zero_point, quant_min, quant_max):
    """Unclipped codes round(x * inv_s) + z, and the clipped ones."""
    xp = current.xp
    q = xp.rint(x * inv_scale) + zero_point            # round half to even, as std::nearbyint
    return q, xp.clip(q, quant_min, quant_max)


class FakeQuantizePerTensorAffineFn(Function):
    """y = (clamp(rint(x * inv_s) + z, qmin, qmax) - z) * s;  dx = gy * [no clipping]."""

    def forward(self, x, scale, zero_point, quant_min, quant_max):
        dt = x.dtype.type
        s = dt(scale)
        inv_s = dt(1.0) / s                             # PyTorch: float inv_scale = 1.0f / scale
        q, qc = _codes(x, inv_s, dt(zero_point), quant_min, quant_max)
        self.save_for_backward(q == qc)                 # where the STE lets the gradient through
        return ((qc - dt(zero_point)) * s).astype(x.dtype, copy=False)

    def backward(self, gy):
        not_clipped, = self.saved_tensors
        return gy * not_clipped


class FakeQuantizePerChannelAffineFn(Function):
    """The same with one (s_c, z_c) per channel c along ``axis`` (conv filters: axis 0)."""

    def forward(self, x, scale, zero_point, axis, quant_min, quant_max):
        shape = [1] * x.ndim
        shape[axis] = -1
        s = scale.astype(x.dtype).reshape(shape)
        z = zero_point.astype(x.dtype).reshape(shape)
        inv_s = x.dtype.type(1.0) / s
        q, qc = _codes(x, inv_s, z, quant_min, quant_max)
        self.save_for_backward(q == qc)
        return ((qc - z) * s).astype(x.dtype, copy=False)

    def backward(self, gy):
        not_clipped, = self.saved_tensors
        return gy * not_clipped


def _scalar(value, what, kind):
    if isinstance(value, Tensor):
        value = value.numpy()
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"fake_quantize_per_tensor_affine: {what} must be one number, got shape {arr.shape}")
    v = arr.reshape(()).item()
    return float(v) if kind == "f" else int(round(v))


def fake_quantize_per_tensor_affine(x: Tensor, scale, zero_point, quant_min, quant_max) -> Tensor:
    """PyTorch's ``torch.fake_quantize_per_tensor_affine``: one scale and zero point for all of x."""
    name = "fake_quantize_per_tensor_affine"
    _check_range(name, quant_min, quant_max)
    s, z = _scalar(scale, "scale", "f"), _scalar(zero_point, "zero_point", "i")
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"{name}: scale must be a positive finite number, got {s}")
    if not quant_min <= z <= quant_max:
        raise ValueError(f"{name}: zero_point {z} is outside [quant_min, quant_max] = [{quant_min}, {quant_max}]")
    if x.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    return FakeQuantizePerTensorAffineFn.apply(x, scale=s, zero_point=z, quant_min=int(quant_min),
                                             quant_max=int(quant_max))


def fake_quantize_per_channel_affine(x: Tensor, scale, zero_point, axis, quant_min, quant_max) -> Tensor:
    """PyTorch's ``torch.fake_quantize_per_channel_affine``: scale[c], zero_point[c] along ``axis``."""
    name = "fake_quantize_per_channel_affine"
    _check_range(name, quant_min, quant_max)
    if x.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{name}: axis {axis} is out of range for a {x.ndim}-D tensor")
    axis %= x.ndim
    s = np.asarray(scale.numpy() if isinstance(scale, Tensor) else scale, dtype=np.float64).reshape(-1)
    z = np.asarray(zero_point.numpy() if isinstance(zero_point, Tensor) else zero_point).reshape(-1)
    if s.shape != (x.shape[axis],) or z.shape != (x.shape[axis],):
        raise ValueError(f"{name}: expected {x.shape[axis]} scales and zero points (size of axis {axis}), "
                         f"got {s.size} and {z.size}")
    if not (np.all(np.isfinite(s)) and np.all(s > 0)):
        bad = int(np.flatnonzero(~(np.isfinite(s) & (s > 0)))[0])
        raise ValueError(f"{name}: every scale must be positive and finite; channel {bad} has {s[bad]}")
    if np.any(z < quant_min) or np.any(z > quant_max):
        raise ValueError(f"{name}: zero points must lie in [{quant_min}, {quant_max}]")
    return FakeQuantizePerChannelAffineFn.apply(x, scale=to_device(s.astype(np.float32)),
                                              zero_point=to_device(z.astype(np.int64)), axis=axis,
                                              quant_min=int(quant_min), quant_max=int(quant_max))
