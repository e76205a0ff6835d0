"""RMSprop: divide each gradient by a running root-mean-square of its recent values."""
from __future__ import annotations

from ..backend import current
from .optimizer import Optimizer


class RMSprop(Optimizer):
    r"""RMSprop (Hinton, lecture 6e of "Neural Networks for Machine Learning"), as
    ``torch.optim.RMSprop``.

    For each parameter w with gradient g at step t (lambda = weight_decay,
    mu = momentum)::

        g_t   = g_t + lambda * w_{t-1}                   if weight_decay != 0
        v_t   = alpha * v_{t-1} + (1 - alpha) * g_t^2    running mean of g^2,   v_0 = 0
        gbar_t = alpha * gbar_{t-1} + (1 - alpha) * g_t  running mean of g (centered only)
        s_t   = sqrt(v_t - gbar_t^2) + eps               centered: a running standard deviation
        s_t   = sqrt(v_t) + eps                          otherwise: a running RMS
        b_t   = mu * b_{t-1} + g_t / s_t                 if momentum > 0,  b_0 = 0
        w_t   = w_{t-1} - lr * b_t                       if momentum > 0
        w_t   = w_{t-1} - lr * g_t / s_t                 otherwise

    Like Adam without the first moment and without bias correction (so the
    first steps are large: v_1 = (1 - alpha) g^2 is small). Note that eps is
    added *outside* the square root, as in PyTorch.

    Args:
        params: parameters or parameter groups (see :class:`Optimizer`).
        lr: learning rate.
        alpha: decay rate of the running averages (smoothing constant).
        eps: added to the denominator so it is never zero.
        weight_decay: lambda (L2 penalty added to the gradient).
        momentum: mu, momentum applied to the scaled gradient.
        centered: normalise by the estimated variance instead of the
            uncentred second moment.

    State per parameter: ``step``, ``square_avg`` (v), ``momentum_buffer``
    (momentum > 0), ``grad_avg`` (centered).
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                        momentum=momentum, centered=centered)
        super().__init__(params, defaults)

    def _check_options(self, group):
        super()._check_options(group)
        self._check_number(group, "alpha", low=0.0)
        self._check_number(group, "eps", low=0.0)
        self._check_number(group, "weight_decay", low=0.0)
        self._check_number(group, "momentum", low=0.0)
        group["centered"] = bool(group["centered"])

    def update_param(self, p, grad, state, group):
        xp = current.xp
        lr, alpha, eps, mu = group["lr"], group["alpha"], group["eps"], group["momentum"]
        if not state:
            state["step"] = 0
            state["square_avg"] = xp.zeros_like(p.array)               # v_0 = 0
            if mu > 0:
                state["momentum_buffer"] = xp.zeros_like(p.array)      # b_0 = 0
            if group["centered"]:
                state["grad_avg"] = xp.zeros_like(p.array)             # gbar_0 = 0
        state["step"] += 1

        g = grad
        if group["weight_decay"] != 0:
            g = g + group["weight_decay"] * p.array

        v = state["square_avg"]
        v *= alpha
        v += (1 - alpha) * (g * g)                                    # v_t
        if group["centered"]:
            g_bar = state["grad_avg"]
            g_bar *= alpha
            g_bar += (1 - alpha) * g                                  # gbar_t
            s = xp.sqrt(v - g_bar * g_bar) + eps
        else:
            s = xp.sqrt(v) + eps

        if mu > 0:
            b = state["momentum_buffer"]
            b *= mu
            b += g / s                                                # b_t
            p.array -= lr * b
        else:
            p.array -= lr * g / s
