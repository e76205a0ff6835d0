"""Training on top of the engine: the one loop and what surrounds it.

* ``loop.py``    — :func:`fit` (epochs, validation, checkpoints, resume, the non-finite guard),
  :func:`evaluate`, :func:`predict`, callbacks, checkpoints;
* ``metrics.py`` — confusion matrix, precision/recall/F1, ROC and AUC;
* ``viz.py``     — the plots (history, confusion matrix, filters, feature maps, attributions);
* ``summary.py`` — :func:`summary`: the per-layer table of shapes, parameters and MACs;
* ``runlock.py`` — one training run per output folder;
* ``schema.py``  — checkpoint metadata and configs checked (types, ranges, sizes) before use.
"""
from .loop import (Callback, EarlyStopping, NonFiniteLossError, evaluate, fit, load_checkpoint, predict,
                   save_checkpoint, standard_step)

__all__ = ["fit", "evaluate", "predict", "save_checkpoint", "load_checkpoint", "EarlyStopping",
           "NonFiniteLossError", "standard_step", "Callback"]
