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


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    """Run the test once per backend; restore the previous backend afterwards."""
    previous = mc.get_backend()
    _activate(request.param)
    yield request.param
    mc.set_backend(previous)


@pytest.fixture(params=CPU_BACKENDS)
def cpu_backend(request):
    previous = mc.get_backend()
    _activate(request.param)
    yield request.param
    mc.set_backend(previous)


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
