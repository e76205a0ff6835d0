"""Batch normalisation with its closed-form backward.

Per channel c, over the m values it takes in a batch (N for (N, C) inputs,
N*H*W for (N, C, H, W) inputs)::

    mu = mean(x),  var = mean((x - mu)^2)          (biased: divide by m)
    xhat = (x - mu) / sqrt(var + eps)
    y = gamma * xhat + beta

Training uses the batch's mu and var, and updates the running estimates the
way PyTorch does (momentum 0.1; the *unbiased* variance, m/(m-1) * var, goes
into running_var). Evaluation normalises with the running estimates instead.

Backward in training. mu and var depend on every x, so the chain rule through
them collapses to (with g = dL/dxhat = gy * gamma, means over the m values)::

    dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)
    dgamma = sum(gy * xhat),   dbeta = sum(gy)

In evaluation mu and var are constants: dx = gy * gamma / sqrt(running_var + eps).

Layer norm and group norm are the same standardisation over *other* axes —
each sample on its own, so there are no running statistics and training and
evaluation compute the same thing:

* layer norm: over the last len(normalized_shape) axes of each sample
  (the D = prod(normalized_shape) features of one token or one image);
* group norm: over the channels of one group and all their positions
  (C/G * H * W values per sample and group); gamma and beta stay per channel.

Their backward is the batch-norm formula above, written with sums over the
D normalised values instead of means (multiply through by D)::

    dx = (1/D) * rstd * (D*g - sum(g) - xhat * sum(g * xhat)),   rstd = 1/sqrt(var + eps)

(:func:`_standardize` and :func:`_standardize_backward` below, shared by both).
"""
from __future__ import annotations

import numbers

from ..backend import current
from ..autograd.tensor import Function, Tensor
from .helpers import shape_str


def _standardize(x, axes, eps):
    """xhat = (x - mean) * rstd over ``axes``; returns xhat and rstd (keepdims shape)."""
    xp = current.xp
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)                  # biased: divide by D
    rstd = (1.0 / xp.sqrt(var + eps)).astype(x.dtype)
    return (x - mean) * rstd, rstd


def _standardize_backward(g, xhat, rstd, axes):
    """dL/dx from g = dL/dxhat, when mean and var were taken over ``axes`` (D values)::

        dx = (1/D) * rstd * (D*g - sum(g) - xhat * sum(g * xhat))
    """
    D = 1
    for a in axes:
        D *= xhat.shape[a]
    return (rstd / D) * (D * g - g.sum(axis=axes, keepdims=True)
                         - xhat * (g * xhat).sum(axis=axes, keepdims=True))


def scale_shift(xhat, weight, bias, shape):
    """y = weight * xhat + bias per channel, the normalisations' last step (``shape`` broadcasts
    a (C,) vector over xhat, e.g. (1, -1, 1, 1)); a None weight or bias skips its term."""
    y = xhat
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


class BatchNormFn(Function):
    """y = gamma * (x - mu) / sqrt(var + eps) + beta, per channel (axis 1)."""

    def forward(self, x, weight, bias, running_mean, running_var, training, momentum, eps):
        xp = current.xp
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)          # broadcast per channel
        self.training, self.axes, self.shape = training, axes, shape
        # numba, CUDA: the same numbers in one pass (kernels/contract.py; None on numpy)
        one_pass = current.kernels.batch_norm_train_forward if training else None
        eval_pass = None if training else current.kernels.batch_norm_eval_forward
        if one_pass is not None:
            y, xhat, mean, var, inv_std = one_pass(x, weight, bias, eps)
        elif eval_pass is not None:           # one pass; xhat kept only if a backward follows
            y, xhat, inv_std = eval_pass(x, weight, bias, running_mean, running_var, eps,
                                         need_xhat=bool(self.needs_input_grad))
        else:
            if training:
                mean = x.mean(axis=axes)
                var = x.var(axis=axes)
            else:
                mean, var = running_mean, running_var
            inv_std = (1.0 / xp.sqrt(var + eps)).astype(x.dtype)       # (C,)
            xhat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
            y = scale_shift(xhat, weight, bias, shape)
        if training and running_mean is not None:
            m = x.size // x.shape[1]
            running_mean *= (1 - momentum)
            running_mean += momentum * mean
            running_var *= (1 - momentum)
            running_var += momentum * var * (m / (m - 1))
        self.save_for_backward(xhat, inv_std, weight)                   # (x's shape), (C,), (C,) or None
        return y

    def backward(self, gy):
        xhat, inv_std, weight = self.saved_tensors
        training, axes, shape = self.training, self.axes, self.shape
        one_pass = current.kernels.batch_norm_train_backward if training else None
        if one_pass is not None:
            dx, dweight, dbias = one_pass(gy, xhat, inv_std, weight, need_dx=self.needs_input_grad[0])
            return (dx, dweight if self.needs_input_grad[1] else None,
                    dbias if self.needs_input_grad[2] else None)
        g = gy if weight is None else gy * weight.reshape(shape)       # dL/dxhat
        dx = None
        if self.needs_input_grad[0]:
            if training:
                dx = (g - g.mean(axis=axes, keepdims=True)
                      - xhat * (g * xhat).mean(axis=axes, keepdims=True)) * inv_std.reshape(shape)
            else:
                dx = g * inv_std.reshape(shape)
        dweight = (gy * xhat).sum(axis=axes) if self.needs_input_grad[1] else None
        dbias = gy.sum(axis=axes) if self.needs_input_grad[2] else None
        return dx, dweight, dbias


