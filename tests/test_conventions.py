"""The conventions a student relies on when reading the code, enforced.

* Every autograd Function is named ``...Fn`` and keeps the arrays its backward
  needs in ``save_for_backward`` / ``saved_tensors`` (PyTorch's convention),
  never in ad-hoc attributes: checked on every Function a training step and a
  battery of operations create.
* Each public module imports first in a fresh interpreter (the tensor <->
  functional cycle must not depend on import order), and ``import minicnn``
  loads neither the downloader, tqdm nor the training loop.
* A checkout that was never installed imports (``kernels/`` sits beside
  ``minicnn/``), and a copy without ``kernels/`` fails with one clear line.
"""
from __future__ import annotations

import importlib
import os
import pathlib
import pkgutil
import shutil
import subprocess
import sys

import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F
from minicnn import models, nn
from minicnn.backend import current
from minicnn.autograd.observe import OperationObserver, observe
from minicnn.autograd.tensor import Function

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _all_subclasses(cls):
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _all_subclasses(sub)
    return out


def _import_every_module():
    for info in pkgutil.walk_packages(mc.__path__, "minicnn."):
        if info.name.startswith("minicnn.kernels.cupy") or info.name == "minicnn.cli":
            continue
        importlib.import_module(info.name)


def test_every_function_is_named_fn():
    _import_every_module()
    ours = [c for c in _all_subclasses(Function) if c.__module__.startswith("minicnn.")]
    assert len(ours) >= 50
    wrong = sorted(f"{c.__module__}.{c.__name__}" for c in ours if not c.__name__.endswith("Fn"))
    assert not wrong, f"Function classes must end in 'Fn' (the operation, not the layer): {wrong}"


def test_grad_fn_shows_the_function_name():
    x = mc.tensor(np.ones((2, 3)), requires_grad=True)
    assert "grad_fn=<AddFn>" in repr(x + 1)
    assert repr((x * 2)._ctx) == "<MulFn>"


def _battery():
    """Forward and backward through (nearly) every Function, in float64."""
    rng = np.random.default_rng(0)
    t = lambda *shape: mc.tensor(rng.standard_normal(shape), requires_grad=True, dtype="float64")  # noqa: E731
    x, w, b = t(2, 3, 6, 6), t(4, 3, 3, 3), t(4)
    outs = [
        F.conv2d(x, w, b, padding=1), F.conv2d_relu_max_pool2d(x, w, b, padding=1),
        F.max_pool2d(x, 2), F.avg_pool2d(x, 2, padding=1, count_include_pad=False),
        F.adaptive_avg_pool2d(x, 2), F.unfold(x, 3),
        F.batch_norm(x, None, None, t(3), t(3), training=True),
        F.linear(t(5, 4), t(3, 4), t(3)), F.dropout(t(4, 4), 0.5),
    ]
    a, c = t(3, 4), t(3, 4)
    outs += [a + c, a - c, a * c, a / (c * c + 1), -a, a ** 2, (a * a + 1) ** c, a @ c.T,
             a.exp(), (a * a + 1).log(), (a * a + 1).sqrt(), a.abs(), a.clip(-0.5, 0.5),
             F.maximum(a, c), a.sum(axis=1), a.mean(), a.max(axis=0), a.reshape(4, 3),
             a.transpose(), a[:, 1:], mc.cat([a, c]), mc.stack([a, c]), a.float().double()]
    outs += [f(a) for f in (F.relu, F.sigmoid, F.tanh, F.silu, F.mish, F.softplus, F.gelu)]
    outs += [F.leaky_relu(a, 0.1), F.gelu(a, approximate="tanh"), F.softmax(a), F.log_softmax(a)]
    target = mc.tensor(np.array([0, 3, 1]))
    outs += [F.cross_entropy(a, target, label_smoothing=0.1), F.nll_loss(F.log_softmax(a), target),
             F.mse_loss(a, c), F.smooth_l1_loss(a, c), F.binary_cross_entropy_with_logits(a, F.sigmoid(c)),
             F.kl_div(F.log_softmax(a), F.softmax(c), reduction="batchmean"),
             F.kl_div(F.log_softmax(a), F.log_softmax(c), log_target=True),
             F.fake_quantize_per_tensor_affine(a, 0.1, 0, -128, 127),
             F.fake_quantize_per_channel_affine(a, np.full(3, 0.1), np.zeros(3), 0, -128, 127)]
    model = models.get_model("reference-bn").double()
    outs.append(F.cross_entropy(model(t(2, 1, 28, 28)), mc.tensor(np.array([1, 2]))))
    sum(o.sum() if o.ndim else o for o in outs).backward()


class _RecordFunctions(OperationObserver):
    """Every Function the graph keeps (forward with grad on), with the options ``apply`` got."""

    def __init__(self):
        self.seen = []

    def on_forward(self, fn, inputs, options, output):
        if output._ctx is not None:
            self.seen.append((fn, options))


