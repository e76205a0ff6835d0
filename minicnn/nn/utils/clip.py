"""Gradient clipping and weight penalties (PyTorch keeps these in ``torch.nn.utils``).

Gradient clipping
-----------------
One bad batch can produce a huge gradient and throw the weights far away
("exploding gradients"). Clipping bounds the step, between ``backward()``
and ``optimizer.step()``::

    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    optimizer.step()

* :func:`clip_grad_norm_` rescales *all* gradients together so that their
  joint norm is at most ``max_norm``: the direction is kept, only the length
  shrinks.
* :func:`clip_grad_value_` clamps every element into ``[-c, c]``; simpler,
  but it changes the direction.

L1, L2 and weight decay
-----------------------
Regularisation adds a price for large weights to the loss, so the network
prefers simple explanations and overfits less:

* **L2**: ``loss + (lambda / 2) * l2_penalty(w)`` with ``l2_penalty = sum w^2``.
  Its gradient is ``lambda * w``: a pull towards zero proportional to the
  weight — large weights shrink fast, small ones barely, so weights become
  small but rarely exactly zero.
* **L1**: ``loss + lambda * l1_penalty(w)`` with ``l1_penalty = sum |w|``.
  Its gradient is ``lambda * sign(w)``: the same pull whatever the weight's
  size, so small, unhelpful weights are pushed all the way to zero — L1
  gives *sparse* weights (feature selection).
* **Weight decay** (the optimizers' ``weight_decay`` option) shrinks the
  weights a little at every step. For plain SGD it *is* L2: the step
  ``w <- w - lr * (g + lambda * w) = (1 - lr * lambda) * w - lr * g``
  multiplies the weights by ``1 - lr * lambda``, and ``SGD(weight_decay=lam)``
  equals adding ``(lam / 2) * l2_penalty`` to the loss. For adaptive
  optimizers it is not: Adam divides the whole gradient, ``lambda * w``
  included, by ``sqrt(v)``, so weights with large gradients are hardly
  decayed. AdamW therefore *decouples* the decay, shrinking ``w`` by
  ``(1 - lr * lambda)`` outside the adaptive step.

Biases and batch-norm parameters are usually not penalised; select the
weights yourself::

    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    loss = criterion(model(x), y) + 1e-5 * nn.utils.l1_penalty(weights)
"""
from __future__ import annotations

import math
import numbers

from ...backend import current
from ...autograd.tensor import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_", "l1_penalty", "l2_penalty"]


def _tensor_list(parameters, fn_name):
    """A single tensor or an iterable of tensors -> a list of tensors."""
    if isinstance(parameters, Tensor):
        return [parameters]
    if callable(getattr(parameters, "parameters", None)):
        raise TypeError(f"{fn_name}: expected tensors, got the module {type(parameters).__name__}; "
                        "pass model.parameters()")
    try:
        params = list(parameters)
    except TypeError:
        raise TypeError(f"{fn_name}: expected a Tensor or an iterable of Tensors, got "
                        f"{type(parameters).__name__}") from None
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"{fn_name}: expected Tensors, but one of the parameters is a "
                            f"{type(p).__name__}")
    return params


