"""Freezing part of a model: the first step of transfer learning.

A *frozen* parameter keeps its value: ``requires_grad=False`` means no
gradient is computed for it (``p.grad`` stays ``None``) and every optimizer
skips parameters whose gradient is ``None``. Freezing the backbone of a
trained network and training only a new head is a *linear probe*; freezing
nothing and using a small learning rate for the backbone is *fine-tuning*.

BatchNorm is the trap. Its running mean and variance are **buffers**, not
parameters: ``requires_grad_(False)`` does not touch them, and in training
mode every forward pass still moves them towards the new data's statistics —
the "frozen" backbone silently changes (a long-standing PyTorch complaint).
``freeze(module, bn_eval=True)`` therefore also pins every BatchNorm inside
``module`` to evaluation mode: it normalises with the stored statistics and
leaves them alone, even when the whole model is later put in ``train()``.

    nn.utils.freeze(model[:6])          # conv blocks frozen, BN statistics included
    nn.utils.unfreeze(model)            # everything trainable again
"""
from __future__ import annotations

import contextlib

__all__ = ["freeze", "unfreeze"]


def _batchnorms(module):
    from ..layers import BatchNorm1d, BatchNorm2d
    return [m for m in module.modules() if isinstance(m, (BatchNorm1d, BatchNorm2d))]


def freeze(module, bn_eval=True):
    """``module.requires_grad_(False)``, and (``bn_eval``) its BatchNorms kept in eval mode.

    Returns ``module``. The BatchNorms stay in eval mode through later
    ``model.train()`` calls until :func:`unfreeze`.
    """
    module.requires_grad_(False)
    if bn_eval:
        for bn in _batchnorms(module):
            object.__setattr__(bn, "_frozen_eval", True)
            object.__setattr__(bn, "training", False)
    return module


def unfreeze(module):
    """Undo :func:`freeze`: parameters trainable, BatchNorms follow ``train()`` / ``eval()`` again."""
    module.requires_grad_(True)
    for bn in _batchnorms(module):
        bn.__dict__.pop("_frozen_eval", None)
    return module


@contextlib.contextmanager
def frozen(model):
    """``with frozen(model):`` eval mode and no parameter gradients inside (attacks, attributions); mode, flags and ``.grad`` restored after.

    Turning ``requires_grad`` off also makes the backward pass skip the
    weight gradients, which attacks never need.
    """
    was_training = model.training
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    model.eval()
    for p, _, _ in saved:
        p.requires_grad = False
    try:
        yield model
    finally:
        for p, flag, grad in saved:
            p.requires_grad, p.grad = flag, grad
        model.train(was_training)
