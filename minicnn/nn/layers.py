"""The layers: thin Modules that own parameters and call ``minicnn.functional``.

Parameter names, shapes and default initialisation are PyTorch's, so a
state_dict maps one-to-one between the two frameworks.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import functional as F
from ..autograd.tensor import Tensor
from ..kernels.geometry import pair
from . import init
from .module import Module, Parameter


def _uniform_parameter(shape, bound):
    p = Parameter(np.zeros(shape, dtype=np.float32))
    return init.uniform_(p, -bound, bound)


def init_bound(fan_in):
    """PyTorch's default bound 1/sqrt(fan_in) for a layer's weight and bias; 0 when fan_in is 0
    (a layer with no inputs: empty weight, and a bias PyTorch leaves uninitialised — zeros here)."""
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0


def check_count(layer, name, value, minimum=0):
    """A size argument (channels, features): an int >= ``minimum``. PyTorch builds a layer with
    0 inputs or outputs (an empty weight), and refuses a negative size; so do we, by name."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{layer}: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{layer}: {name} must be >= {minimum}, got {value}")
    return int(value)


def check_pool_options(layer, kernel_size, stride, padding):
    """The window of a pooling layer, checked when it is built (the same checks, and messages,
    its forward would give at the first call — PyTorch's forward refuses these too): kernel_size
    and stride >= 1, padding >= 0 and at most half the window. Returns ``stride`` (None: the
    kernel size, PyTorch's default)."""
    k = pair(kernel_size, f"{layer}: kernel_size", 1)
    if stride is not None:
        pair(stride, f"{layer}: stride", 1)
    p = pair(padding, f"{layer}: padding", 0)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"{layer}: padding {p} must be at most half the kernel size {k} "
                         "(otherwise a window could hold nothing but padding)")
    return kernel_size if stride is None else stride