def _non_negative(fn_name, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn_name}: {name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not value >= 0:
        raise ValueError(f"{fn_name}: {name} must be >= 0, got {value!r}")
    return value


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale all gradients together so that their joint norm is at most ``max_norm``.

    The joint norm treats every gradient element as one long vector g::

        total_norm = (sum_i |g_i|^p)^(1/p)        (p = norm_type; p = inf: max_i |g_i|)
        clip_coef  = min(max_norm / (total_norm + 1e-6), 1)
        g          = g * clip_coef                (in place, every p.grad)

    Nothing changes while total_norm <= max_norm (clip_coef is 1); above it,
    every gradient shrinks by the same factor, so the direction of the
    update is kept. Parameters without a gradient are ignored.

    Args:
        parameters: a Tensor or an iterable of Tensors (``model.parameters()``).
        max_norm: the largest allowed norm.
        norm_type: p of the p-norm, e.g. 2.0, 1.0 or ``float("inf")``.
        error_if_nonfinite: raise if the norm is NaN or infinite (otherwise
            the gradients become NaN, as in PyTorch).

    Returns:
        The total norm *before* clipping, as a 0-d Tensor (log it: a norm that
        keeps growing is an early sign of divergence).
    """
    name = "clip_grad_norm_"
    params = _tensor_list(parameters, name)
    max_norm = _non_negative(name, "max_norm", max_norm)
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real) or not norm_type > 0:
        raise ValueError(f"{name}: norm_type must be a number > 0 (or float('inf')), "
                         f"got {norm_type!r}")
    norm_type = float(norm_type)
    grads = [p.grad.array for p in params if p.grad is not None]
    if not grads:
        return Tensor(0.0)

    xp = current.xp
    # Summed on the backend and read back once (one device -> host copy, not one
    # per parameter); in float64 so that squaring a large float32 gradient cannot
    # overflow.
    if norm_type == math.inf:
        maxima = [xp.abs(g).max().astype(xp.float64) for g in grads if g.size]
        total_norm = float(xp.stack(maxima).max()) if maxima else 0.0
    else:
        powers = [(xp.abs(g.astype(xp.float64)) ** norm_type).sum() for g in grads]
        total_norm = float(xp.stack(powers).sum()) ** (1.0 / norm_type)
    if error_if_nonfinite and not math.isfinite(total_norm):
        raise RuntimeError(f"{name}: the total norm of order {norm_type:g} of the gradients is "
                           f"{total_norm}, so they cannot be clipped; the loss or a gradient "
                           "is NaN/inf (check the learning rate and the input data)")

    clip_coef = min(max_norm / (total_norm + 1e-6), 1.0)
    for g in grads:
        g *= clip_coef
    return Tensor(total_norm, dtype=grads[0].dtype)


def clip_grad_value_(parameters, clip_value):
    """Clamp every gradient element into ``[-clip_value, clip_value]``, in place.

    ``g = min(max(g, -c), c)`` elementwise. Unlike :func:`clip_grad_norm_`
    this changes the direction of the gradient when some elements are cut.
    Parameters without a gradient are ignored.
    """
    name = "clip_grad_value_"
    params = _tensor_list(parameters, name)
    clip_value = _non_negative(name, "clip_value", clip_value)
    xp = current.xp
    for p in params:
        if p.grad is not None:
            g = p.grad.array
            xp.clip(g, -clip_value, clip_value, out=g)


def _penalty(parameters, name, term):
    params = _tensor_list(parameters, name)
    if not params:
        raise ValueError(f"{name}: got no parameters (if you passed model.parameters(), is it "
                         "a generator you already used up?)")
    total = term(params[0])
    for p in params[1:]:
        total = total + term(p)
    return total


def l1_penalty(parameters):
    """``sum over all parameters of sum |w|`` as a differentiable scalar Tensor.

    Add ``lam * l1_penalty(weights)`` to the loss for L1 regularisation: its
    gradient is ``lam * sign(w)`` (0 at w = 0), a constant pull towards zero
    that makes weights sparse. See the module docstring for L1 vs L2.
    """
    return _penalty(parameters, "l1_penalty", lambda p: p.abs().sum())


def l2_penalty(parameters):
    """``sum over all parameters of sum w^2`` (the squared L2 norm) as a differentiable Tensor.

    Add ``(lam / 2) * l2_penalty(weights)`` to the loss for L2 regularisation:
    its gradient is ``lam * w``, so with plain SGD this equals
    ``SGD(..., weight_decay=lam)``. See the module docstring for L2 vs
    weight decay in Adam/AdamW.
    """
    return _penalty(parameters, "l2_penalty", lambda p: (p * p).sum())
