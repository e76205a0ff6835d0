"""Adadelta: Adagrad's per-coordinate step sizes, with running averages and no learning rate to tune."""
from __future__ import annotations

from ..backend import current
from .optimizer import Optimizer


class Adadelta(Optimizer):
    r"""Adadelta (Zeiler, 2012), as ``torch.optim.Adadelta``.

    For each parameter w with gradient g at step t (lambda = weight_decay)::

        g_t     = g_t + lambda * w_{t-1}                          if weight_decay != 0
        v_t     = rho * v_{t-1} + (1 - rho) * g_t^2              running mean of g^2,       v_0 = 0
        delta_t = sqrt(u_{t-1} + eps) / sqrt(v_t + eps) * g_t    the step, in w's own units
        u_t     = rho * u_{t-1} + (1 - rho) * delta_t^2          running mean of delta^2,   u_0 = 0
        w_t     = w_{t-1} - lr * delta_t

    Where RMSprop divides by the RMS of recent gradients and multiplies by a
    learning rate, Adadelta multiplies by the RMS of recent *steps*: the ratio
    has the units of w (Zeiler's "unit correction"), so lr = 1.0 (the default)
    works without tuning. eps sits inside both square roots; it also sets the
    size of the very first steps (u_0 = 0, so delta_1 ~ sqrt(eps) / RMS(g)).

    Args:
        params: parameters or parameter groups (see :class:`Optimizer`).
        lr: scales delta before it is applied (1.0 in the paper).
        rho: decay rate of both running averages.
        eps: added inside the square roots.
        weight_decay: lambda (L2 penalty added to the gradient).

    State per parameter (PyTorch's names): ``step``, ``square_avg`` (v), ``acc_delta`` (u).
    """

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0):
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _check_options(self, group):
        super()._check_options(group)
        self._check_number(group, "rho", low=0.0, high=1.0)
        self._check_number(group, "eps", low=0.0)
        self._check_number(group, "weight_decay", low=0.0)

    def update_param(self, p, grad, state, group):
        xp = current.xp
        rho, eps = group["rho"], group["eps"]
        if not state:
            state["step"] = 0
            state["square_avg"] = xp.zeros_like(p.array)              # v_0 = 0
            state["acc_delta"] = xp.zeros_like(p.array)               # u_0 = 0
        state["step"] += 1

        g = grad
        if group["weight_decay"] != 0:
            g = g + group["weight_decay"] * p.array

        v, u = state["square_avg"], state["acc_delta"]
        v *= rho
        v += (1 - rho) * (g * g)                                     # v_t
        delta = xp.sqrt(u + eps) / xp.sqrt(v + eps) * g              # delta_t
        u *= rho
        u += (1 - rho) * (delta * delta)                             # u_t
        p.array -= group["lr"] * delta