class Linear(Module):
    """y = x W^T + b.  weight (out_features, in_features), bias (out_features,).

    Default init (PyTorch): W, b ~ U(-1/sqrt(in_features), 1/sqrt(in_features)),
    i.e. ``kaiming_uniform_`` with a = sqrt(5).
    """

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.out_features = check_count("Linear", "out_features", out_features)
        self._create_parameters(check_count("Linear", "in_features", in_features), bias)

    def _create_parameters(self, in_features, bias):
        """weight and bias with PyTorch's initialisation (LazyLinear calls this at its first forward)."""
        self.in_features = in_features
        bound = init_bound(in_features)
        self.weight = _uniform_parameter((self.out_features, in_features), bound)
        self.bias = _uniform_parameter((self.out_features,), bound) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-D convolution. weight (out_channels, in_channels/groups, kh, kw), bias (out_channels,).

    Default init (PyTorch): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in_channels/groups*kh*kw.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True):
        super().__init__()
        self._set_options(out_channels, kernel_size, stride, padding, dilation, groups)
        self._create_parameters(check_count("Conv2d", "in_channels", in_channels), bias)

    def _set_options(self, out_channels, kernel_size, stride, padding, dilation, groups):
        layer = type(self).__name__
        self.out_channels = check_count(layer, "out_channels", out_channels)
        if not isinstance(groups, numbers.Integral) or isinstance(groups, bool) or groups < 1:
            raise ValueError(f"{layer}: groups must be a positive int, got {groups!r}")
        self.kernel_size = pair(kernel_size, "Conv2d: kernel_size", 1)
        self.stride = pair(stride, "Conv2d: stride", 1)
        self.padding = pair(padding, "Conv2d: padding", 0)
        self.dilation = pair(dilation, "Conv2d: dilation", 1)
        self.groups = int(groups)

    def _create_parameters(self, in_channels, bias):
        """weight and bias with PyTorch's initialisation (LazyConv2d calls this at its first forward)."""
        out_channels, groups = self.out_channels, self.groups
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: groups={groups} must divide in_channels ({in_channels}) "
                             f"and out_channels ({out_channels})")
        self.in_channels = in_channels
        kh, kw = self.kernel_size
        fan_in = in_channels // groups * kh * kw
        bound = init_bound(fan_in)
        self.weight = _uniform_parameter((out_channels, in_channels // groups, kh, kw), bound)
        self.bias = _uniform_parameter((out_channels,), bound) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class LazyModuleMixin:
    """What LazyLinear and LazyConv2d share (PyTorch's ``torch.nn.modules.lazy.LazyModuleMixin``, in small).

    The layer is built without its input size; a forward pre-hook reads it from
    the first input (LazyConv2d: the channels ``x.shape[1]``; LazyLinear: the
    features ``x.shape[-1]``), creates the parameters exactly as the
    full layer would (same shapes, same initialisation), removes itself, and
    turns the module into that layer: ``type(m)`` becomes ``cls_to_become``
    (Conv2d or Linear), so from then on it *is* one — same ``repr``,
    ``state_dict``, fusion and summary.

    Until that first forward the layer has **no parameters**: ``parameters()``
    yields none of its weights, and ``state_dict()`` has no entries for it. So
    build the optimizer after one dummy forward (as d2l does)::

        net = nn.Sequential(nn.LazyConv2d(6, 5), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
        net(mc.tensor(np.zeros((1, 1, 28, 28), dtype=np.float32)))   # infers 1 channel, 3456 features
        optimizer = optim.SGD(net.parameters(), lr=0.1)

    An optimizer built before that would not hold the lazy layers' weights:
    they would stay at their initial values while the rest trains (and for a
    model of lazy layers only, the optimizer refuses an empty parameter list).
    Likewise ``load_state_dict`` needs the dummy forward first, and
    ``.double()`` / ``.to(dtype)`` before it sets the dtype the parameters
    will be created in.
    """

    cls_to_become = None

    def _lazy_init(self, bias):
        self._lazy_bias, self._lazy_dtype = bias, None
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)
        self._lazy_hook = self.register_forward_pre_hook(LazyModuleMixin._infer_parameters)

    def _infer_parameters(self, inputs):
        # a bad first input raises here and leaves the layer lazy, ready for a good one
        self._create_parameters(self._infer_size(inputs[0]), self._lazy_bias)
        self._lazy_hook.remove()
        if self._lazy_dtype is not None:
            super().to(self._lazy_dtype)
        self.__class__ = self.cls_to_become
        for name in ("_lazy_hook", "_lazy_bias", "_lazy_dtype"):
            del self.__dict__[name]

    def to(self, dtype):
        """Before the first forward: remember ``dtype`` for the parameters it will create."""
        self._lazy_dtype = dtype               # remembered for the parameters the first forward creates
        return super().to(dtype)


class LazyLinear(LazyModuleMixin, Linear):
    """``Linear`` whose ``in_features`` is read from the first input's last axis.

    ``LazyLinear(out_features, bias=True)``; after the first forward it is a
    ``Linear(in_features, out_features)`` (see :class:`LazyModuleMixin` for the
    optimizer: run a dummy forward first).
    """

    cls_to_become = Linear

    def __init__(self, out_features, bias=True):
        Module.__init__(self)
        self.out_features, self.in_features = check_count("LazyLinear", "out_features", out_features), 0
        self._lazy_init(bias)

    def _infer_size(self, x):
        return int(x.shape[-1])                    # Linear acts on the last axis

    def extra_repr(self):                          # as PyTorch: in_features=0 until the first forward
        return f"in_features=0, out_features={self.out_features}, bias={self._lazy_bias}"


class LazyConv2d(LazyModuleMixin, Conv2d):
    """``Conv2d`` whose ``in_channels`` is read from the first input (N, C, H, W).

    ``LazyConv2d(out_channels, kernel_size, stride=1, padding=0, dilation=1,
    groups=1, bias=True)``; after the first forward it is a ``Conv2d`` (see
    :class:`LazyModuleMixin` for the optimizer: run a dummy forward first).
    """

    cls_to_become = Conv2d

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True):
        Module.__init__(self)
        self._set_options(out_channels, kernel_size, stride, padding, dilation, groups)
        if out_channels % groups:
            raise ValueError(f"LazyConv2d: groups={groups} must divide out_channels ({out_channels})")
        self.in_channels = 0
        self._lazy_init(bias)

    def _infer_size(self, x):
        from ..functional.helpers import check_4d
        check_4d("LazyConv2d", x)
        return int(x.shape[1])

    def extra_repr(self):                          # as PyTorch: in_channels 0 until the first forward
        return super().extra_repr().replace(", bias=False", "") + ("" if self._lazy_bias else ", bias=False")


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        stride = check_pool_options("MaxPool2d", kernel_size, stride, padding)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True):
        super().__init__()
        stride = check_pool_options("AvgPool2d", kernel_size, stride, padding)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.count_include_pad = count_include_pad

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.count_include_pad)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class BatchNormBase(Module):
    """Shared by BatchNorm1d / BatchNorm2d: weight (gamma) = 1, bias (beta) = 0,
    buffers running_mean = 0, running_var = 1, num_batches_tracked = 0."""

    expected_ndim = None

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__()
        num_features = check_count(type(self).__name__, "num_features", num_features)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = Parameter(np.ones(num_features, dtype=np.float32)) if affine else None
        self.bias = Parameter(np.zeros(num_features, dtype=np.float32)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", Tensor(np.zeros(num_features, dtype=np.float32)))
            self.register_buffer("running_var", Tensor(np.ones(num_features, dtype=np.float32)))
            self.register_buffer("num_batches_tracked", Tensor(np.array(0, dtype=np.int64)))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def forward(self, x):
        if x.ndim != self.expected_ndim:
            layout = "(N, C)" if self.expected_ndim == 2 else "(N, C, H, W)"
            raise ValueError(f"{type(self).__name__}: expected a {self.expected_ndim}-D input {layout}, "
                             f"got shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}): input has {x.shape[1]} "
                             f"channels, expected {self.num_features}")
        use_batch_stats = self.training or self.running_mean is None
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.array = self.num_batches_tracked.array + 1
        return F.batch_norm(x, self.running_mean if self.track_running_stats else None,
                            self.running_var if self.track_running_stats else None,
                            self.weight, self.bias, use_batch_stats, self.momentum, self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(BatchNormBase):
    """Batch norm over (N, C) features: statistics per feature over the batch."""
    expected_ndim = 2


class BatchNorm2d(BatchNormBase):
    """Batch norm over (N, C, H, W): statistics per channel over N, H and W."""
    expected_ndim = 4


class LayerNorm(Module):
    """Layer norm over the last ``len(normalized_shape)`` axes of each sample; see F.layer_norm.

    weight (gamma) = 1 and bias (beta) = 0, both of shape ``normalized_shape``
    (``elementwise_affine=False``: neither; ``bias=False``: no beta). No
    running statistics: training and evaluation compute the same thing.
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps, self.elementwise_affine = shape, eps, elementwise_affine
        self.weight = Parameter(np.ones(shape, dtype=np.float32)) if elementwise_affine else None
        self.bias = Parameter(np.zeros(shape, dtype=np.float32)) if elementwise_affine and bias else None

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class GroupNorm(Module):
    """Group norm: ``num_channels`` split into ``num_groups`` groups, each standardised per
    sample; see F.group_norm. weight = 1, bias = 0, shape (num_channels,) (``affine=False``: none).
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True):
        super().__init__()
        from ..functional.norm import check_groups
        check_groups("GroupNorm", num_groups, num_channels)
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        self.weight = Parameter(np.ones(num_channels, dtype=np.float32)) if affine else None
        self.bias = Parameter(np.zeros(num_channels, dtype=np.float32)) if affine else None

    def forward(self, x):
        if x.ndim >= 2 and x.shape[1] != self.num_channels:
            raise ValueError(f"GroupNorm({self.num_groups}, {self.num_channels}): input has "
                             f"{x.shape[1]} channels, expected {self.num_channels}")
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class Dropout(Module):
    """Inverted dropout with probability ``p``; the identity in eval mode."""

    def __init__(self, p=0.5):
        super().__init__()
        if not isinstance(p, numbers.Real) or isinstance(p, bool):
            raise TypeError(f"Dropout: p must be a number in [0, 1], got {p!r}")
        if not 0.0 <= p <= 1.0:                  # NaN too (PyTorch builds it; its forward refuses)
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class Flatten(Module):
    """Merge dims start_dim..end_dim (default: everything but the batch axis)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    def forward(self, x):
        return x


# -- activations -------------------------------------------------------------------
class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class LeakyReLU(Module):
    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class SiLU(Module):
    """Swish: x * sigmoid(x)."""

    def forward(self, x):
        return F.silu(x)


class Mish(Module):
    def forward(self, x):
        return F.mish(x)


class GELU(Module):
    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class Softmax(Module):
    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.softmax(x, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    def forward(self, x):
        return F.log_softmax(x, self.dim)


# -- losses -------------------------------------------------------------------------
class _Loss(Module):
    """The common base of the loss modules (PyTorch's ``_Loss``): they all hold ``reduction``.

    ``reduction`` says how the per-sample losses l_i become the result:
    ``"mean"`` (1/N · Σ_i l_i), ``"sum"`` (Σ_i l_i) or ``"none"`` (the l_i themselves).
    """

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction


class CrossEntropyLoss(_Loss):
    """l_i = -log softmax(logits_i)[target_i] (with optional label smoothing); see F.cross_entropy."""

    def __init__(self, label_smoothing=0.0, reduction="mean"):
        super().__init__(reduction)
        self.label_smoothing = label_smoothing

    def forward(self, logits, target):
        return F.cross_entropy(logits, target, self.label_smoothing, self.reduction)

    def extra_repr(self):
        return f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"


class NLLLoss(_Loss):
    """l_i = -log_probs_i[target_i]: cross-entropy for a model that ends in LogSoftmax."""

    def forward(self, log_probs, target):
        return F.nll_loss(log_probs, target, self.reduction)


class MSELoss(_Loss):
    """l_i = (x_i - target_i)², elementwise."""

    def forward(self, x, target):
        return F.mse_loss(x, target, self.reduction)


class SmoothL1Loss(_Loss):
    """l_i = 0.5 (x_i - t_i)² / beta where ``|x_i - t_i| < beta``, else ``|x_i - t_i| - 0.5 beta``."""

    def __init__(self, reduction="mean", beta=1.0):
        super().__init__(reduction)
        self.beta = beta

    def forward(self, x, target):
        return F.smooth_l1_loss(x, target, self.reduction, self.beta)


class BCEWithLogitsLoss(_Loss):
    """l_i = -[t_i log σ(x_i) + (1 - t_i) log(1 - σ(x_i))], computed stably from the logits x."""

    def forward(self, x, target):
        return F.binary_cross_entropy_with_logits(x, target, self.reduction)


class MultiMarginLoss(_Loss):
    """The multiclass SVM loss (CS231n): l_i = 1/C Σ_{j≠y_i} w[y_i] max(0, margin - x_i[y_i] + x_i[j])^p."""

    def __init__(self, p=1, margin=1, weight=None, reduction="mean"):
        super().__init__(reduction)
        if p not in (1, 2):
            raise ValueError(f"MultiMarginLoss: only p == 1 and p == 2 are supported, got p={p!r}")
        self.p, self.margin = p, margin
        if weight is not None and not isinstance(weight, Tensor):
            weight = Tensor(np.asarray(weight, dtype=np.float32))
        self.register_buffer("weight", weight)      # per-class weights (C,), saved with the model

    def forward(self, x, target):
        return F.multi_margin_loss(x, target, self.p, self.margin, self.weight, self.reduction)

    def extra_repr(self):
        return f"p={self.p}, margin={self.margin}, reduction={self.reduction!r}"


class Normalize(Module):
    """Per-channel standardisation inside the model: ``y[:, c] = (x[:, c] - mean[c]) / std[c]``.

    No parameters; ``mean`` and ``std`` are buffers of shape (C,) (saved in
    the state dict). Put it first in a model — ``nn.Sequential(nn.Normalize(m, s), net)``
    or ``models.get_model(name, normalize=(m, s))`` — and the model takes
    images in **pixel units [0, 1]**. That is the scale on which an attack's
    ε and an attribution's baseline are meant: ε = 0.1 means "each pixel may
    change by 0.1 of the full black-to-white range", whatever normalisation the
    network was trained with. (Normalising in the data pipeline instead would
    silently turn ε = 0.1 into 0.1 · std ≈ 0.03 of the pixel range on MNIST.)

    Backward: ∂y/∂x[:, c] = 1 / std[c] (an affine map, built from the
    framework's differentiable operations).
    """

    def __init__(self, mean, std):
        super().__init__()
        mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        std = np.atleast_1d(np.asarray(std, dtype=np.float64))
        if mean.ndim != 1 or std.ndim != 1:
            raise ValueError("Normalize: mean and std must be numbers or 1-D sequences (one value per "
                             f"channel), got shapes {mean.shape} and {std.shape}")
        if len(mean) != len(std) and 1 not in (len(mean), len(std)):
            raise ValueError(f"Normalize: mean has {len(mean)} values and std {len(std)}; give one per "
                             "channel (or one number for all)")
        if np.any(std <= 0) or not np.all(np.isfinite(std)) or not np.all(np.isfinite(mean)):
            raise ValueError(f"Normalize: std must be positive and finite, got {std.tolist()}")
        n = max(len(mean), len(std))
        self.register_buffer("mean", Tensor(np.broadcast_to(mean, (n,)).astype(np.float32)))
        self.register_buffer("std", Tensor(np.broadcast_to(std, (n,)).astype(np.float32)))

    def forward(self, x):
        c = self.mean.shape[0]
        if x.ndim != 4 or (c != 1 and x.shape[1] != c):
            raise ValueError(f"Normalize: expected input (N, {c}, H, W), got shape {tuple(x.shape)}")
        shape = (1, c, 1, 1)
        mean = self.mean.array.reshape(shape).astype(x.dtype)
        std = self.std.array.reshape(shape).astype(x.dtype)
        return (x - Tensor(mean, dtype=x.dtype)) / Tensor(std, dtype=x.dtype)

    def extra_repr(self):
        fmt = lambda t: ", ".join(f"{v:.4g}" for v in t.numpy().tolist())  # noqa: E731
        return f"mean=({fmt(self.mean)}), std=({fmt(self.std)})"
# -- architecture building blocks ---------------------------------------------------
class MixedPool2d(Module):
    """Mixed max-average pooling (Lee, Gallagher & Tu, 2016):

        y = alpha * max_pool2d(x) + (1 - alpha) * avg_pool2d(x),   alpha in [0, 1]

    alpha = 1 is max pooling, alpha = 0 average pooling. With ``learnable=True``
    ``alpha`` is a scalar ``Parameter`` (shape ``()``) trained with the rest of
    the network: dy/dalpha = max_pool2d(x) - avg_pool2d(x), and dy/dx is the
    alpha-weighted sum of the two poolings' gradients — both come from autograd
    over the existing ``F.max_pool2d`` / ``F.avg_pool2d`` / ``*`` / ``+``
    Functions (so an exporter that knows those knows this layer). Otherwise
    ``alpha`` is a buffer: saved with the model, never trained.

    Kept in [0, 1] by projection: each forward first clips ``alpha``'s value
    into [0, 1] (projected gradient descent — an optimizer step may overshoot,
    the next forward puts it back on the boundary, where its gradient still
    flows, so it can move inwards again).
    """

    def __init__(self, kernel_size, stride=None, padding=0, alpha=0.5, learnable=True):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"MixedPool2d: alpha must be in [0, 1], got {alpha}")
        stride = check_pool_options("MixedPool2d", kernel_size, stride, padding)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.learnable = learnable
        value = np.array(alpha, dtype=np.float32)
        if learnable:
            self.alpha = Parameter(value)
        else:
            self.register_buffer("alpha", Tensor(value))

    def forward(self, x):
        from ..backend import current
        alpha = self.alpha
        current.xp.clip(alpha.array, 0.0, 1.0, out=alpha.array)   # the projection onto [0, 1], in place
        mx = F.max_pool2d(x, self.kernel_size, self.stride, self.padding)
        av = F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)
        return alpha * mx + (1.0 - alpha) * av

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"alpha={float(np.asarray(self.alpha.numpy())):.3f}, learnable={self.learnable}")


class DepthwiseSeparableConv2d(Module):
    """MobileNet's factorised convolution: a depthwise k×k conv (``groups=in_channels``:
    each channel filtered on its own) then a 1×1 pointwise conv that mixes channels.

    Submodules ``depthwise`` = Conv2d(Cin, Cin, k, stride, padding, groups=Cin) and
    ``pointwise`` = Conv2d(Cin, Cout, 1). Costs per output pixel, against a
    standard k×k conv's Cin·Cout·k² multiply-accumulates:

        depthwise Cin·k²  +  pointwise Cin·Cout   =  a fraction 1/Cout + 1/k² of it

    (the same ratio for the weights). Nothing sits between the two convs here;
    a model adds BatchNorm / ReLU after the block (or between, by using the
    two convs itself).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.depthwise = Conv2d(in_channels, in_channels, kernel_size, stride=stride, padding=padding,
                                groups=in_channels, bias=bias)
        self.pointwise = Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))
