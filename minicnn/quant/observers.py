"""Observers: watch the values a tensor takes and choose its scale and zero point.

An observer is called on a tensor (``obs(x)`` records and returns ``x``) and
afterwards answers ``obs.calculate_qparams() -> (scale, zero_point)``. The
formulas are PyTorch's (``torch.ao.quantization.observer``), with
``reduce_range=False``::

    quint8: [qmin, qmax] = [0, 255]      qint8: [-128, 127]
    lo = min(min_val, 0),  hi = max(max_val, 0)      # the range always holds 0.0

    affine:     s = (hi - lo) / (qmax - qmin)          z = qmin - round(lo / s), clamped
    symmetric:  s = max(-lo, hi) / ((qmax - qmin) / 2) z = 0 (qint8) or 128 (quint8)

    s = max(s, eps)        # eps = float32 machine epsilon: an all-zero tensor still gets s > 0

Including 0.0 in the range makes zero exactly representable (z is an integer
code), which padding and ReLU rely on. ``round`` is half-to-even, and the
arithmetic is float32, as in PyTorch.

* :class:`MinMaxObserver` — the running min and max (every value counts, so
  one outlier widens the range and coarsens every other value).
* :class:`MovingAverageMinMaxObserver` — an exponential moving average of each
  batch's min and max (what QAT uses: early batches are forgotten).
* :class:`PerChannelMinMaxObserver` — one range per output channel (weights).
* :class:`PercentileObserver` — clip the range at the p-th percentile of the
  values seen, trading a few saturated outliers for finer steps everywhere.
"""
from __future__ import annotations

import numpy as np

from ..io import to_numpy

EPS = np.float32(np.finfo(np.float32).eps)

QRANGES = {"quint8": (0, 255), "qint8": (-128, 127)}
PER_TENSOR = ("per_tensor_affine", "per_tensor_symmetric")
PER_CHANNEL = ("per_channel_affine", "per_channel_symmetric")


class ObserverError(ValueError):
    """An observer cannot give qparams (e.g. it has seen no data)."""


def calculate_qparams(min_val, max_val, dtype, qscheme, eps=EPS):
    """PyTorch's ``_calculate_qparams`` for arrays of mins and maxes (shape () or (C,))."""
    qmin, qmax = QRANGES[dtype]
    min_val = np.asarray(min_val, dtype=np.float32)
    max_val = np.asarray(max_val, dtype=np.float32)
    if np.any(~np.isfinite(min_val)) or np.any(~np.isfinite(max_val)):
        raise ObserverError("the observer has seen no data (or non-finite values): "
                            "calibrate it with at least one batch first")
    if np.any(min_val > max_val):
        raise ObserverError(f"min_val {min_val} > max_val {max_val}")
    lo = np.minimum(min_val, np.float32(0))
    hi = np.maximum(max_val, np.float32(0))
    if qscheme.endswith("symmetric"):
        hi = np.maximum(-lo, hi)
        scale = hi / np.float32((qmax - qmin) / 2)
        scale = np.maximum(scale, eps).astype(np.float32)
        zero_point = np.full(scale.shape, 128 if dtype == "quint8" else 0, dtype=np.int64)
    else:
        scale = (hi - lo) / np.float32(qmax - qmin)
        scale = np.maximum(scale, eps).astype(np.float32)
        zero_point = qmin - np.rint(lo / scale).astype(np.int64)
        zero_point = np.clip(zero_point, qmin, qmax).astype(np.int64)
    return scale, zero_point


class ObserverBase:
    """Shared: dtype and qscheme checks, ``quant_min``/``quant_max``, ``__call__``."""

    schemes = PER_TENSOR

    def __init__(self, dtype="quint8", qscheme="per_tensor_affine", eps=EPS):
        if dtype not in QRANGES:
            raise ValueError(f"{type(self).__name__}: dtype must be one of {', '.join(QRANGES)}, got {dtype!r}")
        if qscheme not in self.schemes:
            raise ValueError(f"{type(self).__name__}: qscheme must be one of {', '.join(self.schemes)}, "
                             f"got {qscheme!r}")
        self.dtype, self.qscheme, self.eps = dtype, qscheme, np.float32(eps)
        self.quant_min, self.quant_max = QRANGES[dtype]
        self.enabled = True                      # QAT freezes an observer by clearing this

    def __call__(self, x):
        if self.enabled:
            self.observe(to_numpy(x))
        return x

    forward = __call__

    def calculate_qparams(self):
        return calculate_qparams(self.min_val, self.max_val, self.dtype, self.qscheme, self.eps)

    def __repr__(self):
        return (f"{type(self).__name__}(dtype={self.dtype!r}, qscheme={self.qscheme!r}, "
                f"min_val={self.min_val}, max_val={self.max_val})")