def batch_norm(x: Tensor, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5) -> Tensor:
    """PyTorch's ``F.batch_norm``: x (N, C) or (N, C, H, W); running stats (C,) or None."""
    if x.ndim not in (2, 4):
        raise ValueError(f"batch_norm: expected a 2-D (N, C) or 4-D (N, C, H, W) input, "
                         f"got shape {shape_str(x.shape)}")
    C = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (C,):
            raise ValueError(f"batch_norm: {name} should have shape ({C},) for an input with "
                             f"{C} channels, got {shape_str(t.shape)}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: give both running_mean and running_var, or neither")
    if not training and running_mean is None:
        raise ValueError("batch_norm: evaluation mode needs running_mean and running_var")
    if training and x.numel() // C <= 1:
        raise ValueError(f"batch_norm: training needs more than one value per channel to compute "
                         f"a variance, got input shape {shape_str(x.shape)}")
    rm = None if running_mean is None else running_mean.array
    rv = None if running_var is None else running_var.array
    return BatchNormFn.apply(x, weight, bias, running_mean=rm, running_var=rv,
                           training=bool(training), momentum=float(momentum), eps=float(eps))


class LayerNormFn(Function):
    """Layer normalisation (Ba, Kiros & Hinton, 2016), as ``torch.nn.functional.layer_norm``.

    x has shape ``(*, *normalized_shape)``; the last k = len(normalized_shape) axes
    hold the D = prod(normalized_shape) features of one sample::

        mu, var = mean and biased variance of x over the last k axes     (*, 1, ..., 1)
        xhat = (x - mu) / sqrt(var + eps)
        y = xhat * gamma + beta               gamma, beta: normalized_shape (or None)

    Backward (g = gy * gamma = dL/dxhat; sums over the last k axes; rstd = 1/sqrt(var + eps))::

        dx = (1/D) * rstd * (D*g - sum(g) - xhat * sum(g * xhat))
        dgamma = sum of gy * xhat over the leading axes,   dbeta = sum of gy over them

    (the "sum" form of batch norm's formula: mu and var depend on every x of
    the sample, which gives the two subtracted terms).
    """

    def forward(self, x, weight, bias, normalized_ndim, eps):
        axes = tuple(range(x.ndim - normalized_ndim, x.ndim))      # the normalised axes
        xhat, rstd = _standardize(x, axes, eps)                    # x's shape, (*, 1, ..., 1)
        self.save_for_backward(xhat, rstd, weight)
        self.axes = axes
        y = xhat if weight is None else xhat * weight
        return y if bias is None else y + bias

    def backward(self, gy):
        xhat, rstd, weight = self.saved_tensors
        lead = tuple(range(gy.ndim - len(self.axes)))              # the batch-like axes
        g = gy if weight is None else gy * weight                  # dL/dxhat
        dx = _standardize_backward(g, xhat, rstd, self.axes) if self.needs_input_grad[0] else None
        dweight = (gy * xhat).sum(axis=lead) if self.needs_input_grad[1] else None
        dbias = gy.sum(axis=lead) if self.needs_input_grad[2] else None
        return dx, dweight, dbias


