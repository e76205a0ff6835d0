"""Compression (tutorial 12): pruning studies, shrinking pruned models, sparse files, distillation.

* ``prune.py``       — the masks: ``torch.nn.utils.prune``'s API (also ``minicnn.nn.utils.prune``);
* ``sparsity.py``    — prune to a sparsity, sensitivity analysis, :func:`shrink` (drop pruned filters),
  sparse checkpoints;
* ``distill.py``     — :class:`DistillationStep`: train a student on a teacher's soft targets;
* ``prune_cli.py``   — ``minicnn prune``;   ``distill_cli.py`` — ``minicnn train --teacher ...``.
"""
from . import prune
from .distill import DistillationStep
from .sparsity import (ShrinkError, architecture, dense_bytes, gradual_schedule, iterative_prune, load_sparse, macs,
                     make_permanent, model_from_architecture, plot_sensitivity, prunable_layers, prune_to,
                     save_sparse, sensitivity_analysis, shrink)

__all__ = ["shrink", "ShrinkError", "prunable_layers", "prune_to", "gradual_schedule", "iterative_prune",
           "sensitivity_analysis", "plot_sensitivity", "save_sparse", "load_sparse", "architecture",
           "model_from_architecture", "macs", "make_permanent", "dense_bytes", "DistillationStep", "prune"]
