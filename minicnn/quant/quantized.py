"""The converted model: int8 weights, uint8 activations, int32 accumulators.

For one Conv2d or Linear with input codes q_x (scale s_x, zero point z_x),
weight codes q_w (int8, symmetric, one scale s_w[c] per output channel) and
output qparams (s_y, z_y), the real computation y = sum w x + b becomes::

    y = s_x s_w[c] * sum (q_x - z_x) q_w  +  b
      = s_x s_w[c] * (acc + q_b)            acc = sum (q_x - z_x) q_w     (int32, exact)
                                            q_b = round(b / (s_x s_w[c]))  (int32 bias)
    q_y = clamp(round(M[c] * (acc + q_b)) + z_y, lo, 255),   M[c] = s_x s_w[c] / s_y

``lo`` is 0, or z_y when a ReLU was fused (ReLU = clipping at the code of 0).
Everything up to the last line is integer arithmetic (the kernel
``qgemm_u8s8`` of the backend). The one real multiplication by M is the
**requantization**; integer-only hardware does it as ``M = M0 * 2^-n`` with
a 31-bit integer M0 in [2^30, 2^31) (Jacob et al., 2018): an int64 product
and a rounding right shift. Both modes are here (``requant="float"`` |
``"fixed"``); every rounding is half-to-even.

**Bit-exact with the fake-quant simulation.** ``mode="simulate"`` computes the
same layer the way fake quantization does — dequantize input and weight to
floats, run the float conv/linear, add the float bias, quantize the result —
in float64. Its pre-rounding values differ from the integer path's
``M * (acc + q_b)`` only by float64 rounding (~1e-16 relative), and both round
half-to-even, so the codes are equal unless a value lies within ~1e-13 of a
rounding tie: on real data they are equal, which the tests check code by code.
(In float32 the simulation would differ by one code now and then: the sum's
rounding error, ~1e-7 relative, is no longer small beside the distance to a tie.)
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .. import nn
from ..backend import current, to_device, to_host
from ..kernels import numpy_ref
from ..kernels.geometry import conv_out_size
from ..autograd.tensor import Tensor, no_grad
from .fuse import QuantError


# -----------------------------------------------------------------------------
# Requantization
# -----------------------------------------------------------------------------
def quantize_multiplier(m):
    """Write each positive real ``m`` as ``M0 * 2**-n``, M0 an int in [2**30, 2**31), n an int.

    Returns int64 arrays (M0, n). ``frexp`` gives m = f * 2**e with f in [0.5, 1);
    M0 = round(f * 2**31), n = 31 - e (if rounding reaches 2**31, halve it).
    """
    m = np.asarray(m, dtype=np.float64)
    if np.any(~(m > 0)) or np.any(~np.isfinite(m)):
        raise QuantError(f"requantization multipliers must be positive and finite, got {m}")
    f, e = np.frexp(m)
    m0 = np.rint(f * 2.0 ** 31).astype(np.int64)
    n = 31 - e.astype(np.int64)
    top = m0 == 2 ** 31
    m0[top] //= 2
    n[top] -= 1
    if np.any(n < 1) or np.any(n > 62):
        raise QuantError(f"requantization multiplier out of the fixed-point range: {m}")
    return m0, n


def rounding_shift(v, n):
    """round(v / 2**n) for int64 v and n >= 1, ties to even — integer ops only."""
    half = np.left_shift(np.int64(1), n - 1)
    q = np.right_shift(v + half, n)                           # round half up (floor of v/2^n + 1/2)
    tie = np.bitwise_and(v, np.left_shift(np.int64(1), n) - 1) == half
    return q - (tie & (np.bitwise_and(q, 1) == 1))            # a tie that went to an odd number: back one


def requantize(acc, m, zero_point, lo, hi, mode="float", axis=0):
    """Codes ``clamp(round(M * acc) + z, lo, hi)`` as uint8; M per channel along ``axis`` of acc."""
    shape = [1] * acc.ndim
    shape[axis] = -1
    if mode == "float":
        q = np.rint(acc.astype(np.float64) * np.asarray(m, np.float64).reshape(shape))
    elif mode == "fixed":
        m0, n = quantize_multiplier(m)
        q = rounding_shift(acc.astype(np.int64) * m0.reshape(shape), n.reshape(shape))
    else:
        raise ValueError(f"requant mode must be 'float' or 'fixed', got {mode!r}")
    return np.clip(q + zero_point, lo, hi).astype(np.uint8)


# -----------------------------------------------------------------------------
# Layers of the converted model (their state is plain arrays: see checkpoint.py)
# -----------------------------------------------------------------------------
class QuantizeInput(nn.Module):
    """float -> uint8 codes: clamp(round(x / s) + z, 0, 255) (as fake_quantize rounds)."""

    def __init__(self, scale, zero_point):
        super().__init__()
        self.scale, self.zero_point = np.float32(scale), int(zero_point)

    def codes(self, x):
        x = to_host(x).astype(np.float32)
        inv = np.float32(1.0) / self.scale
        return np.clip(np.rint(x * inv) + self.zero_point, 0, 255).astype(np.uint8)


class QuantizedLayer(nn.Module):
    """One int8 Conv2d or Linear with its requantization (see the module docstring)."""

    def __init__(self, kind, weight_q, weight_scale, bias_q, in_qparams, out_qparams, relu,
                 conv_args=None, name=""):
        super().__init__()
        self.kind, self.name, self.relu = kind, name, bool(relu)
        self.weight_q = np.asarray(weight_q, np.int8)          # (Cout, Cin/g, kh, kw) or (out, in)
        self.weight_scale = np.asarray(weight_scale, np.float32).reshape(-1)  # (Cout,) (per tensor: repeated)
        self.bias_q = np.asarray(bias_q, np.int32)             # (Cout,)
        self.in_scale, self.in_zero_point = np.float32(in_qparams[0]), int(in_qparams[1])
        self.out_scale, self.out_zero_point = np.float32(out_qparams[0]), int(out_qparams[1])
        self.conv_args = conv_args or {}                       # stride, padding, dilation, groups
        if self.weight_scale.size == 1:
            self.weight_scale = np.repeat(self.weight_scale, self.weight_q.shape[0])

    @property
    def multiplier(self):
        """M[c] = s_x s_w[c] / s_y in float64 (the products in float64, as the simulation's)."""
        return (np.float64(self.in_scale) * self.weight_scale.astype(np.float64)) / np.float64(self.out_scale)

    @property
    def clamp(self):
        return (self.out_zero_point if self.relu else 0), 255

    # -- the integer path --------------------------------------------------------
    def accumulate(self, q):
        """acc + q_b in int32: (N, Cout, oh, ow) for a conv, (N, out) for a linear."""
        kernels = current.kernels
        z = self.in_zero_point
        if self.kind == "linear":
            w = to_device(self.weight_q)
            acc = kernels.qgemm_u8s8(w, to_device(np.ascontiguousarray(q.T)), z)      # (out, N)
            acc = to_host(acc).T + self.bias_q
            return acc
        a = self.conv_args
        (ph, pw), (sh, sw), (dh, dw), G = a["padding"], a["stride"], a["dilation"], a["groups"]
        if ph or pw:      # pad with the code of 0.0: the zero point, not 0
            q = np.pad(q, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=z)
        Cout, Cg, kh, kw = self.weight_q.shape
        N = q.shape[0]
        cols = numpy_ref.im2col(q, kh, kw, (sh, sw), (0, 0), (dh, dw))      # uint8 (C*kh*kw, N*oh*ow)
        oh = conv_out_size(q.shape[2], kh, sh, 0, dh)
        ow = conv_out_size(q.shape[3], kw, sw, 0, dw)
        K = Cg * kh * kw
        w = self.weight_q.reshape(G, Cout // G, K)
        parts = [to_host(kernels.qgemm_u8s8(to_device(np.ascontiguousarray(w[g])),
                                            to_device(np.ascontiguousarray(cols[g * K:(g + 1) * K])), z))
                 for g in range(G)]
        acc = np.concatenate(parts, axis=0).reshape(Cout, N, oh, ow) + self.bias_q.reshape(-1, 1, 1, 1)
        return acc.transpose(1, 0, 2, 3)

    def integer_forward(self, q, requant="float"):
        acc = self.accumulate(q)
        lo, hi = self.clamp
        return requantize(acc, self.multiplier, self.out_zero_point, lo, hi, requant, axis=1)

    # -- the fake-quant simulation, in float64 ------------------------------------
    def simulate_forward(self, q):
        x = (q.astype(np.float64) - self.in_zero_point) * np.float64(self.in_scale)     # dequantize
        shape = (-1,) + (1,) * (self.weight_q.ndim - 1)
        w = self.weight_q.astype(np.float64) * self.weight_scale.astype(np.float64).reshape(shape)
        b = self.bias_q.astype(np.float64) * (np.float64(self.in_scale) * self.weight_scale.astype(np.float64))
        with no_grad():
            X, W, B = (Tensor(to_device(a), dtype=np.float64) for a in (x, w, b))
            if self.kind == "linear":
                y = F.linear(X, W, B)
            else:
                a = self.conv_args
                y = F.conv2d(X, W, B, a["stride"], a["padding"], a["dilation"], a["groups"])
        y = to_host(y.array)
        lo, hi = self.clamp
        return np.clip(np.rint(y / np.float64(self.out_scale)) + self.out_zero_point, lo, hi).astype(np.uint8)

    def extra_repr(self):
        return (f"{self.kind} {self.name!r} weight {self.weight_q.shape} int8, relu={self.relu}, "
                f"in (s={self.in_scale:.4g}, z={self.in_zero_point}), out (s={self.out_scale:.4g}, "
                f"z={self.out_zero_point})")


class QuantizedModel(nn.Module):
    """The int8 model: ``model(x)`` takes float images and returns float logits.

    ``mode="integer"`` (default) runs the integer path; ``"simulate"`` the
    float64 fake-quant simulation of the same arithmetic. ``requant`` is
    ``"float"`` or ``"fixed"`` (integer multiplier and shift).
    :meth:`codes` returns the uint8 output codes (what the tests compare).
    """

    def __init__(self, steps, mode="integer", requant="float"):
        super().__init__()
        self.steps = list(steps)       # QuantizeInput, QuantizedLayer, ("maxpool", k, s, p), ("flatten",)
        self.mode, self.requant = mode, requant
        self.eval()

    @property
    def layers(self):
        return [s for s in self.steps if isinstance(s, QuantizedLayer)]

    def codes(self, x, mode=None, requant=None):
        mode, requant = mode or self.mode, requant or self.requant
        if mode not in ("integer", "simulate"):
            raise ValueError(f"mode must be 'integer' or 'simulate', got {mode!r}")
        x = x.array if isinstance(x, Tensor) else x
        q = None
        for step in self.steps:
            if isinstance(step, QuantizeInput):
                q = step.codes(x)
            elif isinstance(step, QuantizedLayer):
                if q.ndim != (4 if step.kind == "conv" else 2):
                    raise QuantError(f"layer {step.name!r}: expected a {4 if step.kind == 'conv' else 2}-D "
                                     f"input, got shape {q.shape}")
                q = step.integer_forward(q, requant) if mode == "integer" else step.simulate_forward(q)
            elif step[0] == "maxpool":      # max commutes with the (increasing) dequantization
                _, k, s, p = step
                if p:
                    q = np.pad(q, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=0)
                N, C, H, W = q.shape
                oh, ow = (H - k) // s + 1, (W - k) // s + 1
                taps = [q[:, :, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s]
                        for i in range(k) for j in range(k)]
                q = np.maximum.reduce(taps)
            elif step[0] == "flatten":
                q = q.reshape(q.shape[0], -1)
        return q

    def forward(self, x):
        q = self.codes(x)
        last = self.layers[-1]
        y = (q.astype(np.float32) - np.float32(last.out_zero_point)) * last.out_scale
        return Tensor(to_device(y))

    def extra_repr(self):
        return f"mode={self.mode!r}, requant={self.requant!r}, {len(self.layers)} int8 layers"

    def __repr__(self):
        lines = [f"QuantizedModel({self.extra_repr()})"]
        for s in self.steps:
            lines.append("  " + (repr(s).replace("\n", " ") if isinstance(s, nn.Module) else str(s)))
        return "\n".join(lines)


def _qparams(fq, what):
    try:
        return fq.calculate_qparams()
    except ValueError as e:
        raise QuantError(f"{what}: {e}") from None


def convert(prepared, mode="integer", requant="float"):
    """Turn a calibrated (``prepare`` + ``calibrate``) or trained (``prepare_qat``) model into int8.

    Weights: the layer's final float weight (BN folded) through its weight
    observer -> int8 codes. Bias: round(b / (s_x s_w)) as int32. Activations:
    each observer's (scale, zero point). An observer that saw no data is an
    error naming its layer.
    """
    from .prepare import QuantLayer, QuantPrepared, QuantStub
    if not isinstance(prepared, QuantPrepared):
        raise TypeError(f"convert: expected a model from quant.prepare or quant.prepare_qat, got "
                        f"{type(prepared).__name__}")
    steps, in_qparams = [], None
    for idx, m in enumerate(prepared):
        if isinstance(m, QuantStub):
            s, z = _qparams(m.activation_post_process, "the model's input (QuantStub)")
            steps.append(QuantizeInput(float(s.reshape(-1)[0]), int(z.reshape(-1)[0])))
            in_qparams = (np.float32(s.reshape(-1)[0]), int(z.reshape(-1)[0]))
        elif isinstance(m, QuantLayer):
            w, b = m.folded_weight_and_bias()
            w = to_host(w.array).astype(np.float32)
            b = np.zeros(w.shape[0], np.float32) if b is None else to_host(b.array).astype(np.float32)
            wobs = type(m.weight_fake_quant.observer)(**_observer_args(m.weight_fake_quant.observer))
            wobs(w)
            sw, zw = wobs.calculate_qparams()
            sw = np.broadcast_to(np.asarray(sw, np.float32).reshape(-1), (w.shape[0],)).copy()
            if np.any(np.asarray(zw) != 0):
                raise QuantError(f"layer {m.name!r}: weights must be symmetric (zero point 0)")
            shape = (-1,) + (1,) * (w.ndim - 1)
            inv = np.float32(1.0) / sw.reshape(shape)
            wq = np.clip(np.rint(w * inv), -128, 127).astype(np.int8)     # as fake_quantize rounds
            so, zo = _qparams(m.activation_post_process, f"layer {m.name!r} (its output)")
            so, zo = np.float32(so.reshape(-1)[0]), int(zo.reshape(-1)[0])
            bias_scale = np.float64(in_qparams[0]) * sw.astype(np.float64)
            bq = np.rint(b.astype(np.float64) / bias_scale)
            if np.any(np.abs(bq) > 2 ** 31 - 1):
                raise QuantError(f"layer {m.name!r}: the int32 bias overflows")
            if isinstance(m.layer, nn.Conv2d):
                L = m.layer
                args = {"stride": tuple(L.stride), "padding": tuple(L.padding),
                        "dilation": tuple(L.dilation), "groups": int(L.groups)}
                kind = "conv"
            else:
                args, kind = {}, "linear"
            steps.append(QuantizedLayer(kind, wq, sw, bq.astype(np.int32), in_qparams, (so, zo), m.relu,
                                        args, name=m.name))
            in_qparams = (so, zo)
        elif isinstance(m, nn.MaxPool2d):
            k, s, p = m.kernel_size, m.stride, m.padding
            if not all(isinstance(v, int) for v in (k, s, p)):
                raise QuantError(f"layer {idx} (MaxPool2d): only square windows are supported, got {k}, {s}, {p}")
            if p:
                raise QuantError(f"layer {idx} (MaxPool2d): padding is not supported by the integer path")
            steps.append(("maxpool", k, s, p))
        elif isinstance(m, nn.Flatten):
            if (m.start_dim, m.end_dim) != (1, -1):
                raise QuantError(f"layer {idx} (Flatten): only start_dim=1, end_dim=-1 is supported")
            steps.append(("flatten",))
        elif isinstance(m, nn.Dropout):
            continue                                   # the identity at inference
        else:
            raise QuantError(f"layer {idx} ({type(m).__name__}) is not supported by the integer path")
    if not any(isinstance(s, QuantizedLayer) for s in steps):
        raise QuantError("convert: the model has no Conv2d or Linear layer to quantize")
    return QuantizedModel(steps, mode=mode, requant=requant)


def _observer_args(obs):
    from .observers import PerChannelMinMaxObserver
    if isinstance(obs, PerChannelMinMaxObserver):
        return {"ch_axis": obs.ch_axis, "dtype": obs.dtype, "qscheme": obs.qscheme}
    return {"dtype": obs.dtype, "qscheme": obs.qscheme}
