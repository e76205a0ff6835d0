"""Backend selection, the host/device boundary, and moving work between backends.

Runs everywhere: the GPU-specific parts use a stand-in ``cupy`` module or the
``simulator`` backend (kernels/simulated_device.py), a pretend device that
raises wherever host and device arrays would mix on a real GPU.
"""
import ast
import os
import pathlib
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F
import minicnn.nn as nn
from minicnn import backend as backend_module
from minicnn import optim
from minicnn.backend import current, to_device, to_host
from minicnn.data import DataLoader
from minicnn.kernels import simulated_device
from minicnn.train import evaluate, fit, load_checkpoint, predict, save_checkpoint
from conftest import quadrant_images

pytestmark = pytest.mark.tutorial09        # what tutorials/09_*.ipynb teaches (tests/README.md)

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def simulator():
    previous = mc.get_backend()
    mc.set_backend("simulator")
    yield simulated_device
    mc.set_backend(previous)


# -- selection -----------------------------------------------------------------------------
def _fake_cupy(monkeypatch, device_count):
    """Put a stand-in ``cupy`` in sys.modules whose CUDA runtime reports ``device_count``
    devices (an int) or fails with ``device_count`` (an exception)."""
    def get_device_count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count))
    monkeypatch.setitem(sys.modules, "cupy", fake)


def test_cupy_without_cupy_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)            # "import cupy" raises ImportError
    before = mc.get_backend()
    with pytest.raises(mc.BackendError, match=r"needs CuPy, which is not installed .*pip install 'minicnn\[gpu\]'"):
        mc.set_backend("cupy")
    assert mc.get_backend() == before


