"""Transfer learning (tutorial 11): load a pretrained backbone, freeze it, fine-tune a new head.

* ``finetune.py`` — the library: :func:`load_pretrained`, :func:`freeze_layers`, :func:`param_groups`, ...
* ``cli.py``      — ``minicnn train --init-from CKPT --freeze ...``
"""
from .finetune import (backbone_names, freeze_layers, head_name, load_pretrained, param_groups,
                       resolve_layers)

__all__ = ["head_name", "load_pretrained", "resolve_layers", "backbone_names", "freeze_layers", "param_groups"]
