"""Shared test fixtures.

``backend`` parametrizes a test over every backend: ``numpy`` and ``numba``
must load (both are dependencies); ``simulator`` always loads (a pretend GPU
that raises where host and device arrays mix, see kernels/simulated_device.py);
``cupy`` is skipped, with the reason, where CuPy or a GPU is missing. Adding a
backend means adding its name here.
"""
import os

import numpy as np
import pytest

import minicnn as mc

CPU_BACKENDS = ["numpy", "numba"]
ALL_BACKENDS = CPU_BACKENDS + ["simulator", "cupy"]


def _activate(name):
    try:
        mc.set_backend(name)
    except mc.BackendError as e:
        if name == "cupy":
            pytest.skip(f"cupy backend unavailable here: {e}")
        raise


def _switch_to(name):
    """Activate backend ``name`` for one test, then restore the previous one."""
    previous = mc.get_backend()
    _activate(name)
    yield name
    mc.set_backend(previous)


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    """Run the test once per backend (cupy skips where no GPU is usable)."""
    yield from _switch_to(request.param)


@pytest.fixture(params=CPU_BACKENDS)
def cpu_backend(request):
    """Run the test once per CPU backend."""
    yield from _switch_to(request.param)


def quadrant_images(n=96, seed=0):
    """A learnable toy task: 8x8 images whose class (0-3) is the brightest quadrant."""
    rs = np.random.default_rng(seed)
    x = rs.random((n, 8, 8)).astype(np.float32) * 0.5
    y = rs.integers(0, 4, n)
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 0.5
    return x, y


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _seed():
    mc.manual_seed(0)
    yield


def full_data_dir():
    """The folder with full MNIST (MINICNN_DATA_DIR), or None."""
    d = os.environ.get("MINICNN_DATA_DIR")
    return d if d and os.path.isdir(os.path.join(d, "mnist")) else None
