"""``nn.utils``: helpers that act on a whole model, as ``torch.nn.utils``.

* :mod:`.clip` — gradient clipping (``clip_grad_norm_``, ``clip_grad_value_``)
  and the L1 / L2 weight penalties.
* :mod:`.freeze` — freezing a part of a model for transfer learning
  (``freeze`` / ``unfreeze``), BatchNorm statistics included; ``frozen(model)``, a
  context manager that freezes for one block (attacks and attributions use it).
* ``prune`` — masks that zero weights (``torch.nn.utils.prune``'s API):
  ``from minicnn.nn.utils import prune``. The code lives with the rest of
  pruning, in ``minicnn/compress/prune.py``; it loads on first use.
"""
from .clip import clip_grad_norm_, clip_grad_value_, l1_penalty, l2_penalty
from .freeze import freeze, frozen, unfreeze

__all__ = ["clip_grad_norm_", "clip_grad_value_", "l1_penalty", "l2_penalty", "freeze", "unfreeze", "frozen", "prune"]


def __getattr__(name):
    """``nn.utils.prune`` is PyTorch's path; the module is ``minicnn.compress.prune`` (pruning's folder),
    loaded on first use so that nn does not import compress (which builds on nn)."""
    if name == "prune":
        from ...compress import prune
        return prune
    raise AttributeError(f"module 'minicnn.nn.utils' has no attribute {name!r}")
