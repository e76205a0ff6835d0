"""Kullback-Leibler divergence and the knowledge-distillation loss (Hinton et al. 2015).

``kl_div(input, target)`` follows PyTorch: ``input`` holds **log**-probabilities,
``target`` probabilities (or log-probabilities with ``log_target=True``), and
the pointwise loss is

    l = target * (log target - input)                  (0 where target = 0)
    l = exp(target) * (target - input)                 (log_target=True)

so that summing over the classes of one sample gives KL(target || exp(input)).
``reduction="batchmean"`` (sum / batch size) is the one that *is* the mean KL
divergence per sample; ``"mean"`` divides by the number of elements (batch x
classes) — PyTorch keeps it as the default for backward compatibility only.

Distillation trains a small *student* on a large *teacher*'s softened
predictions. With temperature T, p_T = softmax(z / T) spreads probability over
the wrong classes ("a 7 that looks a bit like a 1"), which is information the
hard label does not carry:

    L = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)

The soft term's gradient w.r.t. the student logits is (p_T(s) - p_T(t)) / T,
which shrinks like 1/T^2 once the logits are spread; the T^2 factor keeps the
two terms' gradients comparable as T changes.
"""
from __future__ import annotations

from ..backend import current
from ..autograd.tensor import Function, Tensor
from .helpers import shape_str
from .activation import log_softmax, softmax
from .loss import cross_entropy

_KL_REDUCTIONS = ("mean", "batchmean", "sum", "none")


def _xlogy(x):
    """x log x with 0 log 0 = 0."""
    xp = current.xp
    safe = xp.where(x > 0, x, 1)
    return xp.where(x > 0, x * xp.log(safe), 0)


class KLDivFn(Function):
    """Pointwise l = t (log t - x)  [or e^t (t - x) with log_target], then reduced.

    The gradients::

        dl/dx = -t                [-e^t]
        dl/dt = log t + 1 - x     [e^t (t - x + 1)]    (PyTorch's gradient for t; at t = 0
                                                        log t is -inf, as in PyTorch)
    """

    def forward(self, x, t, reduction, log_target):
        xp = current.xp
        self.reduction, self.log_target = reduction, log_target
        if log_target:
            et = xp.exp(t)
            self.save_for_backward(x, t, et)
            loss = et * (t - x)
        else:
            self.save_for_backward(x, t, None)
            loss = _xlogy(t) - t * x
        if reduction == "sum":
            return loss.sum()
        if reduction == "mean":
            return loss.mean()
        if reduction == "batchmean":
            return loss.sum() / (x.shape[0] if x.ndim else 1)
        return loss

    def _scale(self, gy, x):
        xp = current.xp
        if self.reduction == "none":
            return gy
        n = {"sum": 1, "mean": max(x.size, 1), "batchmean": x.shape[0] if x.ndim else 1}[self.reduction]
        return xp.broadcast_to((gy / n).astype(x.dtype), x.shape)

    def backward(self, gy):
        xp = current.xp
        x, t, et = self.saved_tensors                 # et = e^t (log_target only)
        g = self._scale(gy, x)
        dx = -(et if self.log_target else t) * g
        dt = None
        if self.needs_input_grad[1]:
            if self.log_target:
                dt = et * (t - x + 1) * g
            else:
                safe = xp.where(t > 0, t, 1)
                log_t = xp.where(t > 0, xp.log(safe), -xp.inf)
                dt = (log_t + 1 - x) * g
        return dx, dt


def kl_div(input: Tensor, target, reduction="mean", log_target=False) -> Tensor:
    """KL divergence loss with PyTorch's semantics (``input``: log-probabilities)."""
    if reduction not in _KL_REDUCTIONS:
        raise ValueError(f"kl_div: reduction must be one of {_KL_REDUCTIONS}, got {reduction!r}")
    target = target if isinstance(target, Tensor) else Tensor(target, dtype=input.dtype)
    if input.shape != target.shape:
        raise ValueError(f"kl_div: input has shape {shape_str(input.shape)} but target has "
                         f"{shape_str(target.shape)}; they must match")
    return KLDivFn.apply(input, target, reduction=reduction, log_target=bool(log_target))


def distillation_loss(student_logits: Tensor, teacher_logits, target, temperature=4.0, alpha=0.9) -> Tensor:
    """``alpha T^2 KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) CE(s, y)`` (batch mean).

    ``teacher_logits`` is normally computed under ``no_grad`` (a constant); if it
    requires grad the gradient flows to it too (the gradient check uses that).
    """
    if not temperature > 0:
        raise ValueError(f"distillation_loss: temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distillation_loss: alpha must be in [0, 1], got {alpha}")
    teacher_logits = teacher_logits if isinstance(teacher_logits, Tensor) \
        else Tensor(teacher_logits, dtype=student_logits.dtype)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"distillation_loss: student logits {shape_str(student_logits.shape)} and "
                         f"teacher logits {shape_str(teacher_logits.shape)} must have the same shape")
    T = float(temperature)
    soft = kl_div(log_softmax(student_logits / T, dim=1), softmax(teacher_logits / T, dim=1),
                  reduction="batchmean")
    loss = soft * (alpha * T * T)
    if alpha < 1.0:
        loss = loss + cross_entropy(student_logits, target) * (1.0 - alpha)
    return loss
