"""``mc.fuse(model)``: the same model with runs of layers replaced by one fused module.

A model runs layer by layer, exactly as written: ``Sequential(a, b, c)(x)`` is
``c(b(a(x)))``, and a debugger, a hook or a print shows every layer. Some runs
of layers compute faster as one Function than as three. The reference CNN's
``Conv2d -> ReLU -> MaxPool2d`` is the one minicnn fuses:
:func:`minicnn.functional.conv2d_relu_max_pool2d` reads the convolution's
output, the largest array in the network, once instead of four times
(``functional/fused.py`` counts the passes). A single layer can also have a faster
algorithm of its own: a depthwise ``Conv2d`` (``groups = channels``, MobileNet's)
becomes an ``nn.DepthwiseConv2d`` computed without im2col, and any other
``Conv2d`` without groups an ``nn.ChunkedConv2d``, computed a few images at a time
so that each chunk's im2col columns stay in cache (numba). Fusing is a
transform you apply and can see::

    fast = mc.fuse(model)
    print(fast)      # ... (0): ConvReLUMaxPool2d(1, 8, kernel_size=(3, 3), ..., pool_kernel_size=2, pool_stride=2)

``train.fit`` applies it by default (``fit(..., fuse=False)`` or
``minicnn train --no-fuse`` trains layer by layer).

What :func:`fuse` returns
-------------------------
* A **new** model: every ``Sequential`` on the way to a fused run, and every
  module that holds such a Sequential, is copied (a shallow copy: a new object
  whose children dict is new, everything else the same objects). The original
  model is not changed: same modules, same ``repr``.
* **Shared** weights: the fused module holds the conv's ``weight`` and ``bias``
  Parameter objects themselves, and every module that is not fused (BatchNorm,
  Linear, ...) is the original object. Training the fused model trains the
  original's weights, BatchNorm's running statistics stay one set, and an
  optimizer built on ``model.parameters()`` updates both.
* The **same state_dict**: the fused module sits under the conv's name and
  holds ``weight`` / ``bias`` directly, and ReLU and MaxPool2d have no state,
  so ``fast.state_dict()`` has exactly the keys and arrays of
  ``model.state_dict()``; checkpoints load into either.
* A model with nothing to fuse comes back as **the same object** (``fuse(m) is m``).

When a run is fused
-------------------
Three consecutive children of a ``Sequential`` (at any depth: inside nested
Sequentials and inside your own Modules) that are exactly an ``nn.Conv2d``, an
``nn.ReLU`` and an ``nn.MaxPool2d`` (no subclasses), the pooling without
padding, and none of the three hooked. A hook is code looking at (or changing)
a layer — ``mc.summary``, Grad-CAM, pruning's masks, quantization observers —
and a fused layer's output (the ReLU's, say) is never made, so a hooked layer
is left as it is. Layers a custom ``forward`` calls one by one
(``self.pool(F.relu(self.conv(x)))``) are not in a Sequential and not fused.

A module that uses its children's weights and settings itself instead of calling
them (quantization-aware training's ``QuantLayer`` runs ``F.conv2d`` with its
``layer``'s weight) says so with a class attribute ``fuse_children = False``:
the walker leaves it and everything below it alone. (Swapping such a child
would not change what is computed, but it would copy the module, and flags a
callback sets on the original — ``bn_frozen`` — would no longer reach the copy.)

One walker, many patterns
-------------------------
:func:`fuse` takes ``patterns``: a list of ``(types, build)`` pairs. ``types`` is
a tuple of module classes; where consecutive children of a Sequential are
instances of them, ``build(*those_modules)`` returns the module that replaces
them (it takes the first child's name), or None to leave them alone. Patterns
are tried in order at each position, so list longer runs first.
``minicnn.quant.fuse`` uses this walker with its own patterns (Conv + BatchNorm
folding, Conv/Linear + ReLU).
"""
from __future__ import annotations

from collections import OrderedDict

from .. import functional as F
from .containers import Sequential
from .layers import Conv2d, MaxPool2d, ReLU
from .module import Module


