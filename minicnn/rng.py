"""The framework's random number generator.

Everything random in minicnn — weight initialisation, dropout masks, data
shuffling, augmentation — draws from this one seeded generator, so that
``mc.manual_seed(0)`` makes a whole run repeatable.

Numbers are drawn on the host with NumPy's PCG64 and then moved to the active
backend. That costs a copy on the GPU, but it means the same seed gives the same
weights and the same dropout masks on every backend — which is what lets the
tests compare backends run for run.
"""
from __future__ import annotations

import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reseed the framework's generator (like ``torch.manual_seed``)."""
    global _generator
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    _generator = np.random.default_rng(int(seed))


def generator() -> np.random.Generator:
    """The live host generator (read it each time: manual_seed replaces it)."""
    return _generator


def get_rng_state() -> dict:
    """A picklable snapshot of the generator, for checkpoints."""
    return _generator.bit_generator.state


def set_rng_state(state: dict) -> None:
    """Restore a snapshot taken by :func:`get_rng_state`."""
    _generator.bit_generator.state = state
