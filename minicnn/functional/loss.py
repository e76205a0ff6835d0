"""Loss functions, stable for large logits, with closed-form backwards.

``reduction`` is ``'mean'`` (default), ``'sum'`` or ``'none'`` (one loss per
element or sample), as in PyTorch.

``backward_graph`` (``create_graph=True``) writes each gradient with Tensor
operations: cross-entropy's p - q with p = SoftmaxFn.apply(logits), so a
gradient penalty or a Hessian-vector product can go through the loss.
"""
from __future__ import annotations

from ..backend import current
from ..autograd.tensor import Function, Tensor
from .activation import SigmoidFn, SoftmaxFn
from .helpers import shape_str, stable_sigmoid
from .math import ExpandFn, constant

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction, op):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(loss, reduction):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _reduce_grad(gy, shape, reduction, dtype):
    """The gradient reaching each element loss: gy/n for a mean, gy for a sum."""
    xp = current.xp
    if reduction == "none":
        return gy
    n = 1
    for s in shape:
        n *= s
    g = gy / n if reduction == "mean" else gy
    return xp.broadcast_to(g.astype(dtype), shape)


def reduce_grad_graph(gy, shape, reduction):
    """:func:`_reduce_grad` on Tensors (``backward_graph``): gy/n or gy, broadcast to ``shape``."""
    if reduction == "none":
        return gy
    n = 1
    for s in shape:
        n *= s
    return ExpandFn.apply(gy / n if reduction == "mean" else gy, shape=tuple(shape))


def _check_class_targets(op, logits, target):
    if logits.ndim != 2:
        raise ValueError(f"{op}: expected input of shape (N, num_classes), got {shape_str(logits.shape)}")
    if target.ndim != 1:
        raise ValueError(f"{op}: expected target of shape (N,) with class indices, got "
                         f"{shape_str(target.shape)}")
    if target.dtype.kind not in "iu":
        raise TypeError(f"{op}: target must hold integer class indices, got dtype {target.dtype}")
    N, K = logits.shape
    if target.shape[0] != N:
        raise ValueError(f"{op}: batch size mismatch: input has {N} rows but target has "
                         f"{target.shape[0]} labels")
    # One yes/no read back from the device per batch (a GPU would not catch a bad
    # index itself: it would read out of bounds); details only on the error path.
    if N and bool(((target < 0) | (target >= K)).any()):
        bad = int(target.min()) if int(target.min()) < 0 else int(target.max())
        raise IndexError(f"{op}: target class {bad} is out of range for {K} classes "
                         f"(expected 0 <= target < {K})")


class CrossEntropyFn(Function):
    """Softmax + negative log-likelihood in one stable step, with label smoothing.

    With p = softmax(z) over K classes and the smoothed target distribution
    q = (1 - eps) * onehot(y) + eps / K, the loss of one sample is

        L = -sum_k q_k log p_k          (log p = z - logsumexp(z), computed stably)

    and its gradient w.r.t. the logits is the famous  dL/dz = p - q.
    """

    def forward(self, logits, target, label_smoothing, reduction):
        xp = current.xp
        N, K = logits.shape
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))   # (N, K)
        rows = xp.arange(N)
        eps = label_smoothing
        loss = -(1 - eps) * log_p[rows, target]                                 # (N,)
        if eps:
            loss = loss - (eps / K) * log_p.sum(axis=1)
        self.save_for_backward(log_p, target)
        self.eps, self.reduction = eps, reduction
        return _reduce(loss, reduction).astype(logits.dtype)

    def backward(self, gy):
        xp = current.xp
        log_p, target = self.saved_tensors                         # (N, K), (N,)
        N, K = log_p.shape
        grad = xp.exp(log_p)                                       # p
        grad[xp.arange(N), target] -= (1 - self.eps)               # p - (1 - eps) onehot
        if self.eps:
            grad -= self.eps / K                                   # p - q
        g = _reduce_grad(gy, (N,), self.reduction, grad.dtype)     # (N,)
        return grad * g[:, None], None

    def backward_graph(self, gy):
        xp = current.xp
        logits = self.inputs[0]
        target = self.saved_tensors[1]
        N, K = logits.shape
        q = xp.zeros((N, K), dtype=logits.dtype)                    # the smoothed target distribution
        q[xp.arange(N), target] = 1 - self.eps
        q += self.eps / K
        p = SoftmaxFn.apply(logits, dim=1)
        g = reduce_grad_graph(gy, (N,), self.reduction)            # (N,)
        return (p - constant(q, p)) * g.reshape(N, 1), None


