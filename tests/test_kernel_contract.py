"""kernels/contract.py is the one list of kernels, and every backend is held to it.

* numpy_ref implements every declared kernel, required and optional, with the
  declared parameters; numba, the simulator and (read from its source, since
  CuPy may not be installed) cupy_gpu provide every required one.
* set_backend refuses a module that lacks a required kernel, naming it.
* The optional fast paths of the numba backend equal numpy_ref's simple
  compositions (matmul, adam_step_, the whole conv + bias + relu + pool layer).
* The layers read ``current.kernels.<name>``, never ``getattr`` on it, and the
  process tuning (GOMP_SPINCOUNT) is not in kernels/.
* numpy_ref's plain max pooling equals numba's fast loops, NaN windows (pooled to NaN) included.
"""
from __future__ import annotations

import ast
import pathlib
import sys
import types

import numpy as np
import pytest

import minicnn as mc
from minicnn import backend as backend_module
from minicnn.backend import BackendError, current
from minicnn.kernels import contract, numba_cpu, numpy_ref, simulated_device

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.tutorial09        # what tutorials/09_*.ipynb teaches (tests/README.md)


def test_numpy_ref_implements_every_declared_kernel():
    for kernel in contract.KERNELS:
        function = getattr(numpy_ref, kernel.name, None)
        assert function is not None, f"numpy_ref lacks {kernel.signature}"
        names, _ = contract.parameters_of(function)
        assert tuple(names) == kernel.parameters, (kernel.name, names)


@pytest.mark.parametrize("module", [numba_cpu, simulated_device], ids=lambda m: m.NAME)
def test_every_backend_module_provides_every_required_kernel(module):
    assert contract.missing_kernels(module) == ([], [])


def test_numba_provides_every_optional_fast_path():
    table = contract.kernel_table(numba_cpu)
    assert all(table.provides(name) for name in contract.OPTIONAL)


def test_cupy_module_source_provides_every_required_kernel():
    """Parsed, not imported: CuPy need not be installed to check the names and parameters."""
    tree = ast.parse((ROOT / "kernels" / "cupy_gpu.py").read_text())
    defined = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    for name in contract.REQUIRED:
        assert name in defined, f"kernels/cupy_gpu.py lacks the required kernel {name}"
        args = defined[name].args
        names = [a.arg for a in args.args]
        with_default = set(names[len(names) - len(args.defaults):])
        assert contract.signature_problem(contract.BY_NAME[name], names, with_default) is None


def test_an_incomplete_backend_is_refused_naming_what_it_lacks(monkeypatch):
    fake = types.ModuleType("minicnn.kernels.fake_incomplete")
    for name in contract.REQUIRED:
        setattr(fake, name, getattr(numpy_ref, name))
    del fake.col2im
    fake.NAME = "fake"
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    real_load = backend_module.load_backend
    monkeypatch.setattr(backend_module, "load_backend",
                        lambda name: (np, fake) if name == "fake" else real_load(name))
    previous = mc.get_backend()
    with pytest.raises(BackendError) as info:
        mc.set_backend("fake")
    message = str(info.value)
    assert "'fake'" in message and "col2im" in message and "kernels/contract.py" in message
    assert mc.get_backend() == previous                       # nothing switched


def test_a_kernel_with_other_parameters_is_refused(monkeypatch):
    fake = types.ModuleType("minicnn.kernels.fake_renamed")
    for name in contract.REQUIRED:
        setattr(fake, name, getattr(numpy_ref, name))
    fake.erf = lambda values: numpy_ref.erf(values)        # declared: erf(x)
    fake.NAME = "fake"
    missing, mismatched = contract.missing_kernels(fake)
    assert missing == [] and len(mismatched) == 1 and "erf" in mismatched[0] and "(x)" in mismatched[0]


def test_optional_kernels_fall_back_to_the_declared_defaults():
    table = contract.kernel_table(simulated_device)
    assert not table.provides("matmul") and table.matmul is contract.BY_NAME["matmul"].default
    assert table.adam_step_ is None and table.conv2d_bias_relu_max_pool2d_forward is None
    with pytest.raises(KeyError, match="no kernel named 'adam_step'"):
        table.provides("adam_step")
    # the numpy backend leaves numpy_ref's optional kernels (the callers' own composition) unused
    numpy_table = contract.kernel_table(numpy_ref, fast_paths=False)
    assert not any(numpy_table.provides(name) for name in contract.OPTIONAL)
    assert all(numpy_table.provides(name) for name in contract.REQUIRED)