class ConvReLUMaxPool2d(Module):
    """``max_pool2d(relu(conv2d(x, weight) + bias))`` as one module and one fused Function.

    Made by :func:`fuse` from a ``Conv2d``, a ``ReLU`` and a ``MaxPool2d``
    (``ConvReLUMaxPool2d(conv, relu, pool)``): it holds the conv's ``weight``
    (out_channels, in_channels/groups, kh, kw) and ``bias`` (out_channels,)
    Parameter objects themselves, and the settings of the conv and the pool.
    x (N, C, H, W) -> (N, out_channels, ph, pw): the conv's output shape, pooled.
    """

    def __init__(self, conv, relu, pool):
        super().__init__()
        for given, expected in ((conv, Conv2d), (relu, ReLU), (pool, MaxPool2d)):
            if type(given) is not expected:
                raise TypeError(f"ConvReLUMaxPool2d(conv, relu, pool): expected an nn.{expected.__name__}, "
                                f"got {type(given).__name__}")
        if pool.padding not in (0, (0, 0)):
            raise ValueError(f"ConvReLUMaxPool2d: the pooling must have no padding, got padding={pool.padding}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.pool_kernel_size, self.pool_stride = pool.kernel_size, pool.stride
        self.weight = conv.weight          # the same Parameter objects: training this trains the conv
        self.bias = conv.bias

    def forward(self, x):
        return F.conv2d_relu_max_pool2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                        self.groups, self.pool_kernel_size, self.pool_stride)

    def extra_repr(self):
        # the conv's settings, printed as Conv2d prints them (this module has the same
        # attributes), then the pool's
        conv = Conv2d.extra_repr(self)
        return f"{conv}, pool_kernel_size={self.pool_kernel_size}, pool_stride={self.pool_stride}"


def is_hooked(module) -> bool:
    """True when a forward hook or pre-hook is registered on ``module`` (not its children)."""
    return bool(module._forward_hooks) or bool(module._forward_pre_hooks)


def conv_relu_max_pool(conv, relu, pool):
    """The default pattern's builder: a ConvReLUMaxPool2d, or None when the run must stay as it is.

    Exactly the three classes (a subclass may change what forward does), no
    padding on the pool (the fused kernel has none), and no hook on any of them.
    """
    if (type(conv), type(relu), type(pool)) != (Conv2d, ReLU, MaxPool2d):
        return None
    if pool.padding not in (0, (0, 0)) or is_hooked(conv) or is_hooked(relu) or is_hooked(pool):
        return None
    return ConvReLUMaxPool2d(conv, relu, pool)


def _take_conv(module, conv):
    """Give ``module`` (a Conv2d subclass built from ``conv``) conv's settings and its own
    ``weight`` / ``bias`` Parameter objects (shared: training one trains the other)."""
    module.in_channels, module.out_channels = conv.in_channels, conv.out_channels
    module.kernel_size, module.stride, module.padding = conv.kernel_size, conv.stride, conv.padding
    module.dilation, module.groups = conv.dilation, conv.groups
    module.weight = conv.weight
    module.bias = conv.bias


class DepthwiseConv2d(Conv2d):
    """A depthwise ``Conv2d`` (``groups = in_channels = out_channels``) computed directly:
    :func:`minicnn.functional.depthwise_conv2d`, no im2col (``functional/depthwise.py``).

    Made by :func:`fuse` from such a Conv2d (``DepthwiseConv2d(conv)``): it holds
    the conv's ``weight`` (C, 1, kh, kw) and ``bias`` (C,) Parameter objects
    themselves and its settings, and computes the same numbers.
    """

    def __init__(self, conv):
        Module.__init__(self)       # a Conv2d (isinstance holds: code that reads a conv's settings
        # still finds them), built from ``conv`` instead of from sizes
        if type(conv) is not Conv2d or not is_depthwise(conv):
            raise TypeError("DepthwiseConv2d(conv): expected an nn.Conv2d with groups == in_channels == "
                            f"out_channels, got {conv!r}")
        _take_conv(self, conv)

    def forward(self, x):
        return F.depthwise_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self):
        return Conv2d.extra_repr(self)


class ChunkedConv2d(Conv2d):
    """A ``Conv2d`` without groups computed a few images at a time
    (:func:`minicnn.functional.chunked_conv2d`): the same numbers, each chunk's im2col
    columns kept in cache and x kept for the backward instead of the columns.

    Made by :func:`fuse` from such a Conv2d (``ChunkedConv2d(conv)``), holding its
    ``weight`` and ``bias`` Parameter objects themselves.
    """

    def __init__(self, conv):
        Module.__init__(self)       # a Conv2d, as DepthwiseConv2d
        if type(conv) is not Conv2d or conv.groups != 1:
            raise TypeError(f"ChunkedConv2d(conv): expected an nn.Conv2d with groups=1, got {conv!r}")
        _take_conv(self, conv)

    def forward(self, x):
        return F.chunked_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self):
        return Conv2d.extra_repr(self)


def chunked(conv):
    """The one-module pattern's builder: a ChunkedConv2d for an unhooked Conv2d without groups."""
    if (type(conv) is not Conv2d or conv.groups != 1 or is_hooked(conv)
            or getattr(conv, "padding_mode", "zeros") != "zeros"):
        return None
    return ChunkedConv2d(conv)