class NLLLossFn(Function):
    """L_n = -log_probs[n, y_n].   d/d log_probs: -1 at (n, y_n), 0 elsewhere."""

    def forward(self, log_probs, target, reduction):
        N = log_probs.shape[0]
        self.save_for_backward(target)
        self.shape, self.reduction = log_probs.shape, reduction
        return _reduce(-log_probs[current.xp.arange(N), target], reduction)

    def backward(self, gy):
        xp = current.xp
        target, = self.saved_tensors
        N = self.shape[0]
        grad = xp.zeros(self.shape, dtype=gy.dtype)
        grad[xp.arange(N), target] = -_reduce_grad(gy, (N,), self.reduction, gy.dtype)
        return grad, None

    def backward_graph(self, gy):
        xp = current.xp
        target, = self.saved_tensors
        N = self.shape[0]
        minus_onehot = xp.zeros(self.shape, dtype=gy.dtype)
        minus_onehot[xp.arange(N), target] = -1
        g = reduce_grad_graph(gy, (N,), self.reduction)            # (N,)
        return constant(minus_onehot, gy) * g.reshape(N, 1), None


class MSELossFn(Function):
    """L = (x - t)^2 per element.   dL/dx = 2 (x - t), dL/dt = -2 (x - t)."""

    def forward(self, x, t, reduction):
        diff = x - t
        self.save_for_backward(diff)
        self.reduction = reduction
        return _reduce(diff * diff, reduction)

    def backward(self, gy):
        diff, = self.saved_tensors
        g = 2 * diff * _reduce_grad(gy, diff.shape, self.reduction, diff.dtype)
        return g, (-g if self.needs_input_grad[1] else None)

    def backward_graph(self, gy):
        x, t = self.inputs
        g = 2 * (x - t) * reduce_grad_graph(gy, x.shape, self.reduction)
        return g, (-g if self.needs_input_grad[1] else None)


class SmoothL1LossFn(Function):
    """Huber-like: ``L = 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta``, ``d = x - t``.

    dL/dd = d / beta inside the quadratic zone, sign(d) outside.
    """

    def forward(self, x, t, beta, reduction):
        xp = current.xp
        d = x - t
        small = xp.abs(d) < beta
        self.save_for_backward(d, small)
        self.beta, self.reduction = beta, reduction
        loss = xp.where(small, 0.5 * d * d / beta, xp.abs(d) - 0.5 * beta)
        return _reduce(loss, reduction).astype(x.dtype)

    def backward(self, gy):
        xp = current.xp
        d, small = self.saved_tensors
        dl = xp.where(small, d / self.beta, xp.sign(d))
        g = dl * _reduce_grad(gy, d.shape, self.reduction, d.dtype)
        return g, (-g if self.needs_input_grad[1] else None)

    def backward_graph(self, gy):
        x, t = self.inputs
        d, small = self.saved_tensors
        # d/beta inside the quadratic zone, the constant sign(d) outside
        dl = (x - t) * constant(small / self.beta, gy) + constant(current.xp.sign(d) * ~small, gy)
        g = dl * reduce_grad_graph(gy, d.shape, self.reduction)
        return g, (-g if self.needs_input_grad[1] else None)


class BCEWithLogitsFn(Function):
    """Binary cross-entropy on logits x with targets y in [0, 1]::

        L = -[y log s(x) + (1 - y) log(1 - s(x))] = max(x, 0) - x y + log(1 + e^-|x|)

    (the right-hand form never overflows).  dL/dx = s(x) - y,  dL/dy = -x.
    """

    def forward(self, x, y, reduction):
        xp = current.xp
        self.save_for_backward(x, y)
        self.reduction = reduction
        loss = xp.maximum(x, 0) - x * y + xp.log1p(xp.exp(-xp.abs(x)))
        return _reduce(loss, reduction)

    def backward(self, gy):
        x, y = self.saved_tensors
        g = _reduce_grad(gy, x.shape, self.reduction, x.dtype)
        dx = (stable_sigmoid(x) - y) * g
        dy = -x * g if self.needs_input_grad[1] else None
        return dx, dy

    def backward_graph(self, gy):
        x, y = self.inputs
        g = reduce_grad_graph(gy, x.shape, self.reduction)
        dx = (SigmoidFn.apply(x) - y) * g
        dy = -x * g if self.needs_input_grad[1] else None
        return dx, dy


