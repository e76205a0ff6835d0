"""Hyper-parameter tuning (tutorial 16).

* ``lr_range.py`` — the learning-rate range test, :func:`lr_find`;
* ``search.py``  — search spaces, the Optuna study, samplers and pruners (Optuna loads only when a search runs);
* ``cli.py``     — ``minicnn tune`` and ``minicnn lr-find``.
"""
from .lr_range import (LRFindResult, exponential_lrs, lr_find, suggest_minimum, suggest_steepest,
                      suggest_valley)

__all__ = ["lr_find", "LRFindResult", "exponential_lrs", "suggest_steepest", "suggest_minimum",
           "suggest_valley"]