def test_functions_keep_arrays_only_in_saved_tensors(cpu_backend):
    """Arrays a forward computes go through save_for_backward; plain attributes are settings.

    (An option passed to ``apply`` — an index, a scale vector — may be kept as given.)
    """
    with observe(_RecordFunctions()) as recorder:
        _battery()
    seen = recorder.seen
    names = {type(fn).__name__ for fn, _ in seen}
    assert len(names) >= 45, sorted(names)

    def arrays_in(value):
        if isinstance(value, current.xp.ndarray):
            return True
        return isinstance(value, (tuple, list)) and any(arrays_in(v) for v in value)

    offenders = set()
    for fn, options in seen:
        for key, value in vars(fn).items():
            if key in ("saved_tensors", "inputs", "needs_input_grad"):
                continue
            if arrays_in(value) and not any(value is v for v in options.values()):
                offenders.add(f"{type(fn).__name__}.{key}")
    assert not offenders, f"arrays kept outside save_for_backward: {sorted(offenders)}"


def _run(code, cwd=None, strip_editable=False):
    prelude = ""
    if strip_editable:      # what an uninstalled checkout sees: no editable-install finder
        prelude = ("import sys\nsys.meta_path[:] = [f for f in sys.meta_path "
                   "if 'editable' not in getattr(f, '__module__', '').lower()]\n")
    env = dict(os.environ, MINICNN_BACKEND="numpy")
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


PUBLIC = ["minicnn", "minicnn.autograd.tensor", "minicnn.autograd.engine", "minicnn.autograd.observe", "minicnn.autograd.anomaly",
          "minicnn.functional", "minicnn.nn", "minicnn.optim",
          "minicnn.data", "minicnn.models", "minicnn.train", "minicnn.autograd.gradcheck", "minicnn.backend",
          "minicnn.io", "minicnn.train.summary", "minicnn.train.metrics", "minicnn.train.viz",
          "minicnn.compress", "minicnn.compress.distill", "minicnn.attacks", "minicnn.explain", "minicnn.tune",
          "minicnn.transfer", "minicnn.quant", "minicnn.distributed", "minicnn.quant.onnx", "minicnn.cli",
          "minicnn.nn.utils.prune", "minicnn.distributed.sync_batchnorm", "minicnn.data.loader",
          "minicnn.data.download", "minicnn.kernels.numpy_ref", "minicnn.kernels.geometry"]
PUBLIC += [f"minicnn.functional.{m.name}" for m in pkgutil.iter_modules([str(ROOT / "minicnn" / "functional")])]


def test_each_public_module_imports_first():
    """One interpreter; before each import every minicnn module is dropped, so each is first."""
    code = (
        "import importlib, sys\n"
        f"failed = []\nfor name in {PUBLIC!r}:\n"
        "    for m in [m for m in sys.modules if m == 'minicnn' or m.startswith('minicnn.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except Exception as e:\n        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('FAILED', failed)\n")
    res = _run(code)
    assert res.returncode == 0, res.stderr
    assert "FAILED []" in res.stdout, res.stdout


def test_import_minicnn_stays_light():
    res = _run("import sys, minicnn\n"
               "print(sorted(m for m in ('tqdm', 'minicnn.train', 'minicnn.data.download', "
               "'urllib.request', 'matplotlib', 'optuna', 'onnx') if m in sys.modules))\n"
               "import minicnn as mc\nassert callable(mc.train.fit)\n"
               "from minicnn.data import DownloadError, CHECKSUMS\nassert 'mnist' in CHECKSUMS\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[0] == "[]", res.stdout


def _plain_checkout(tmp_path, with_kernels=True):
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "minicnn", tmp_path / "minicnn", ignore=ignore)
    if with_kernels:
        shutil.copytree(ROOT / "kernels", tmp_path / "kernels", ignore=ignore)
    return tmp_path


def test_an_uninstalled_checkout_imports(tmp_path):
    repo = _plain_checkout(tmp_path)
    res = _run("import minicnn as mc, minicnn.kernels.numpy_ref as ref\n"
               "print(mc.__file__); print(ref.__file__)\n"
               "x = mc.tensor([[1.0, -2.0]], requires_grad=True)\n"
               "(mc.functional.relu(x) * 3).sum().backward(); print(x.grad.numpy().tolist())\n",
               cwd=repo, strip_editable=True)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith(str(repo / "minicnn")) and lines[1].startswith(str(repo / "kernels"))
    assert lines[2] == "[[3.0, 0.0]]"


def test_a_copy_without_kernels_says_to_install(tmp_path):
    repo = _plain_checkout(tmp_path, with_kernels=False)
    res = _run("import minicnn", cwd=repo, strip_editable=True)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: minicnn.kernels is missing") and "pip install -e ." in last, last
