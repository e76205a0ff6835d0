"""prepare / calibrate (post-training) and prepare_qat (quantization-aware training).

Both turn a float model into a *prepared* one: the fused layers of the model
(:mod:`.fuse`), each Conv2d / Linear wrapped in a :class:`QuantLayer` that owns

* ``weight_fake_quant`` — an observer of the weight (per-channel symmetric
  int8 by default) and the fake quantization it drives, and
* ``activation_post_process`` — an observer of the layer's output (after
  its ReLU, if fused) and its fake quantization (uint8, affine),

and a :class:`QuantStub` in front that observes (and fake-quantizes) the input.

Post-training (``prepare``): observers on, fake quantization off — run some
training images through (:func:`calibrate`) and the observers learn the
ranges. Quantization-aware (``prepare_qat``): both on, so the loss is the
quantized network's loss; the straight-through estimator passes gradients
through the rounding. BatchNorm is *not* folded for QAT: the layer keeps its
BN and trains it in the way Krishnamoorthi (2018) and PyTorch's ``ConvBn2d``
do — the weight is scaled by gamma / sqrt(running_var + eps) *before* fake
quantization, so the network trains against the very weights the folded int8
layer will have, and the output is divided back before BN normalises with
the batch's statistics. :class:`QATSchedule` (a ``train.Callback``) freezes
the BN statistics after one epoch and the observers after another.

Then :func:`minicnn.quant.convert` makes the integer model.
"""
from __future__ import annotations

import copy

from .. import functional as F
from .. import nn
from ..autograd.tensor import Tensor, no_grad
from ..train.loop import Callback
from .fuse import ConvReLU2d, LinearReLU, QuantError, FusedReLU, flatten_layers, fuse
from .observers import (MinMaxObserver, MovingAverageMinMaxObserver, ObserverError,
                        PerChannelMinMaxObserver, PercentileObserver)

SUPPORTED = (nn.Conv2d, nn.Linear, ConvReLU2d, LinearReLU, nn.MaxPool2d, nn.Flatten, nn.Dropout)


class FakeQuantize(nn.Module):
    """An observer plus the fake quantization it parameterises (``torch.ao.quantization.FakeQuantize``).

    ``observer_enabled`` / ``fake_quant_enabled`` switch the two halves
    (``enable_observer()``, ``disable_observer()``, ...): calibration observes
    only, QAT does both (observing in training mode only), and a frozen
    observer keeps its qparams.
    """

    def __init__(self, observer):
        super().__init__()
        self.observer = observer
        self.observer_enabled = True
        self.fake_quant_enabled = False

    def enable_observer(self, flag=True):
        self.observer_enabled = flag
        return self

    def disable_observer(self):
        return self.enable_observer(False)

    def enable_fake_quant(self, flag=True):
        self.fake_quant_enabled = flag
        return self

    def disable_fake_quant(self):
        return self.enable_fake_quant(False)

    def calculate_qparams(self):
        return self.observer.calculate_qparams()

    def forward(self, x):
        # calibration (fake quant off) observes what it is shown; QAT observes training batches
        # only, so evaluating on validation images never moves the scales
        if self.observer_enabled and (self.training or not self.fake_quant_enabled):
            self.observer(x.detach())
        if not self.fake_quant_enabled:
            return x
        scale, zp = self.observer.calculate_qparams()
        obs = self.observer
        if isinstance(obs, PerChannelMinMaxObserver):
            return F.fake_quantize_per_channel_affine(x, scale, zp, obs.ch_axis, obs.quant_min, obs.quant_max)
        return F.fake_quantize_per_tensor_affine(x, scale, zp, obs.quant_min, obs.quant_max)

    def extra_repr(self):
        return (f"{type(self.observer).__name__}, observer_enabled={self.observer_enabled}, "
                f"fake_quant_enabled={self.fake_quant_enabled}")


class QuantStub(nn.Module):
    """Marks where floats become uint8 codes: observes (and fake-quantizes) the model's input."""

    def __init__(self, fake_quant):
        super().__init__()
        self.activation_post_process = fake_quant

    def forward(self, x):
        return self.activation_post_process(x)