# -- the fast paths equal the simple compositions -------------------------------------------------
def test_numba_matmul_equals_the_simple_product():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((300, 200)), rng.standard_normal((200, 50))
    np.testing.assert_allclose(numba_cpu.matmul(a, b), numpy_ref.matmul(a, b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("decoupled, weight_decay", [(False, 0.0), (False, 0.1), (True, 0.1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_adam_step_equals_the_simple_update(dtype, decoupled, weight_decay, amsgrad):
    start = np.random.default_rng(1).standard_normal((4, 5)).astype(dtype)
    results = []
    for kernels in (numba_cpu, numpy_ref):
        w, m, v = start.copy(), np.zeros_like(start), np.zeros_like(start)
        v_max = np.zeros_like(start) if amsgrad else None
        for step in range(1, 5):
            g = np.random.default_rng(step).standard_normal(w.shape).astype(dtype)
            assert kernels.adam_step_(w, g, m, v, v_max, 1e-2, (0.9, 0.999), 1e-8, weight_decay,
                                      decoupled, step) is True
        results.append((w, m, v))
    for fast, simple in zip(*results):
        np.testing.assert_allclose(fast, simple, rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_whole_layer_equals_the_simple_composition(dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 9, 9)).astype(dtype)
    w = rng.standard_normal((4, 2, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    options = ((1, 1), (1, 1), (1, 1), 2, 2, (2, 2))
    p_ref, arg_ref = numpy_ref.conv2d_bias_relu_max_pool2d_forward(x, w, b, *options)
    p, arg = numba_cpu.conv2d_bias_relu_max_pool2d_forward(x, w, b, *options)
    tol = dict(rtol=100 * np.finfo(dtype).eps, atol=100 * np.finfo(dtype).eps)
    np.testing.assert_allclose(p, p_ref, **tol)
    np.testing.assert_array_equal(arg, arg_ref)
    gp = rng.standard_normal(p.shape).astype(dtype)
    for need_dx in (True, False):
        ref = numpy_ref.conv2d_bias_relu_max_pool2d_backward(gp, arg_ref, x, w, *options, need_dx=need_dx)
        got = numba_cpu.conv2d_bias_relu_max_pool2d_backward(gp, arg_ref, x, w, *options, need_dx=need_dx)
        for r, g in zip(ref, got):
            if r is None:
                assert g is None
            else:
                np.testing.assert_allclose(g, r, **tol)


# -- numpy_ref's plain max pooling and numba's fast loops --------------------------------------------
@pytest.mark.parametrize("case", [(2, 2, (2, 2), (0, 0)), (3, 3, (1, 1), (1, 1)), (3, 2, (2, 1), (1, 0))])
def test_simple_max_pooling_equals_the_fast_loops(case):
    """Ties (small integers: the first maximum wins) and NaNs (a NaN always wins, the last one
    of its window: PyTorch's rule, see tests/test_nan_propagation.py) included."""
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, size=(2, 3, 7, 8)).astype(np.float64)
    x[0, 0, :3, :3] = np.nan                                  # a window of NaNs: NaN, its last NaN's tap
    x[1, 2, 4, 4] = np.nan
    y_ref, arg_ref = numpy_ref.max_pool2d_forward(x, *case)
    y, arg = numba_cpu.max_pool2d_forward(x, *case)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(arg, arg_ref)
    assert np.isnan(y[0, 0, 0, 0]) and np.isnan(y[1, 2]).any()   # no NaN is dropped
    gy = rng.standard_normal(y.shape)                         # overlapping windows: sums in another order
    np.testing.assert_allclose(numba_cpu.max_pool2d_backward(gy, arg, x.shape, *case),
                               numpy_ref.max_pool2d_backward(gy, arg_ref, x.shape, *case), rtol=1e-14, atol=1e-14)


# -- where things live -----------------------------------------------------------------------------
def test_no_layer_probes_the_kernel_table_with_getattr():
    offenders = [str(f.relative_to(ROOT)) for f in (ROOT / "minicnn").rglob("*.py")
                 if "getattr(current.kernels" in f.read_text()]
    assert not offenders, f"read current.kernels.<name> (kernels/contract.py declares it): {offenders}"


def test_process_tuning_is_not_in_the_kernel_modules():
    offenders = [f.name for f in (ROOT / "kernels").glob("*.py")
                 if "os.environ" in f.read_text() or "GOMP_SPINCOUNT" in f.read_text()]
    assert not offenders, offenders
    assert "nccl" not in (ROOT / "kernels" / "cupy_gpu.py").read_text().lower()


def test_the_active_backend_table_is_complete():
    for name in contract.REQUIRED:
        assert callable(getattr(current.kernels, name))
