"""The conventions a student relies on when reading the code, enforced.

* Every autograd Function is named ``...Fn`` and keeps the arrays its backward
  needs in ``save_for_backward`` / ``saved_tensors`` (PyTorch's convention),
  never in ad-hoc attributes: checked on every Function a training step and a
  battery of operations create.
* Each public module imports first in a fresh interpreter (the tensor <->
  functional cycle must not depend on import order), and ``import minicnn``
  loads neither the downloader, tqdm nor the training loop.
* The package's structure: no module imports a private name (``_x``) of
  another; no import circle except the one at the heart of the engine
  (a Tensor's methods call the functional operations, which build on Tensor);
  ``Sequential.forward`` is the plain loop (fusion is the explicit
  ``mc.fuse``).
* A checkout that was never installed imports (``kernels/`` sits beside
  ``minicnn/``), and a copy without ``kernels/`` fails with one clear line.
"""
from __future__ import annotations

import ast
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
from minicnn.autograd.observer import OperationObserver, observe
from minicnn.autograd.tensor import Function

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _all_subclasses(cls):
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _all_subclasses(sub)
    return out


def _import_every_module():
    for info in pkgutil.walk_packages(mc.__path__, "minicnn."):
        if info.name.startswith("minicnn.kernels.cupy") or info.name.endswith(".__main__"):
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
        F.layer_norm(x, (6, 6), t(6, 6), t(6, 6)), F.group_norm(t(2, 4, 3, 3), 2, t(4), t(4)),
        F.linear(t(5, 4), t(3, 4), t(3)), F.dropout(t(4, 4), 0.5),
    ]
    a, c = t(3, 4), t(3, 4)
    outs += [a + c, a - c, a * c, a / (c * c + 1), -a, a ** 2, (a * a + 1) ** c, a @ c.T,
             a.exp(), (a * a + 1).log(), (a * a + 1).sqrt(), a.abs(), a.clip(-0.5, 0.5),
             F.maximum(a, c), a.sum(axis=1), a.mean(), a.amax(axis=0), a.max(dim=1).values, a.reshape(4, 3),
             a.transpose(), a.clone(), a[:, 1:], a.prod(1), mc.cat([a, c]), mc.stack([a, c]), a.float().double()]
    outs += [f(a) for f in (F.relu, F.sigmoid, F.tanh, F.silu, F.mish, F.softplus, F.gelu)]
    outs += [F.leaky_relu(a, 0.1), F.gelu(a, approximate="tanh"), F.softmax(a), F.log_softmax(a)]
    target = mc.tensor(np.array([0, 3, 1]))
    outs += [F.cross_entropy(a, target, label_smoothing=0.1), F.nll_loss(F.log_softmax(a), target),
             F.multi_margin_loss(a, target, p=2, weight=np.ones(4)), F.mse_loss(a, c), F.smooth_l1_loss(a, c), F.binary_cross_entropy_with_logits(a, F.sigmoid(c)),
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


# every module of the package (the CuPy kernels need a GPU; the CLI's __main__ runs the command)
PUBLIC = sorted(
    ".".join(("minicnn",) + p.relative_to(ROOT / "minicnn").with_suffix("").parts).removesuffix(".__init__")
    for p in (ROOT / "minicnn").rglob("*.py") if p.name != "__main__.py")
PUBLIC += ["minicnn.kernels.numpy_ref", "minicnn.kernels.geometry", "minicnn.kernels.numba_cpu"]


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


# -----------------------------------------------------------------------------
# The structure of the package: what imports what
# -----------------------------------------------------------------------------
def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "kernels":
        parts = ["minicnn"] + parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports():
    """Every static import in minicnn/ and kernels/, module level or inside a function:
    ``[(importer, imported module, imported name or None)]``, minicnn's modules only."""
    files = {_module_name(p): p for folder in ("minicnn", "kernels") for p in (ROOT / folder).rglob("*.py")}
    found = []
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found += [(module, a.name, None) for a in node.names if a.name.startswith("minicnn")]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                if not base.startswith("minicnn"):
                    continue
                for a in node.names:
                    target = f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                    while target not in files and "." in target:
                        target = target.rsplit(".", 1)[0]
                    found.append((module, target, None if target.endswith("." + a.name) else a.name))
    return files, found


def test_no_private_name_is_imported_across_modules():
    """What one module needs of another is public: ``from .x import _y`` is not allowed."""
    _, found = _imports()
    private = sorted(f"{m} imports {name} from {t}" for m, t, name in found
                     if name and name.startswith("_") and not name.startswith("__") and t != m)
    assert not private, private


def test_no_private_name_of_another_module_is_used_through_it():
    """Nor ``from . import loop`` followed by ``loop._helper(...)``."""
    files, _ = _imports()
    offenders = []
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        aliases = {}                        # local name -> the minicnn module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                for a in node.names:
                    if f"{base}.{a.name}" in files:
                        aliases[a.asname or a.name] = f"{base}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in files and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and aliases[node.value.id] != module):
                offenders.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not offenders, offenders


# The one circle there is: Tensor's methods (x + y, x.sum(), backward) call the
# functional operations, which build on Tensor and Function (autograd <-> functional).
ENGINE_CIRCLE = ("minicnn.autograd", "minicnn.functional")
# Imports that go "up" on purpose, each loaded on first use, with why:
LAZY_UPWARD = {
    ("minicnn.nn", "minicnn.distributed.sync_batchnorm"):
        "nn.SyncBatchNorm is PyTorch's name; the class lives with data-parallel training",
    ("minicnn.nn.utils", "minicnn.compress.prune"):
        "nn.utils.prune is PyTorch's path; the masks live with the rest of pruning (compress/prune.py)",
}


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan, iteratively)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter[0]; counter[0] += 1
        stack.append(root); on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]; counter[0] += 1
                    stack.append(child); on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop(); on_stack.discard(m); component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_circle_but_the_engine_one():
    """No circle (a module importing its own package, as ``import minicnn as mc`` does, is not one),
    counting the package __init__ files an import runs on the way."""
    _, found = _imports()
    graph = {}
    for m, t, _ in found:
        if t == m or (m, t) in LAZY_UPWARD:
            continue
        # importing a.b.c runs a/__init__ and a/b/__init__ too (but minicnn's own is already running)
        parts = t.split(".")
        for target in [".".join(parts[:i]) for i in range(2, len(parts))] + [t]:
            if not m.startswith(target + ".") and target != m:
                graph.setdefault(m, set()).add(target)
    bad = [c for c in _cycles(graph) if not all(m.startswith(ENGINE_CIRCLE) for m in c)]
    assert not bad, f"import circles: {bad}"
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]   # the finder finds


def test_the_lazy_upward_imports_are_the_listed_ones():
    for (m, t), why in LAZY_UPWARD.items():
        _, found = _imports()
        assert any(a == m and b == t for a, b, _ in found), f"{m} no longer imports {t}: drop it from LAZY_UPWARD"


def test_sequential_forward_is_the_plain_loop_and_numpy_ref_implements_every_declared_kernel():
    """The two structural promises of the readable core checked here too (their full tests:
    tests/test_fused.py and tests/test_kernel_contract.py)."""
    import inspect

    from minicnn.kernels import contract, numpy_ref
    source = inspect.getsource(nn.Sequential.forward)
    assert "fus" not in source.lower() and "for " in source, source
    assert all(hasattr(numpy_ref, k.name) for k in contract.KERNELS), "numpy_ref lacks a declared kernel"
    assert contract.missing_kernels(numpy_ref) == ([], [])
