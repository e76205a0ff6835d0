"""Adagrad: step sizes that shrink with the sum of all past squared gradients."""
from __future__ import annotations

from ..backend import current
from .optimizer import Optimizer


class Adagrad(Optimizer):
    r"""Adagrad (Duchi, Hazan & Singer, 2011), as ``torch.optim.Adagrad``.

    For each parameter w with gradient g at step t = 1, 2, ... (lambda =
    weight_decay)::

        g_t   = g_t + lambda * w_{t-1}                   if weight_decay != 0
        lr_t  = lr / (1 + (t - 1) * lr_decay)            the decayed learning rate
        G_t   = G_{t-1} + g_t^2                           G_0 = initial_accumulator_value
        w_t   = w_{t-1} - lr_t * g_t / (sqrt(G_t) + eps)

    G only grows, so every coordinate's step size only shrinks — fast at
    first, and coordinates that rarely receive a gradient (rare features)
    keep larger steps than frequent ones. The downside: on long runs the
    steps become too small to make progress, which RMSprop and Adam fix by
    replacing the sum with a running average.

    Args:
        params: parameters or parameter groups (see :class:`Optimizer`).
        lr: learning rate.
        lr_decay: the learning rate is divided by 1 + (t - 1) * lr_decay.
        weight_decay: lambda (L2 penalty added to the gradient).
        initial_accumulator_value: the starting value of G.
        eps: added to the denominator so it is never zero.

    State per parameter: ``step`` and ``sum`` (G).
    """

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10):
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, eps=eps)
        super().__init__(params, defaults)

    def _check_options(self, group):
        super()._check_options(group)
        self._check_number(group, "lr_decay", low=0.0)
        self._check_number(group, "weight_decay", low=0.0)
        self._check_number(group, "initial_accumulator_value", low=0.0)
        self._check_number(group, "eps", low=0.0)

    def update_param(self, p, grad, state, group):
        xp = current.xp
        if not state:
            state["step"] = 0
            state["sum"] = xp.full_like(p.array, group["initial_accumulator_value"])   # G_0
        state["step"] += 1
        t = state["step"]

        g = grad
        if group["weight_decay"] != 0:
            g = g + group["weight_decay"] * p.array

        lr_t = group["lr"] / (1 + (t - 1) * group["lr_decay"])
        G = state["sum"]
        G += g * g                                                    # G_t
        p.array -= lr_t * g / (xp.sqrt(G) + group["eps"])