class QuantLayer(nn.Module):
    """A Conv2d or Linear (+ optional BatchNorm, + optional ReLU) with weight and output fake-quant."""

    fuse_children = False        # forward computes with self.layer's weight: mc.fuse leaves it whole

    def __init__(self, layer, weight_fake_quant, activation_post_process, bn=None, relu=False, name=""):
        super().__init__()
        self.layer, self.bn, self.relu, self.name = layer, bn, relu, name
        self.weight_fake_quant = weight_fake_quant
        self.activation_post_process = activation_post_process
        self.bn_frozen = False           # True: BN uses (and keeps) its running statistics

    def _op(self, x, w, b):
        m = self.layer
        if isinstance(m, nn.Conv2d):
            return F.conv2d(x, w, b, m.stride, m.padding, m.dilation, m.groups)
        return F.linear(x, w, b)

    def forward(self, x):
        m, bn = self.layer, self.bn
        if bn is None:
            y = self._op(x, self.weight_fake_quant(m.weight), m.bias)
        else:
            # PyTorch's ConvBn2d: fake-quantize the BN-scaled weight, divide the scale back out,
            # then BatchNorm with batch statistics (training) or running ones (eval / frozen)
            shape = (-1,) + (1,) * (m.weight.ndim - 1)
            running_std = (bn.running_var.detach() + bn.eps).sqrt()
            factor = bn.weight / running_std                       # (C,)
            w_q = self.weight_fake_quant(m.weight * factor.reshape(shape))
            y = self._op(x, w_q, None)
            y = y / factor.reshape((1, -1) + (1,) * (y.ndim - 2))
            if m.bias is not None:
                y = y + m.bias.reshape((1, -1) + (1,) * (y.ndim - 2))
            use_batch = self.training and not self.bn_frozen
            if use_batch and bn.num_batches_tracked is not None:
                bn.num_batches_tracked.array = bn.num_batches_tracked.array + 1
            y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, use_batch,
                             bn.momentum, bn.eps)
        if self.relu:
            y = F.relu(y)
        return self.activation_post_process(y)

    def folded_weight_and_bias(self):
        """(W, b) of the float layer the int8 one will be: BN folded with its running statistics."""
        from .fuse import fold_bn
        m = fold_bn(self.layer, self.bn) if self.bn is not None else self.layer
        return m.weight, m.bias

    def extra_repr(self):
        return f"name={self.name!r}, relu={self.relu}, bn={'yes' if self.bn is not None else 'no'}"


class QuantPrepared(nn.Sequential):
    """A prepared model: QuantStub, then the fused layers with their fake-quant modules."""

    def fake_quant_modules(self):
        return [m for m in self.modules() if isinstance(m, FakeQuantize)]

    def quant_layers(self):
        return [m for m in self.modules() if isinstance(m, QuantLayer)]


def _activation_observer(observer):
    if isinstance(observer, str):
        kinds = {"minmax": MinMaxObserver, "moving": MovingAverageMinMaxObserver,
                 "percentile": PercentileObserver}
        if observer not in kinds:
            raise ValueError(f"observer must be one of {', '.join(kinds)}, got {observer!r}")
        return kinds[observer](dtype="quint8", qscheme="per_tensor_affine")
    return observer()


def _weight_observer(per_channel):
    if per_channel:
        return PerChannelMinMaxObserver(ch_axis=0, dtype="qint8", qscheme="per_channel_symmetric")
    return MinMaxObserver(dtype="qint8", qscheme="per_tensor_symmetric")


def _check_supported(model):
    """Every leaf must be a layer the integer path has: else an error naming it."""
    if not isinstance(model, nn.Sequential):
        raise QuantError(f"minicnn.quant works on nn.Sequential models; {type(model).__name__} has its own "
                         "forward (e.g. residual additions), which needs a quantized add this package "
                         "does not have. Export it to ONNX in float32 instead.")
    layers = flatten_layers(model)
    for idx, (name, m) in enumerate(layers):
        ok = isinstance(m, SUPPORTED + (nn.ReLU, nn.BatchNorm2d, nn.BatchNorm1d, nn.Identity))
        prev = layers[idx - 1][1] if idx else None
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and not isinstance(prev, (nn.Conv2d, nn.Linear)):
            ok = False
        if isinstance(m, nn.ReLU) and not isinstance(prev, (nn.Conv2d, nn.Linear, nn.BatchNorm2d,
                                                          nn.BatchNorm1d)):
            ok = False
        if not ok:
            raise QuantError(f"layer {name!r} ({type(m).__name__}) is not supported by minicnn.quant: the integer "
                             "path has Conv2d and Linear (each optionally followed by BatchNorm and ReLU), "
                             "MaxPool2d, Flatten and Dropout")


