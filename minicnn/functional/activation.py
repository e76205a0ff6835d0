"""Activation functions, each a Function with its derivative beside it.

Numerical stability matters for the ones built on ``exp``: sigmoid splits on
the sign of x so ``exp`` only ever sees non-positive numbers, softplus uses
``logaddexp``, and softmax subtracts the row maximum first (it does not change
the result, since softmax(x) = softmax(x - c), but keeps ``exp`` from overflowing).
"""
from __future__ import annotations

import math

from ..backend import current
from ..tensor import Function, Tensor


def _sigmoid(x):
    """Stable 1 / (1 + e^-x): e^-|x| never overflows."""
    xp = current.xp
    z = xp.exp(-xp.abs(x))                       # in (0, 1]
    return xp.where(x >= 0, 1 / (1 + z), z / (1 + z))


def _softplus(x):
    """Stable ln(1 + e^x)."""
    return current.xp.logaddexp(0, x)


class ReLU(Function):
    """y = max(x, 0).   dy/dx = 1 where x > 0, else 0."""

    def forward(self, x):
        self.positive = x > 0
        return current.xp.maximum(x, 0)      # not x * positive: -inf * 0 would be NaN

    def backward(self, gy):
        return gy * self.positive


class LeakyReLU(Function):
    """y = x if x > 0 else a*x.   dy/dx = 1 or a."""

    def forward(self, x, negative_slope):
        self.slope = current.xp.where(x > 0, x.dtype.type(1), x.dtype.type(negative_slope))
        return x * self.slope

    def backward(self, gy):
        return gy * self.slope


class Sigmoid(Function):
    """y = 1 / (1 + e^-x).   dy/dx = y (1 - y)."""

    def forward(self, x):
        self.y = _sigmoid(x)
        return self.y

    def backward(self, gy):
        return gy * self.y * (1 - self.y)


class Tanh(Function):
    """y = tanh x.   dy/dx = 1 - y^2."""

    def forward(self, x):
        self.y = current.xp.tanh(x)
        return self.y

    def backward(self, gy):
        return gy * (1 - self.y * self.y)


class SiLU(Function):
    """Swish / SiLU: y = x * sigmoid(x).   dy/dx = s + x s (1 - s), s = sigmoid(x)."""

    def forward(self, x):
        self.x, self.s = x, _sigmoid(x)
        return x * self.s

    def backward(self, gy):
        s = self.s
        return gy * (s + self.x * s * (1 - s))


class Mish(Function):
    """y = x * tanh(softplus(x)).

    dy/dx = t + x * (1 - t^2) * sigmoid(x), with t = tanh(softplus(x)),
    because d softplus / dx = sigmoid(x).
    """

    def forward(self, x):
        self.x = x
        self.t = current.xp.tanh(_softplus(x))
        return x * self.t

    def backward(self, gy):
        t = self.t
        return gy * (t + self.x * (1 - t * t) * _sigmoid(self.x))


class GELU(Function):
    """y = x * Phi(x), Phi the standard normal CDF (``approximate='none'``), or
    the tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    Exact: dy/dx = Phi(x) + x * phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi).
    """

    def forward(self, x, approximate):
        xp = current.xp
        self.x, self.approximate = x, approximate
        if approximate == "tanh":
            c = x.dtype.type(math.sqrt(2 / math.pi))
            self.u = c * (x + 0.044715 * x ** 3)
            self.t = xp.tanh(self.u)
            return 0.5 * x * (1 + self.t)
        self.cdf = 0.5 * (1 + current.kernels.erf(x / x.dtype.type(math.sqrt(2))))
        return x * self.cdf

    def backward(self, gy):
        xp, x = current.xp, self.x
        if self.approximate == "tanh":
            c = x.dtype.type(math.sqrt(2 / math.pi))
            du = c * (1 + 3 * 0.044715 * x * x)
            return gy * (0.5 * (1 + self.t) + 0.5 * x * (1 - self.t * self.t) * du)
        pdf = xp.exp(-0.5 * x * x) / x.dtype.type(math.sqrt(2 * math.pi))
        return gy * (self.cdf + x * pdf)


class Softplus(Function):
    """y = ln(1 + e^x).   dy/dx = sigmoid(x)."""

    def forward(self, x):
        self.x = x
        return _softplus(x)

    def backward(self, gy):
        return gy * _sigmoid(self.x)


class Softmax(Function):
    """y_i = e^{x_i} / sum_j e^{x_j} along ``dim``.

    Jacobian dy_i/dx_k = y_i (delta_ik - y_k), so dx = y * (gy - sum(gy * y)).
    """

    def forward(self, x, dim):
        xp = current.xp
        self.dim = dim
        e = xp.exp(x - x.max(axis=dim, keepdims=True))
        self.y = e / e.sum(axis=dim, keepdims=True)
        return self.y

    def backward(self, gy):
        y = self.y
        return y * (gy - (gy * y).sum(axis=self.dim, keepdims=True))


class LogSoftmax(Function):
    """y_i = x_i - logsumexp(x) along ``dim`` (stable: shift by the max first).

    dx = gy - softmax(x) * sum(gy).
    """

    def forward(self, x, dim):
        xp = current.xp
        self.dim = dim
        shifted = x - x.max(axis=dim, keepdims=True)
        self.y = shifted - xp.log(xp.exp(shifted).sum(axis=dim, keepdims=True))
        return self.y

    def backward(self, gy):
        xp = current.xp
        return gy - xp.exp(self.y) * gy.sum(axis=self.dim, keepdims=True)


# -- functional spellings (PyTorch's names) -------------------------------------
def relu(x: Tensor) -> Tensor:
    return ReLU.apply(x)


def leaky_relu(x: Tensor, negative_slope=0.01) -> Tensor:
    return LeakyReLU.apply(x, negative_slope=negative_slope)


def sigmoid(x: Tensor) -> Tensor:
    return Sigmoid.apply(x)


def tanh(x: Tensor) -> Tensor:
    return Tanh.apply(x)


def silu(x: Tensor) -> Tensor:
    return SiLU.apply(x)


swish = silu


def mish(x: Tensor) -> Tensor:
    return Mish.apply(x)


def gelu(x: Tensor, approximate="none") -> Tensor:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return GELU.apply(x, approximate=approximate)


def softplus(x: Tensor) -> Tensor:
    return Softplus.apply(x)


def _dim(x, dim, op):
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"{op}: dim {dim} is out of range for a tensor with {x.ndim} dimensions")
    return dim % x.ndim


def softmax(x: Tensor, dim=-1) -> Tensor:
    return Softmax.apply(x, dim=_dim(x, dim, "softmax"))


def log_softmax(x: Tensor, dim=-1) -> Tensor:
    return LogSoftmax.apply(x, dim=_dim(x, dim, "log_softmax"))
