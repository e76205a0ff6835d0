"""``nn.utils``: helpers that act on a whole model, as ``torch.nn.utils``.

* :mod:`.clip` — gradient clipping (``clip_grad_norm_``, ``clip_grad_value_``)
  and the L1 / L2 weight penalties.
* :mod:`.freeze` — freezing a part of a model for transfer learning
  (``freeze`` / ``unfreeze``), BatchNorm statistics included; ``frozen(model)``, a
  context manager that freezes for one block (attacks and attributions use it).
* :mod:`.prune` — masks that zero weights (``torch.nn.utils.prune``'s API):
  ``from minicnn.nn.utils import prune``.
"""
from .clip import clip_grad_norm_, clip_grad_value_, l1_penalty, l2_penalty
from .freeze import freeze, frozen, unfreeze
from . import prune  # noqa: E402  (the submodule, as torch.nn.utils.prune)

__all__ = ["clip_grad_norm_", "clip_grad_value_", "l1_penalty", "l2_penalty", "freeze", "unfreeze", "frozen", "prune"]
