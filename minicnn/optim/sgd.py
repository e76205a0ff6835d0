"""Stochastic gradient descent, with momentum, Nesterov momentum and weight decay."""
from __future__ import annotations

from .optimizer import Optimizer


class SGD(Optimizer):
    r"""Stochastic gradient descent (optionally with momentum), as ``torch.optim.SGD``.

    For each parameter w with gradient g at step t (lr = learning rate,
    mu = momentum, tau = dampening, lambda = weight_decay)::

        g_t = g_t + lambda * w_{t-1}                 if weight_decay != 0
        b_t = g_t                                    at the first step (t = 1)
        b_t = mu * b_{t-1} + (1 - tau) * g_t         afterwards
        d_t = g_t + mu * b_t                         if nesterov
        d_t = b_t                                    otherwise     (momentum != 0)
        d_t = g_t                                                  (momentum == 0)
        w_t = w_{t-1} - lr * d_t

    * **Momentum** keeps a running sum of past gradients (the "velocity" b):
      directions that agree from step to step build up speed, oscillating ones
      cancel. The buffer starts at the first gradient (not at zero), as in
      PyTorch.
    * **Nesterov** momentum looks ahead: it uses g + mu * b instead of b,
      which amounts to taking the gradient after the momentum step. It needs
      momentum > 0 and dampening = 0.
    * **Weight decay** lambda adds lambda * w to the gradient: exactly the
      gradient of an L2 penalty (lambda / 2) * ||w||^2 added to the loss, so
      weights are pulled towards zero.

    Args:
        params: parameters or parameter groups (see :class:`Optimizer`).
        lr: learning rate (required: there is no universally good default).
        momentum: mu, typically 0.9; 0 gives plain SGD.
        dampening: tau, scales the new gradient entering the buffer.
        nesterov: use Nesterov momentum.
        weight_decay: lambda, the L2 penalty coefficient.

    State per parameter: ``momentum_buffer`` (when momentum != 0).
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, nesterov=False, weight_decay=0):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                        weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _check_options(self, group):
        super()._check_options(group)
        self._check_number(group, "momentum", low=0.0)
        self._check_number(group, "dampening", low=0.0, high=1.0)
        self._check_number(group, "weight_decay", low=0.0)
        group["nesterov"] = bool(group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("SGD: nesterov=True requires momentum > 0 and dampening = 0, got "
                             f"momentum={group['momentum']:g}, dampening={group['dampening']:g}")

    def update_param(self, p, grad, state, group):
        lr, mu, tau = group["lr"], group["momentum"], group["dampening"]
        g = grad
        if group["weight_decay"] != 0:
            g = g + group["weight_decay"] * p.array              # gradient of the L2 penalty

        if mu != 0:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = g.copy()             # b_1 = g_1
            else:
                b = state["momentum_buffer"]
                b *= mu                                          # b_t = mu * b_{t-1}
                b += (1 - tau) * g                               #       + (1 - tau) * g_t
            b = state["momentum_buffer"]
            g = g + mu * b if group["nesterov"] else b

        p.array -= lr * g