def _build(model, observer, per_channel, qat, averaging_constant=0.01):
    _check_supported(model)
    model = copy.deepcopy(model)           # the float model stays as it was
    fused, names = fuse(model, fold_batchnorm=not qat)
    if qat:      # keep BN modules: find them again in the original layer list
        bns = {n: m for n, m in flatten_layers(model) if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d))}
    layers = []

    def act():
        if qat:
            obs = MovingAverageMinMaxObserver(averaging_constant, dtype="quint8", qscheme="per_tensor_affine")
        else:
            obs = _activation_observer(observer)
        return FakeQuantize(obs).enable_fake_quant(qat)

    layers.append(QuantStub(act()))
    for m, name in zip(fused, names):
        if isinstance(m, (nn.Conv2d, nn.Linear, FusedReLU)):
            relu = isinstance(m, FusedReLU)
            base = m.layer if relu else m
            bn = None
            if qat:
                bn_names = [p for p in name.split("+") if p in bns]
                bn = bns[bn_names[0]] if bn_names else None
            wfq = FakeQuantize(_weight_observer(per_channel)).enable_fake_quant(qat)
            layers.append(QuantLayer(base, wfq, act(), bn=bn, relu=relu, name=name))
        else:
            layers.append(m)
    prepared = QuantPrepared(*layers)
    prepared.train(qat)
    if not qat:
        prepared.eval()
    return prepared


def prepare(model, observer="minmax", per_channel=True):
    """Post-training: a fused copy of ``model`` (BN folded) with observers on every tensor to quantize.

    ``observer``: ``"minmax"`` | ``"moving"`` | ``"percentile"`` (activations);
    weights use a per-channel (``per_channel=True``) or per-tensor symmetric
    int8 MinMax observer. Run :func:`calibrate`, then ``quant.convert``.
    """
    return _build(model, observer, per_channel, qat=False)


def prepare_qat(model, per_channel=True, averaging_constant=0.01):
    """Quantization-aware: a copy of ``model`` with fake quantization on weights and activations (in train mode)."""
    prepared = _build(model, None, per_channel, qat=True, averaging_constant=averaging_constant)
    prepared.train()
    return prepared


def calibrate(prepared, batches, max_images=None):
    """Run float batches through a prepared model in eval mode; return how many images it saw.

    ``batches``: an iterable of arrays, tensors or ``(x, y)`` pairs (a
    DataLoader). Stops after ``max_images`` images. No data at all is an error.
    """
    if not isinstance(prepared, QuantPrepared):
        raise TypeError(f"calibrate: expected a model from quant.prepare, got {type(prepared).__name__}")
    prepared.eval()
    seen = 0
    with no_grad():
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x if isinstance(x, Tensor) else Tensor(x)
            if max_images is not None:
                if seen >= max_images:
                    break
                if seen + len(x) > max_images:
                    x = x[: max_images - seen]
            prepared(x)
            seen += len(x)
    if seen == 0:
        raise ObserverError("calibrate: no calibration data (the batches were empty); the observers need "
                            "at least one batch of training images")
    return seen


def freeze_bn_stats(prepared, flag=True):
    """Make every QAT layer's BatchNorm use (and no longer update) its running statistics."""
    for m in prepared.modules():
        if isinstance(m, QuantLayer):
            m.bn_frozen = flag


def freeze_observers(prepared, flag=True):
    """Stop every observer: the scales and zero points stay as they are."""
    for m in prepared.modules():
        if isinstance(m, FakeQuantize):
            m.enable_observer(not flag)


class QATSchedule(Callback):
    """The QAT recipe as a ``train.fit`` callback: at the start of epoch ``freeze_bn_epoch``
    (0-based) freeze the BN statistics; at the start of ``freeze_observer_epoch`` freeze the
    observers. ``None`` never freezes."""

    def __init__(self, freeze_bn_epoch=1, freeze_observer_epoch=2, log=None):
        self.freeze_bn_epoch, self.freeze_observer_epoch, self.log = freeze_bn_epoch, freeze_observer_epoch, log

    def on_epoch_begin(self, epoch, model):
        if self.freeze_bn_epoch is not None and epoch >= self.freeze_bn_epoch:
            freeze_bn_stats(model)
            if self.log and epoch == self.freeze_bn_epoch:
                self.log(f"QAT: BatchNorm statistics frozen from epoch {epoch + 1}")
        if self.freeze_observer_epoch is not None and epoch >= self.freeze_observer_epoch:
            freeze_observers(model)
            if self.log and epoch == self.freeze_observer_epoch:
                self.log(f"QAT: observers frozen from epoch {epoch + 1}")

    def on_epoch_end(self, epoch, model, logs):
        pass


__all__ = ["FakeQuantize", "QuantStub", "QuantLayer", "QuantPrepared", "prepare", "prepare_qat",
           "calibrate", "freeze_bn_stats", "freeze_observers", "QATSchedule"]
