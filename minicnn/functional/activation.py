"""Activation functions, each a Function with its derivative beside it.

Numerical stability matters for the ones built on ``exp``: sigmoid splits on
the sign of x so ``exp`` only ever sees non-positive numbers, softplus uses
``logaddexp``, and softmax subtracts the row maximum first (it does not change
the result, since softmax(x) = softmax(x - c), but keeps ``exp`` from overflowing).

``backward_graph`` (``create_graph=True``) writes each derivative with Tensor
operations on the input, recomputing the activation as a Function (a
sigmoid's derivative s(1 - s) needs s = SigmoidFn.apply(x), itself
differentiable). ReLU-like masks and slopes are constants: their derivative
is zero almost everywhere.
"""
from __future__ import annotations

import math

from ..backend import current
from ..autograd.tensor import Function, Tensor
from .helpers import stable_sigmoid, stable_softplus
from .math import constant


class ReLUFn(Function):
    """y = max(x, 0).   dy/dx = 0 where x <= 0, else 1.

    NaN, as PyTorch: relu(nan) = nan (``maximum`` propagates it), and the
    gradient passes where ``not x <= 0`` — so at a NaN too (``nan <= 0`` is
    false), which keeps the NaN's trace in the backward instead of hiding it.
    """

    def forward(self, x):
        fast = current.kernels.relu_forward  # numba, CUDA: one pass (kernels/contract.py)
        if fast is not None:
            y, passes = fast(x, need_mask=bool(self.needs_input_grad))
            self.save_for_backward(passes)
            return y
        self.save_for_backward(~(x <= 0))
        return current.xp.maximum(x, 0)      # not x * passes: -inf * 0 would be NaN

    def backward(self, gy):
        passes, = self.saved_tensors         # (bool, x's shape)
        fast = current.kernels.relu_backward
        return gy * passes if fast is None else fast(gy, passes)

    def backward_graph(self, gy):
        positive, = self.saved_tensors
        return gy * constant(positive, gy)


class LeakyReLUFn(Function):
    """y = x if x > 0 else a*x.   dy/dx = 1 or a."""

    def forward(self, x, negative_slope):
        slope = current.xp.where(x > 0, x.dtype.type(1), x.dtype.type(negative_slope))
        self.save_for_backward(slope)
        return x * slope

    def backward(self, gy):
        slope, = self.saved_tensors
        return gy * slope

    def backward_graph(self, gy):
        slope, = self.saved_tensors
        return gy * constant(slope, gy)


class SigmoidFn(Function):
    """y = 1 / (1 + e^-x).   dy/dx = y (1 - y)."""

    def forward(self, x):
        y = stable_sigmoid(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved_tensors
        return gy * y * (1 - y)

    def backward_graph(self, gy):
        s = SigmoidFn.apply(self.inputs[0])
        return gy * s * (1 - s)


class TanhFn(Function):
    """y = tanh x.   dy/dx = 1 - y^2."""

    def forward(self, x):
        y = current.xp.tanh(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved_tensors
        return gy * (1 - y * y)

    def backward_graph(self, gy):
        t = TanhFn.apply(self.inputs[0])
        return gy * (1 - t * t)


class SiLUFn(Function):
    """Swish / SiLU: y = x * sigmoid(x).   dy/dx = s + x s (1 - s), s = sigmoid(x)."""

    def forward(self, x):
        s = stable_sigmoid(x)
        self.save_for_backward(x, s)
        return x * s

    def backward(self, gy):
        x, s = self.saved_tensors
        return gy * (s + x * s * (1 - s))

    def backward_graph(self, gy):
        x, = self.inputs
        s = SigmoidFn.apply(x)
        return gy * (s + x * s * (1 - s))


class MishFn(Function):
    """y = x * tanh(softplus(x)).

    dy/dx = t + x * (1 - t^2) * sigmoid(x), with t = tanh(softplus(x)),
    because d softplus / dx = sigmoid(x).
    """

    def forward(self, x):
        t = current.xp.tanh(stable_softplus(x))
        self.save_for_backward(x, t)
        return x * t

    def backward(self, gy):
        x, t = self.saved_tensors
        return gy * (t + x * (1 - t * t) * stable_sigmoid(x))

    def backward_graph(self, gy):
        x, = self.inputs
        t = TanhFn.apply(SoftplusFn.apply(x))
        return gy * (t + x * (1 - t * t) * SigmoidFn.apply(x))


class GELUFn(Function):
    """y = x * Phi(x), Phi the standard normal CDF (``approximate='none'``), or
    the tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    Exact: dy/dx = Phi(x) + x * phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi).
    """

    def forward(self, x, approximate):
        xp = current.xp
        self.approximate = approximate
        if approximate == "tanh":
            c = x.dtype.type(math.sqrt(2 / math.pi))
            t = xp.tanh(c * (x + 0.044715 * x ** 3))
            self.save_for_backward(x, t)
            return 0.5 * x * (1 + t)
        cdf = 0.5 * (1 + current.kernels.erf(x / x.dtype.type(math.sqrt(2))))
        self.save_for_backward(x, cdf)
        return x * cdf

    def backward(self, gy):
        xp = current.xp
        if self.approximate == "tanh":
            x, t = self.saved_tensors
            c = x.dtype.type(math.sqrt(2 / math.pi))
            du = c * (1 + 3 * 0.044715 * x * x)
            return gy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)
        x, cdf = self.saved_tensors
        pdf = xp.exp(-0.5 * x * x) / x.dtype.type(math.sqrt(2 * math.pi))
        return gy * (cdf + x * pdf)

    def backward_graph(self, gy):
        x, = self.inputs
        if self.approximate == "tanh":
            c = math.sqrt(2 / math.pi)
            t = TanhFn.apply(c * (x + 0.044715 * x ** 3))
            du = c * (1 + 3 * 0.044715 * x * x)
            return gy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)
        return gy * (NormalCdfFn.apply(x) + x * normal_pdf(x))