def test_cupy_without_a_usable_device_says_so(monkeypatch):
    _fake_cupy(monkeypatch, RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected"))
    with pytest.raises(mc.BackendError, match=r"CuPy is installed but no CUDA device is usable "
                                              r"\(RuntimeError: cudaErrorNoDevice"):
        mc.set_backend("cupy")
    _fake_cupy(monkeypatch, 0)
    with pytest.raises(mc.BackendError, match="CuPy is installed but no CUDA device is visible"):
        mc.set_backend("cupy")


@pytest.mark.parametrize("device_count", [0, RuntimeError("no driver")], ids=["no device", "no driver"])
def test_auto_prefers_cupy_only_with_a_usable_device(monkeypatch, device_count):
    _fake_cupy(monkeypatch, device_count)
    before = mc.get_backend()
    try:
        assert mc.set_backend("auto") in ("numba", "numpy")
    finally:
        mc.set_backend(before)


def test_the_simulator_is_never_chosen_by_auto_but_can_be_named():
    assert "simulator" not in backend_module.AVAILABLE and "simulator" in backend_module.TEST_ONLY
    env = dict(os.environ, MINICNN_BACKEND="simulator")
    out = subprocess.run([sys.executable, "-c", "import minicnn as mc; print(mc.get_backend())"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "simulator", out.stderr
    with pytest.raises(mc.BackendError, match=r"expected one of cupy, numba, numpy or 'auto' \(or the "
                                              r"test-only simulator\)"):
        mc.set_backend("gpu")


def _imports(path):
    """The top-level package of every module imported anywhere in ``path``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package,allowed", [
    # distributed/data_parallel.py: NCCL (cupy.cuda.nccl), the multi-GPU set-up it owns, on the cupy backend only
    ("cupy", {"minicnn/backend.py", "kernels/cupy_gpu.py", "minicnn/distributed/data_parallel.py"}),
    ("cupyx", {"kernels/cupy_gpu.py"}),
])
def test_cupy_is_imported_only_by_the_backend_the_gpu_kernels_and_nccl_setup(package, allowed):
    files = sorted((ROOT / "minicnn").rglob("*.py")) + sorted((ROOT / "kernels").glob("*.py"))
    importers = {str(f.relative_to(ROOT)) for f in files if package in _imports(f)}
    assert importers <= allowed, f"{package} imported outside {sorted(allowed)}: {sorted(importers - allowed)}"


# -- the simulated device boundary -------------------------------------------------------------
def test_the_simulator_refuses_what_a_gpu_refuses(simulator):
    xp = current.xp
    a = xp.asarray(np.arange(6.0).reshape(2, 3))              # explicit host -> device
    assert not isinstance(a, np.ndarray) and isinstance(a, xp.ndarray)
    host = np.ones(3)
    for mix in (lambda: a + host, lambda: host * a, lambda: xp.exp(host), lambda: xp.where(a > 1, a, host),
                lambda: np.concatenate([a, host[None]])):
        with pytest.raises(TypeError, match=r"Unsupported type <class 'numpy.ndarray'>"):
            mix()
    for convert in (lambda: np.asarray(a), lambda: np.array(a), lambda: np.ascontiguousarray(a)):
        with pytest.raises(TypeError, match=r"Implicit conversion to a NumPy array is not allowed.*\.get\(\)"):
            convert()
    with pytest.raises(TypeError, match="cannot assign a host ndarray"):
        a[0] = host
    with pytest.raises(TypeError, match="device array is being pickled"):
        pickle.dumps(a)
    with pytest.raises(AttributeError, match="host-memory attribute"):
        a.tobytes()


def test_the_simulator_allows_scalars_explicit_copies_and_in_place_updates(simulator):
    xp = current.xp
    a = xp.asarray(np.arange(6.0).reshape(2, 3))
    b = a * 2.0 + np.float32(1) - 1                           # Python and NumPy scalars travel by value
    assert float(b.sum()) == 30.0 and int(a.max()) == 5 and bool((a > 4).any())
    assert isinstance(b.get(), np.ndarray) and b.get().tolist() == [[0, 2, 4], [6, 8, 10]]
    assert isinstance(a.sum(), xp.ndarray) and a.sum().ndim == 0          # CuPy: 0-d arrays, not scalars
    alias = b
    b -= a                                                    # in place: the same object
    assert b is alias and b.get().tolist() == a.get().tolist()
    assert a[np.array([1, 0]), [0, 2]].get().tolist() == [3.0, 2.0]        # host index arrays are fine
    dst = xp.zeros(4)
    current.kernels.scatter_add(dst, [0, 0, 3], xp.asarray([1.0, 2.0, 5.0]))
    assert to_host(dst).tolist() == [3.0, 0.0, 0.0, 5.0]
    with pytest.raises(TypeError, match="kernel im2col: argument 0 is a host numpy.ndarray"):
        current.kernels.im2col(np.zeros((1, 1, 3, 3)), 2, 2, (1, 1), (0, 0), (1, 1))


def test_tensors_live_on_the_device_and_numpy_copies_to_the_host(simulator):
    t = mc.tensor([[1.0, 2.0]], requires_grad=True)
    assert isinstance(t.array, current.xp.ndarray)
    n = t.numpy()
    assert type(n) is np.ndarray and n.tolist() == [[1.0, 2.0]]
    (t * t).sum().backward()
    assert t.grad.numpy().tolist() == [[2.0, 4.0]] and "tensor([[1., 2.]]" in repr(t)
    y = np.array([3.0, 4.0]) * t                              # a host array becomes a tensor (one copy)
    assert y.numpy().tolist() == [[3.0, 8.0]]


def _small_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, 4))


def test_a_training_step_copies_only_the_batch_and_the_dropout_mask(simulator):
    """On a GPU every copy is a synchronisation: a step must not make more than it needs."""
    mc.manual_seed(0)
    model = _small_cnn()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batches = iter(DataLoader(quadrant_images(32), batch_size=16))
    for _ in range(2):                                        # the first step creates the momentum
        simulator.transfers.clear()
        x, y = next(batches)
        assert simulator.transfers == {"host_to_device": 2}   # images and labels, once each
        simulator.transfers.clear()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        # host -> device: the dropout mask, drawn on the host by design (minicnn/rng.py);
        # device -> host: one yes/no from cross_entropy's check that the labels are in range
        assert simulator.transfers == {"host_to_device": 1, "device_to_host": 1}


# -- checkpoints and moving a model between backends --------------------------------------
def _all_arrays(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _all_arrays(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _all_arrays(v)
    elif hasattr(tree, "shape") and hasattr(tree, "dtype"):
        yield tree


def test_fit_trains_through_the_dataloader_and_checkpoints_load_on_any_backend(backend, tmp_path):
    mc.manual_seed(0)
    model = _small_cnn()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    train = DataLoader(quadrant_images(), batch_size=16, shuffle=True)
    val = DataLoader(quadrant_images(48, seed=1), batch_size=16)
    history = fit(model, opt, train, epochs=4, val_loader=val, out_dir=tmp_path, progress=False,
                  log=lambda *_: None)
    assert history["val_acc"][-1] > 0.8                        # chance is 0.25
    logits, targets = predict(model, val)
    assert type(logits) is np.ndarray and type(targets) is np.ndarray

    state = load_checkpoint(tmp_path / "last.ckpt")
    arrays = list(_all_arrays({k: state[k] for k in ("model", "optimizer")}))
    assert arrays and all(type(a) is np.ndarray for a in arrays)            # host copies only
    assert state["backend"] == backend

    trained_on = mc.get_backend()
    for there_and_back in ("numpy", trained_on):              # GPU-trained -> CPU -> GPU again
        mc.set_backend(there_and_back)
        fresh = _small_cnn()
        fresh.load_state_dict(state["model"])
        assert all(isinstance(p.array, current.xp.ndarray) for p in fresh.parameters())
        again, _ = predict(fresh, DataLoader(quadrant_images(48, seed=1), batch_size=16))
        np.testing.assert_allclose(again, logits, rtol=1e-4, atol=1e-5)
        resumed = optim.Adam(fresh.parameters(), lr=1e-2)
        resumed.load_state_dict(state["optimizer"])
        assert all(isinstance(v, current.xp.ndarray) for s in resumed.state.values()
                   for v in s.values() if hasattr(v, "shape"))
    assert evaluate(fresh, val)["accuracy"] == pytest.approx(history["val_acc"][-1])


def test_save_checkpoint_of_a_device_model_holds_host_arrays(simulator, tmp_path):
    model = _small_cnn()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(model(mc.tensor(np.ones((2, 1, 8, 8)))), mc.tensor([0, 1])).backward()
    opt.step()
    path = save_checkpoint(tmp_path / "m.ckpt", model, opt, extra_array=model[0].weight)
    import safetensors.numpy
    raw = safetensors.numpy.load_file(path)                   # no simulator (nor minicnn) needed to read it
    assert "model.0.weight" in raw and "extra_array" in raw
    arrays = list(_all_arrays(raw))
    assert len(arrays) > 10 and all(type(a) is np.ndarray for a in arrays)


def test_to_host_and_to_device_cross_the_boundary_explicitly(simulator):
    a = to_device(np.arange(3.0), dtype=np.float32)
    assert isinstance(a, current.xp.ndarray) and a.dtype == np.float32
    assert to_device(a) is a                                  # already on the device: no copy
    h = to_host(a)
    assert type(h) is np.ndarray and h.tolist() == [0.0, 1.0, 2.0]
    mc.set_backend("numpy")
    assert type(to_device(a)) is np.ndarray                   # device -> host when the backend is a CPU


@pytest.mark.parametrize("env, expected", [
    ({}, ("100000", None)),                                         # spin ~1 ms, then sleep
    ({"OMP_WAIT_POLICY": "PASSIVE"}, (None, "PASSIVE")),            # the user's choice is kept
    ({"GOMP_SPINCOUNT": "5"}, ("5", None)),
])
def test_numba_backend_sets_how_long_openmp_threads_spin(env, expected):
    """minicnn/backend.py asks GNU OpenMP to spin briefly between parallel loops (a loop
    started from sleep took 50-70 us) before it loads the numba kernels, unless the user
    set the policy or the count."""
    code = ("import os, minicnn; minicnn.set_backend('numba'); "
            "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))")
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    base["MINICNN_BACKEND"] = "numpy"                     # the switch below is what sets it
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [str(e) for e in expected]