class MultiMarginLossFn(Function):
    """The multiclass SVM (hinge) loss of CS231n, as ``torch.nn.functional.multi_margin_loss``.

    For scores x (N, C) and the correct class y_n of each sample, with
    margins m_ni = margin - x[n, y_n] + x[n, i]::

        l_n = (1/C) * sum_{i != y_n} w[y_n] * max(0, m_ni)^p        p = 1 or 2, w: (C,) or 1

    (PyTorch divides by C, the number of classes; CS231n's notes leave the
    1/C out.) Backward, with a_ni = 1 where m_ni > 0 and i != y_n, else 0::

        dl_n/dx[n, i]   = w[y_n]/C * p * m_ni^(p-1) * a_ni          for i != y_n
        dl_n/dx[n, y_n] = -sum_{i != y_n} dl_n/dx[n, i]

    (raising a wrong class's score by one raises the margin it violates by
    one; raising the correct one lowers every margin). Shapes: input (N, C),
    target (N,) integers, output (N,) for reduction='none', else a scalar.
    """

    def forward(self, x, target, weight, p, margin, reduction):
        xp = current.xp
        N, C = x.shape
        rows = xp.arange(N)
        m = margin - x[rows, target][:, None] + x                   # (N, C) margins
        m[rows, target] = 0                                        # the correct class adds nothing
        hinge = xp.maximum(m, 0)
        scale = (1.0 / C) if weight is None else weight[target][:, None] / C   # w[y_n] / C
        loss = ((hinge if p == 1 else hinge * hinge) * scale).sum(axis=1)     # (N,)
        self.save_for_backward(hinge, target, weight)
        self.p, self.reduction = p, reduction
        return _reduce(loss, reduction).astype(x.dtype)

    def backward(self, gy):
        xp = current.xp
        hinge, target, weight = self.saved_tensors                 # (N, C): max(0, m), 0 at y_n
        N, C = hinge.shape
        rows = xp.arange(N)
        scale = (1.0 / C) if weight is None else weight[target][:, None] / C
        d = (hinge > 0) * scale if self.p == 1 else 2 * hinge * scale        # dl_n/dx[n, i], i != y_n
        d = d.astype(hinge.dtype)
        d[rows, target] = -d.sum(axis=1)                           # dl_n/dx[n, y_n]
        g = _reduce_grad(gy, (N,), self.reduction, hinge.dtype)   # (N,)
        return d * g[:, None], None, None


# -- functional spellings ------------------------------------------------------
def cross_entropy(logits: Tensor, target, label_smoothing=0.0, reduction="mean") -> Tensor:
    """Cross-entropy between logits (N, K) and integer class indices (N,)."""
    _check_reduction(reduction, "cross_entropy")
    target = target if isinstance(target, Tensor) else Tensor(target)
    _check_class_targets("cross_entropy", logits, target.array)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    return CrossEntropyFn.apply(logits, target, label_smoothing=float(label_smoothing),
                              reduction=reduction)


def nll_loss(log_probs: Tensor, target, reduction="mean") -> Tensor:
    """Negative log-likelihood of log-probabilities (N, K) at class indices (N,)."""
    _check_reduction(reduction, "nll_loss")
    target = target if isinstance(target, Tensor) else Tensor(target)
    _check_class_targets("nll_loss", log_probs, target.array)
    return NLLLossFn.apply(log_probs, target, reduction=reduction)


def _same_shape(op, x, t):
    t = t if isinstance(t, Tensor) else Tensor(t, dtype=x.dtype)
    if x.shape != t.shape:
        raise ValueError(f"{op}: input has shape {shape_str(x.shape)} but target has "
                         f"{shape_str(t.shape)}; they must match")
    return t


def mse_loss(x: Tensor, target, reduction="mean") -> Tensor:
    _check_reduction(reduction, "mse_loss")
    return MSELossFn.apply(x, _same_shape("mse_loss", x, target), reduction=reduction)


def smooth_l1_loss(x: Tensor, target, reduction="mean", beta=1.0) -> Tensor:
    _check_reduction(reduction, "smooth_l1_loss")
    if beta <= 0:
        raise ValueError(f"smooth_l1_loss: beta must be > 0, got {beta}")
    return SmoothL1LossFn.apply(x, _same_shape("smooth_l1_loss", x, target), beta=float(beta),
                              reduction=reduction)


def binary_cross_entropy_with_logits(x: Tensor, target, reduction="mean") -> Tensor:
    _check_reduction(reduction, "binary_cross_entropy_with_logits")
    return BCEWithLogitsFn.apply(x, _same_shape("binary_cross_entropy_with_logits", x, target),
                               reduction=reduction)


def multi_margin_loss(input: Tensor, target, p=1, margin=1, weight=None, reduction="mean") -> Tensor:
    """The multiclass SVM loss (CS231n's) of scores (N, C) at class indices (N,); see
    :class:`MultiMarginLossFn`. A 1-D input (C,) with a single target is one sample.
    ``weight`` (C,) scales each sample's loss by the weight of its correct class."""
    _check_reduction(reduction, "multi_margin_loss")
    if p not in (1, 2):
        raise ValueError(f"multi_margin_loss: only p == 1 and p == 2 are supported, got p={p!r}")
    target = target if isinstance(target, Tensor) else Tensor(target)
    one_sample = input.ndim == 1
    if one_sample:
        input, target = input.reshape(1, -1), target.reshape(1)
    _check_class_targets("multi_margin_loss", input, target.array)
    if weight is not None:
        weight = weight if isinstance(weight, Tensor) else Tensor(weight, dtype=input.dtype)
        if tuple(weight.shape) != (input.shape[1],):
            raise ValueError(f"multi_margin_loss: weight should have one value per class, shape "
                             f"({input.shape[1]},), got {shape_str(weight.shape)}")
        weight = weight.detach()                                  # a constant, as in PyTorch
    loss = MultiMarginLossFn.apply(input, target, weight, p=int(p), margin=float(margin),
                                   reduction=reduction)
    return loss.reshape(()) if one_sample and reduction == "none" else loss