class GroupNormFn(Function):
    """Group normalisation (Wu & He, 2018), as ``torch.nn.functional.group_norm``.

    x ``(N, C, *)`` with C channels split into G groups of C/G; each sample's group
    is standardised over its C/G channels and every position (D = C/G * H * W
    values for an image)::

        xg = x.reshape(N, G, D)
        xhat = (xg - mean(xg)) / sqrt(var(xg) + eps)   over the last axis, reshaped back to x's shape
        y[:, c] = xhat[:, c] * gamma[c] + beta[c]      gamma, beta: (C,) or None

    Backward: the layer-norm formula on the (N, G, D) view, with g = gy * gamma[c]::

        dx = (1/D) * rstd * (D*g - sum(g) - xhat * sum(g * xhat))     (sums over D)
        dgamma[c] = sum over n and positions of gy * xhat,   dbeta[c] = sum of gy
    """

    def forward(self, x, weight, bias, num_groups, eps):
        N, C = x.shape[:2]
        shape = (1, C) + (1,) * (x.ndim - 2)                          # broadcast per channel
        xhat, rstd = _standardize(x.reshape(N, num_groups, -1), (2,), eps)   # (N, G, D), (N, G, 1)
        xhat = xhat.reshape(x.shape)
        self.save_for_backward(xhat, rstd, weight)
        self.num_groups, self.shape = num_groups, shape
        return scale_shift(xhat, weight, bias, shape)

    def backward(self, gy):
        xhat, rstd, weight = self.saved_tensors
        N, G = gy.shape[0], self.num_groups
        per_channel = (0,) + tuple(range(2, gy.ndim))                 # all axes but C
        dx = None
        if self.needs_input_grad[0]:
            g = gy if weight is None else gy * weight.reshape(self.shape)   # dL/dxhat
            dx = _standardize_backward(g.reshape(N, G, -1), xhat.reshape(N, G, -1), rstd,
                                       (2,)).reshape(gy.shape)
        dweight = (gy * xhat).sum(axis=per_channel) if self.needs_input_grad[1] else None
        dbias = gy.sum(axis=per_channel) if self.needs_input_grad[2] else None
        return dx, dweight, dbias


def layer_norm(x: Tensor, normalized_shape, weight=None, bias=None, eps=1e-5) -> Tensor:
    """PyTorch's ``F.layer_norm``: standardise over the last ``len(normalized_shape)`` axes.

    ``normalized_shape`` is an int or a tuple that must equal the trailing
    shape of x; weight and bias (if given) have that shape.
    """
    normalized_shape = _as_shape(normalized_shape)
    k = len(normalized_shape)
    if k == 0 or x.ndim < k or tuple(x.shape[x.ndim - k:]) != normalized_shape:
        raise ValueError(f"layer_norm: normalized_shape {shape_str(normalized_shape)} must be the "
                         f"trailing shape of the input, got input shape {shape_str(x.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != normalized_shape:
            raise ValueError(f"layer_norm: {name} should have shape {shape_str(normalized_shape)} "
                             f"(normalized_shape), got {shape_str(t.shape)}")
    return LayerNormFn.apply(x, weight, bias, normalized_ndim=k, eps=float(eps))


def group_norm(x: Tensor, num_groups, weight=None, bias=None, eps=1e-5) -> Tensor:
    """PyTorch's ``F.group_norm``: x ``(N, C, *)``, C divisible by ``num_groups``; weight, bias (C,)."""
    if x.ndim < 2:
        raise ValueError(f"group_norm: expected an input (N, C, *) with at least 2 dimensions, "
                         f"got shape {shape_str(x.shape)}")
    C = x.shape[1]
    check_groups("group_norm", num_groups, C)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (C,):
            raise ValueError(f"group_norm: {name} should have shape ({C},) for an input with {C} "
                             f"channels, got {shape_str(t.shape)}")
    return GroupNormFn.apply(x, weight, bias, num_groups=int(num_groups), eps=float(eps))


def check_groups(op, num_groups, num_channels):
    """num_groups must be a positive integer that divides num_channels (the number of channels)."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral) or num_groups < 1:
        raise ValueError(f"{op}: num_groups must be a positive integer, got {num_groups!r}")
    if num_channels % num_groups:
        raise ValueError(f"{op}: num_channels ({num_channels}) must be divisible by num_groups "
                         f"({num_groups})")


def _as_shape(normalized_shape):
    """``5`` -> ``(5,)``; a sequence -> a tuple of ints."""
    if isinstance(normalized_shape, int):
        return (normalized_shape,)
    return tuple(int(s) for s in normalized_shape)
