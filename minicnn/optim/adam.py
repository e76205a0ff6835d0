"""Adam and AdamW: per-parameter step sizes from running moment estimates."""
from __future__ import annotations

from ..backend import current
from .optimizer import Optimizer


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015), as ``torch.optim.Adam``.

    For each parameter w with gradient g at step t = 1, 2, ... (lambda =
    weight_decay)::

        g_t   = g_t + lambda * w_{t-1}                  if weight_decay != 0 (L2, coupled)
        m_t   = beta1 * m_{t-1} + (1 - beta1) * g_t     first moment (mean),   m_0 = 0
        v_t   = beta2 * v_{t-1} + (1 - beta2) * g_t^2   second moment (uncentred variance), v_0 = 0
        m^_t  = m_t / (1 - beta1^t)                     bias corrections: m and v start at 0,
        v^_t  = v_t / (1 - beta2^t)                     so early averages are too small
        (amsgrad: vmax_t = max(vmax_{t-1}, v_t) and v^_t = vmax_t / (1 - beta2^t))
        w_t   = w_{t-1} - lr * m^_t / (sqrt(v^_t) + eps)

    Every coordinate gets its own step size: lr divided by the typical
    magnitude of its gradient. A first step therefore moves each weight by
    about lr, whatever the gradient's scale. ``amsgrad`` uses the largest v
    seen so far, so the effective step size never grows (Reddi et al., 2018).

    Weight decay here is *coupled*: lambda * w is added to the gradient and
    then divided by sqrt(v^) like the rest, so weights with large gradients
    are hardly decayed at all. :class:`AdamW` decouples it.

    Args:
        params: parameters or parameter groups (see :class:`Optimizer`).
        lr: learning rate.
        betas: (beta1, beta2), the decay rates of the two running averages.
        eps: added to the denominator so it is never zero.
        weight_decay: lambda (L2 penalty added to the gradient).
        amsgrad: use the AMSGrad variant.

    State per parameter: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v) and,
    with amsgrad, ``max_exp_avg_sq``.
    """

    #: AdamW sets this: decay the weights directly instead of via the gradient.
    decoupled_weight_decay = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(params, defaults)

    def _check_options(self, group):
        super()._check_options(group)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{type(self).__name__}: betas must be a pair (beta1, beta2), "
                            f"got {betas!r}")
        checked = {"beta1": betas[0], "beta2": betas[1]}
        self._check_number(checked, "beta1", low=0.0, high=1.0, high_open=True)
        self._check_number(checked, "beta2", low=0.0, high=1.0, high_open=True)
        group["betas"] = (checked["beta1"], checked["beta2"])
        self._check_number(group, "eps", low=0.0)
        self._check_number(group, "weight_decay", low=0.0)
        group["amsgrad"] = bool(group["amsgrad"])

    def update_param(self, p, grad, state, group):
        xp = current.xp
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        wd = group["weight_decay"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.array)                 # m_0 = 0
            state["exp_avg_sq"] = xp.zeros_like(p.array)              # v_0 = 0
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(p.array)
        state["step"] += 1
        t = state["step"]

        # adam_step_ is an optional kernel (kernels/contract.py): the numba backend runs
        # exactly this arithmetic in one compiled pass (kernels/numba_cpu.py; tests/test_optim.py
        # proves the two equal bit for bit). It declines (False) arrays it cannot update in place.
        kernels = current.kernels
        if kernels.provides("adam_step_") and kernels.adam_step_(
                p.array, grad, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"),
                lr, (beta1, beta2), eps, wd, self.decoupled_weight_decay, t):
            return

        g = grad
        if wd != 0:
            if self.decoupled_weight_decay:
                p.array *= 1 - lr * wd                                # AdamW: shrink w directly
            else:
                g = g + wd * p.array                                  # Adam: L2 via the gradient

        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= beta1
        m += (1 - beta1) * g                                         # m_t
        v *= beta2
        v += (1 - beta2) * (g * g)                                   # v_t
        if group["amsgrad"]:
            v_max = state["max_exp_avg_sq"]
            xp.maximum(v_max, v, out=v_max)                          # vmax_t = max(vmax_{t-1}, v_t)
            v = v_max

        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        p.array -= lr * m_hat / (xp.sqrt(v_hat) + eps)


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as ``torch.optim.AdamW``.

    The same as :class:`Adam` except for how weight decay enters::

        w_{t-1} <- w_{t-1} * (1 - lr * lambda)          decay the weights themselves first,
        ...                                             then the Adam step with the *plain*
        w_t = w_{t-1} - lr * m^_t / (sqrt(v^_t) + eps)  gradient (no lambda * w added to g)

    Why: in Adam, lambda * w is added to the gradient and then divided by
    sqrt(v^), so a weight with large gradients is barely decayed and one with
    tiny gradients is decayed enormously — weight decay stops meaning "shrink
    every weight by the same fraction". AdamW applies the shrink outside the
    adaptive scaling, restoring the SGD meaning of weight decay; it usually
    generalises better, which is why its default weight_decay is 1e-2
    (Adam's is 0).

    State per parameter: as :class:`Adam`.
    """

    decoupled_weight_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad)
