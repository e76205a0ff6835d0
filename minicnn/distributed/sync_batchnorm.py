"""SyncBatchNorm: batch normalisation with statistics over the *global* batch.

With data-parallel training each rank sees B/N samples of a batch of B. Plain
BatchNorm would normalise with the statistics of those B/N samples — a
different (noisier) function than one process with batch B computes. Per
channel c, SyncBatchNorm instead all-reduces three numbers over the ranks::

    S1 = sum of x,   S2 = sum of x^2,   M = number of values     (over every rank)
    mu = S1 / M,     var = S2 / M - mu^2                          (biased, as BatchNorm)
    xhat = (x - mu) / sqrt(var + eps),   y = gamma * xhat + beta

(the sums are taken in float64: ``S2/M - mu^2`` subtracts two close numbers
when ``|mu| >> std``, and float32 would lose most of the digits).

Backward. mu and var depend on every rank's x, so the usual closed form (see
``functional/norm.py``) needs means over the global batch too — two more
all-reduced per-channel sums::

    g = dL/dxhat = gy * gamma
    dx = (g - sum(g)/M - xhat * sum(g * xhat)/M) / sqrt(var + eps)   (sums over all ranks)
    dgamma = sum(gy * xhat),  dbeta = sum(gy)                         (this rank's part)

dgamma and dbeta stay local: DistributedDataParallel averages them with the
other gradients. Each rank's dx is then the derivative of the *sum* of the
ranks' losses, which is what the gradient average of DDP expects, so N ranks
x B/N reproduce one process x B exactly (tests/test_distributed.py).

In a world of one process the all-reduces return their input and this is
BatchNorm (gradchecked like it); in eval mode it *is* BatchNorm, using the
running statistics (identical on every rank, since they come from global
statistics).
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..backend import current
from ..autograd.tensor import Function, shape_str
from ..functional.norm import scale_shift
from ..nn.layers import BatchNormBase


def _all_reduce_(buf):
    from .data_parallel import all_reduce_       # distributed imports nn: import at call time
    return all_reduce_(buf)


class SyncBatchNormFn(Function):
    """y = gamma * (x - mu) / sqrt(var + eps) + beta, mu and var over every rank's batch."""

    def forward(self, x, weight, bias, running_mean, running_var, momentum, eps):
        xp = current.xp
        C = x.shape[1]
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
        x64 = x.astype(np.float64, copy=False)
        local_m = xp.full((1,), x.size // C, dtype=np.float64)
        stats = _all_reduce_(xp.concatenate([x64.sum(axis=axes), (x64 * x64).sum(axis=axes), local_m]))
        M = stats[-1]                                                     # global count per channel
        mean = stats[:C] / M
        var = xp.maximum(stats[C:2 * C] / M - mean * mean, 0.0)
        if running_mean is not None:
            running_mean *= (1 - momentum)
            running_mean += (momentum * mean).astype(running_mean.dtype)
            running_var *= (1 - momentum)
            running_var += (momentum * var * (M / (M - 1))).astype(running_var.dtype)
        inv_std = (1.0 / xp.sqrt(var + eps)).astype(x.dtype)            # (C,)
        xhat = (x - mean.astype(x.dtype).reshape(shape)) * inv_std.reshape(shape)
        self.save_for_backward(xhat, inv_std, weight)                  # (x's shape), (C,), (C,) or None
        self.axes, self.shape, self.count = axes, shape, M              # M: values per channel, all ranks
        return scale_shift(xhat, weight, bias, shape)

    def backward(self, gy):
        xp = current.xp
        xhat, inv_std, weight = self.saved_tensors
        axes, shape, M = self.axes, self.shape, self.count
        C = xhat.shape[1]
        g = gy if weight is None else gy * weight.reshape(shape)       # dL/dxhat
        dx = None
        if self.needs_input_grad[0]:
            sums = _all_reduce_(xp.concatenate([g.sum(axis=axes), (g * xhat).sum(axis=axes)]))
            mean_g = (sums[:C] / M).astype(g.dtype).reshape(shape)
            mean_gx = (sums[C:] / M).astype(g.dtype).reshape(shape)
            dx = (g - mean_g - xhat * mean_gx) * inv_std.reshape(shape)
        dweight = (gy * xhat).sum(axis=axes) if self.needs_input_grad[1] else None
        dbias = gy.sum(axis=axes) if self.needs_input_grad[2] else None
        return dx, dweight, dbias


class SyncBatchNorm(BatchNormBase):
    """BatchNorm over (N, C) or (N, C, H, W) whose training statistics span all ranks.

    PyTorch's ``nn.SyncBatchNorm`` (without process groups: the whole MPI
    world). Same parameters and buffers as BatchNorm1d/2d, so state dicts move
    freely between them; :func:`minicnn.distributed.convert_sync_batchnorm`
    swaps them in a model.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None):
        if process_group is not None:
            raise NotImplementedError("SyncBatchNorm: process groups are not supported; the statistics "
                                      "always span the whole MPI world")
        super().__init__(num_features, eps, momentum, affine, track_running_stats)

    @classmethod
    def from_batchnorm(cls, bn):
        """A SyncBatchNorm holding ``bn``'s parameters and buffers (the same objects)."""
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        for name in ("weight", "bias"):
            if getattr(bn, name) is not None:
                setattr(new, name, getattr(bn, name))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            if bn._buffers.get(name) is not None:
                new._buffers[name] = bn._buffers[name]
        new.train(bn.training)
        return new

    def forward(self, x):
        if x.ndim not in (2, 4):
            raise ValueError(f"SyncBatchNorm: expected a 2-D (N, C) or 4-D (N, C, H, W) input, "
                             f"got shape {shape_str(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm({self.num_features}): input has {x.shape[1]} channels, "
                             f"expected {self.num_features}")
        if not self.training and self.running_mean is not None:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, self.momentum, self.eps)
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.array = self.num_batches_tracked.array + 1
        rm = self.running_mean.array if self.running_mean is not None else None
        rv = self.running_var.array if self.running_var is not None else None
        return SyncBatchNormFn.apply(x, self.weight, self.bias, running_mean=rm, running_var=rv,
                                           momentum=float(self.momentum), eps=float(self.eps))
