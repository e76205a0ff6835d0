"""Hyper-parameter tuning (tutorial 16).

* ``lr_range.py`` — the learning-rate range test, :func:`lr_find`;
* ``search.py``  — search spaces, the Optuna study, samplers and pruners (Optuna loads only when a search runs);
* ``cli.py``     — ``minicnn tune`` and ``minicnn lr-find``.
"""
from .lr_range import (LRFindResult, exponential_lrs, lr_find, suggest_minimum, suggest_steepest,
                      suggest_valley)

from .search import (Dimension, SpaceError, grid_of, make_pruner, make_sampler, open_storage, parse_dimension,
                     parse_space, sampler_seed)

__all__ = ["Dimension", "SpaceError", "grid_of", "make_pruner", "make_sampler", "open_storage", "parse_dimension",
           "parse_space", "sampler_seed", "lr_find", "LRFindResult", "exponential_lrs", "suggest_steepest", "suggest_minimum",
           "suggest_valley"]