class NormalCdfFn(Function):
    """y = Phi(x), the standard normal CDF.   dy/dx = phi(x) = exp(-x^2/2) / sqrt(2 pi).

    The exact GELU's derivative needs Phi as a Function of its own, so that
    the gradient of GELU (``create_graph=True``) can be differentiated again.
    """

    def forward(self, x):
        self.save_for_backward(x)
        return 0.5 * (1 + current.kernels.erf(x / x.dtype.type(math.sqrt(2))))

    def backward(self, gy):
        x, = self.saved_tensors
        return gy * current.xp.exp(-0.5 * x * x) / x.dtype.type(math.sqrt(2 * math.pi))

    def backward_graph(self, gy):
        return gy * normal_pdf(self.inputs[0])


def normal_pdf(x: Tensor) -> Tensor:
    """phi(x) = exp(-x^2/2) / sqrt(2 pi), with Tensor operations."""
    return (-0.5 * x * x).exp() / math.sqrt(2 * math.pi)


class SoftplusFn(Function):
    """y = ln(1 + e^x).   dy/dx = sigmoid(x)."""

    def forward(self, x):
        self.save_for_backward(x)
        return stable_softplus(x)

    def backward(self, gy):
        x, = self.saved_tensors
        return gy * stable_sigmoid(x)

    def backward_graph(self, gy):
        return gy * SigmoidFn.apply(self.inputs[0])


class SoftmaxFn(Function):
    """y_i = e^{x_i} / sum_j e^{x_j} along ``dim``.

    Jacobian dy_i/dx_k = y_i (delta_ik - y_k), so dx = y * (gy - sum(gy * y)).
    """

    def forward(self, x, dim):
        xp = current.xp
        self.dim = dim
        e = xp.exp(x - x.max(axis=dim, keepdims=True))
        y = e / e.sum(axis=dim, keepdims=True)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved_tensors
        return y * (gy - (gy * y).sum(axis=self.dim, keepdims=True))

    def backward_graph(self, gy):
        y = SoftmaxFn.apply(self.inputs[0], dim=self.dim)
        return y * (gy - (gy * y).sum(axis=self.dim, keepdims=True))


class LogSoftmaxFn(Function):
    """y_i = x_i - logsumexp(x) along ``dim`` (stable: shift by the max first).

    dx = gy - softmax(x) * sum(gy).
    """

    def forward(self, x, dim):
        xp = current.xp
        self.dim = dim
        shifted = x - x.max(axis=dim, keepdims=True)
        y = shifted - xp.log(xp.exp(shifted).sum(axis=dim, keepdims=True))
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        xp = current.xp
        y, = self.saved_tensors
        return gy - xp.exp(y) * gy.sum(axis=self.dim, keepdims=True)

    def backward_graph(self, gy):
        p = SoftmaxFn.apply(self.inputs[0], dim=self.dim)          # softmax = exp(log_softmax)
        return gy - p * gy.sum(axis=self.dim, keepdims=True)


# -- functional spellings (PyTorch's names) -------------------------------------
def relu(x: Tensor) -> Tensor:
    return ReLUFn.apply(x)


def leaky_relu(x: Tensor, negative_slope=0.01) -> Tensor:
    return LeakyReLUFn.apply(x, negative_slope=negative_slope)


def sigmoid(x: Tensor) -> Tensor:
    return SigmoidFn.apply(x)


def tanh(x: Tensor) -> Tensor:
    return TanhFn.apply(x)


def silu(x: Tensor) -> Tensor:
    return SiLUFn.apply(x)


swish = silu


def mish(x: Tensor) -> Tensor:
    return MishFn.apply(x)


def gelu(x: Tensor, approximate="none") -> Tensor:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return GELUFn.apply(x, approximate=approximate)


def softplus(x: Tensor) -> Tensor:
    return SoftplusFn.apply(x)


def _dim(x, dim, op):
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"{op}: dim {dim} is out of range for a tensor with {x.ndim} dimensions")
    return dim % x.ndim


def softmax(x: Tensor, dim=-1) -> Tensor:
    return SoftmaxFn.apply(x, dim=_dim(x, dim, "softmax"))


def log_softmax(x: Tensor, dim=-1) -> Tensor:
    return LogSoftmaxFn.apply(x, dim=_dim(x, dim, "log_softmax"))
