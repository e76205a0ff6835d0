"""Inverted dropout.

Training: each element is kept with probability 1 - p and scaled by 1/(1 - p),
so E[y] = x and nothing needs rescaling at test time; evaluation is the
identity. The mask comes from the framework's seeded generator
(``mc.manual_seed``), so the same seed gives the same mask on every backend.
That generator lives on the host (minicnn/rng.py says why), so on a GPU the
mask is drawn there and copied to the device once per call, as booleans: a
deliberate, explicit transfer (``to_device``), the only one in a forward pass.

Backward: y = x * mask, so dx = gy * mask.
"""
from __future__ import annotations

from .. import rng
from ..backend import to_device
from ..autograd.tensor import Function, Tensor


class DropoutFn(Function):
    """y = x * mask, mask_i = (u_i >= p) / (1 - p), u_i ~ U[0, 1)."""

    def forward(self, x, p):
        u = rng.generator().random(x.shape, dtype=x.dtype if x.dtype.itemsize in (4, 8) else "float64")
        keep = to_device(u >= p)
        scale = x.dtype.type(0.0 if p >= 1 else 1.0 / (1.0 - p))
        mask = keep * scale                             # (same shape as x)
        self.save_for_backward(mask)
        return x * mask

    def backward(self, gy):
        mask, = self.saved_tensors
        return gy * mask

    def backward_graph(self, gy):
        mask, = self.saved_tensors                      # a constant: the same draw as forward
        return gy * Tensor(mask, dtype=gy.dtype)


def dropout(x: Tensor, p=0.5, training=True) -> Tensor:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be a probability in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    return DropoutFn.apply(x, p=float(p))
