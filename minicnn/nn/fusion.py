"""Layer fusion: ``Sequential`` runs Conv2d -> ReLU -> MaxPool2d as one fused Function.

When three consecutive children of a :class:`~minicnn.nn.Sequential` are
exactly an ``nn.Conv2d``, an ``nn.ReLU`` and an ``nn.MaxPool2d`` (no
subclasses, pooling without padding), and none of the three has a forward
hook or pre-hook, ``Sequential.forward`` calls
:func:`minicnn.functional.fused.conv2d_relu_max_pool2d` instead of the three
layers one by one. The results — outputs, gradients, parameter updates — are
the same (``tests/test_fused.py`` proves it on every backend); a training step
of the reference CNN is faster because the convolution's output, the largest
array in the network, is read once instead of four times (the module
docstring of ``functional/fused.py`` counts the passes).

What you can no longer see inside a fused block is the ReLU's output, which
is never made. Anything that needs to look at a layer registers a hook on it
— ``mc.summary``, Grad-CAM, pruning's masks, quantization observers — and a
hooked layer is never fused, so those tools see every layer as written.

To run every layer on its own (to step through it in a debugger, or to time
the layers one by one):

    with nn.fusion.disabled():
        model(x)

or ``nn.fusion.set_enabled(False)`` for the whole process, or the
environment variable ``MINICNN_FUSION=0`` before minicnn is imported.
"""
from __future__ import annotations

import contextlib
import os

_enabled = os.environ.get("MINICNN_FUSION", "1").strip().lower() not in ("0", "false", "off", "no")


def is_enabled() -> bool:
    """True when Sequential fuses Conv2d -> ReLU -> MaxPool2d (the default)."""
    return _enabled


def set_enabled(flag: bool) -> None:
    """Turn fusion on or off for the whole process."""
    global _enabled
    if not isinstance(flag, bool):
        raise TypeError(f"fusion.set_enabled: expected True or False, got {flag!r}")
    _enabled = flag


@contextlib.contextmanager
def disabled():
    """``with nn.fusion.disabled(): ...`` runs every layer on its own inside the block."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def _unhooked(module) -> bool:
    return not module._forward_hooks and not module._forward_pre_hooks


def fusable(conv, relu, pool) -> bool:
    """Can these three modules, in this order, run as one conv2d_relu_max_pool2d?"""
    from .layers import Conv2d, MaxPool2d, ReLU
    return (type(conv) is Conv2d and type(relu) is ReLU and type(pool) is MaxPool2d
            and _unhooked(conv) and _unhooked(relu) and _unhooked(pool)
            and pool.padding in (0, (0, 0)))


def conv_relu_max_pool(conv, pool, x):
    """What ``pool(relu(conv(x)))`` computes, as one fused Function."""
    from ..functional.fused import conv2d_relu_max_pool2d
    return conv2d_relu_max_pool2d(x, conv.weight, conv.bias, conv.stride, conv.padding,
                                  conv.dilation, conv.groups, pool.kernel_size, pool.stride)