class MinMaxObserver(ObserverBase):
    """min_val = min over everything seen, max_val = max over everything seen."""

    def __init__(self, dtype="quint8", qscheme="per_tensor_affine", eps=EPS):
        super().__init__(dtype, qscheme, eps)
        self.min_val, self.max_val = np.float32(np.inf), np.float32(-np.inf)

    def observe(self, x):
        if x.size == 0:
            return
        self.min_val = np.minimum(self.min_val, x.min()).astype(np.float32)
        self.max_val = np.maximum(self.max_val, x.max()).astype(np.float32)


class MovingAverageMinMaxObserver(MinMaxObserver):
    """min_val <- min_val + c * (batch min - min_val) (the first batch sets it); the same for max."""

    def __init__(self, averaging_constant=0.01, dtype="quint8", qscheme="per_tensor_affine", eps=EPS):
        super().__init__(dtype, qscheme, eps)
        if not 0 < averaging_constant <= 1:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = np.float32(averaging_constant)

    def observe(self, x):
        if x.size == 0:
            return
        lo, hi = np.float32(x.min()), np.float32(x.max())
        if not np.isfinite(self.min_val):
            self.min_val, self.max_val = lo, hi
        else:
            c = self.averaging_constant
            self.min_val = np.float32(self.min_val + c * (lo - self.min_val))
            self.max_val = np.float32(self.max_val + c * (hi - self.max_val))


class PerChannelMinMaxObserver(ObserverBase):
    """One running (min, max) per index of ``ch_axis`` — per output filter of a weight."""

    schemes = PER_CHANNEL

    def __init__(self, ch_axis=0, dtype="qint8", qscheme="per_channel_symmetric", eps=EPS):
        super().__init__(dtype, qscheme, eps)
        self.ch_axis = ch_axis
        self.min_val = self.max_val = None

    def observe(self, x):
        axis = self.ch_axis % x.ndim
        flat = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
        lo, hi = flat.min(axis=1).astype(np.float32), flat.max(axis=1).astype(np.float32)
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            if lo.shape != self.min_val.shape:
                raise ObserverError(f"PerChannelMinMaxObserver: saw {lo.size} channels, earlier {self.min_val.size}")
            self.min_val, self.max_val = np.minimum(self.min_val, lo), np.maximum(self.max_val, hi)

    def calculate_qparams(self):
        if self.min_val is None:
            raise ObserverError("the observer has seen no data: calibrate it with at least one batch first")
        return super().calculate_qparams()


class PercentileObserver(ObserverBase):
    """Range = [the (100-p)-th, the p-th] percentile of the values seen (p = 99.99 by default).

    Keeps a seeded random sample of at most ``samples_per_batch`` values from
    each call (enough for a percentile: 1,000 images of 26×26×32 activations are
    21 million values) and takes the percentiles of all kept values at the end.
    """

    def __init__(self, percentile=99.99, dtype="quint8", qscheme="per_tensor_affine", eps=EPS,
                 samples_per_batch=200_000, seed=0):
        super().__init__(dtype, qscheme, eps)
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile, self.samples_per_batch = percentile, samples_per_batch
        self._rng = np.random.default_rng(seed)
        self._kept = []

    def observe(self, x):
        flat = x.reshape(-1)
        if flat.size > self.samples_per_batch:
            flat = flat[self._rng.integers(0, flat.size, self.samples_per_batch)]
        if flat.size:
            self._kept.append(flat.astype(np.float32))

    @property
    def min_val(self):
        if not self._kept:
            return np.float32(np.inf)
        return np.float32(np.percentile(np.concatenate(self._kept), 100 - self.percentile))

    @property
    def max_val(self):
        if not self._kept:
            return np.float32(-np.inf)
        return np.float32(np.percentile(np.concatenate(self._kept), self.percentile))


OBSERVERS = {
    "minmax": MinMaxObserver,
    "moving": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
}