def is_depthwise(conv) -> bool:
    """One filter per channel: ``groups == in_channels == out_channels``, zero padding."""
    return (conv.groups == conv.in_channels == conv.out_channels
            and getattr(conv, "padding_mode", "zeros") == "zeros")


def depthwise(conv):
    """The one-module pattern's builder: a DepthwiseConv2d for an unhooked depthwise Conv2d."""
    if type(conv) is not Conv2d or not is_depthwise(conv) or is_hooked(conv):
        return None
    return DepthwiseConv2d(conv)


#: What ``mc.fuse(model)`` fuses: [(module types in a row, builder)]. A one-module
#: pattern replaces a single layer by a faster module computing the same thing,
#: wherever that layer sits (a Sequential's child or another module's attribute).
DEFAULT_PATTERNS = [((Conv2d, ReLU, MaxPool2d), conv_relu_max_pool),
                    ((Conv2d,), depthwise),
                    ((Conv2d,), chunked)]


def fuse(model, patterns=None):
    """A model computing what ``model`` computes, with fusable runs replaced by fused modules.

    ``patterns`` defaults to :data:`DEFAULT_PATTERNS` (Conv2d -> ReLU ->
    MaxPool2d becomes :class:`ConvReLUMaxPool2d`). Parameters, buffers and
    unfused modules are shared with ``model``, which is not changed; a model
    with nothing to fuse is returned as is (the same object). The module
    docstring says when a run is fused and what is copied.
    """
    if not isinstance(model, Module):
        raise TypeError(f"fuse: expected an nn.Module, got {type(model).__name__}")
    patterns = DEFAULT_PATTERNS if patterns is None else list(patterns)
    for i, pattern in enumerate(patterns):
        if (not isinstance(pattern, tuple) or len(pattern) != 2 or not isinstance(pattern[0], tuple)
                or not pattern[0] or not callable(pattern[1])):
            raise TypeError(f"fuse: pattern {i} must be a pair (tuple of module types, builder function), "
                            f"got {pattern!r}")
    return _fuse_module(model, patterns)


def _fuse_module(module, patterns):
    """``module`` itself when nothing below it fuses, otherwise a shallow copy with fused children."""
    if not getattr(module, "fuse_children", True):      # it computes with its children's weights itself
        return module
    children = OrderedDict((name, _fuse_module(child, patterns) if child is not None else None)
                           for name, child in module._modules.items())
    if isinstance(module, Sequential):
        children = fuse_runs(children, patterns)
    else:                               # another module's attributes: one-module patterns only
        singles = [p for p in patterns if len(p[0]) == 1]
        children = OrderedDict((name, replace_one(child, singles)) for name, child in children.items())
    unchanged = (list(children) == list(module._modules)
                 and all(children[name] is child for name, child in module._modules.items()))
    if unchanged:
        return module
    return _copy_with_children(module, children)


def fuse_runs(children, patterns):
    """One Sequential's children (an OrderedDict name -> module) with every matching run replaced.

    A replaced run keeps its first child's name; the others' names disappear
    (so a fused Sequential's names may skip numbers: "0", "3", "4").
    """
    names, modules = list(children), list(children.values())
    out = OrderedDict()
    i = 0
    while i < len(modules):
        for types, build in patterns:
            run = modules[i:i + len(types)]
            if len(run) == len(types) and all(isinstance(m, t) for m, t in zip(run, types)):
                fused = build(*run)
                if fused is not None:
                    out[names[i]] = fused
                    i += len(types)
                    break
        else:                               # no pattern starts here: keep the child as it is
            out[names[i]] = modules[i]
            i += 1
    return out


def replace_one(module, patterns):
    """``module``, or what the first matching one-module pattern builds from it."""
    for (kind,), build in patterns:
        if isinstance(module, kind):
            fused = build(module)
            if fused is not None:
                return fused
    return module


def _copy_with_children(module, children):
    """A new module object of the same class and attributes, with ``children`` as its submodules.

    Parameters, buffers, hooks and plain attributes are the same objects; the
    dicts that hold them are new, so registering something on the copy does not
    change the original.
    """
    new = object.__new__(type(module))
    new.__dict__.update(module.__dict__)
    for store in ("_parameters", "_buffers", "_forward_hooks", "_forward_pre_hooks"):
        object.__setattr__(new, store, OrderedDict(module.__dict__[store]))
    object.__setattr__(new, "_non_persistent", set(module.__dict__["_non_persistent"]))
    object.__setattr__(new, "_modules", children)
    return new
