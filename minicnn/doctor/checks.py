"""``diagnose(model, loader)``: run a few training steps with hooks and name what is wrong.

The checks, in the order of Karpathy's "A Recipe for Training Neural Networks"
(2019) and CS231n's "Babysitting the learning process" — each one measures a
number and compares it with a threshold (``THRESHOLDS``, justified below):

================  ===================================================================
check             what is measured
================  ===================================================================
inputs            mean and standard deviation of the input pixels of the first batches
labels            class counts (the whole label array when the loader has one):
                  max count / min count over the model's classes
initial loss      the loss before any step, against ln(C) for C classes (cross-entropy)
overfit           accuracy on one small batch after N training steps on it alone
learning rate     the largest loss of the probe run / its first loss; then lr_find's suggestion
activations       per ReLU: the share of units that are 0 for every image of the batch
                  ("dead"); per Sigmoid/Tanh: the share of outputs within 1 % of a bound
gradients         per weight: ``|grad| / |W|`` at the first step; the first layer's
                  against the largest (vanishing), any non-finite or huge one (exploding)
updates           per weight: ``|W_after - W_before| / |W_before|`` per step (the median)
no gradient       parameters with requires_grad=False (frozen), with no gradient after
                  backward (unused), or missing from the optimizer (never updated)
BatchNorm         during ``eval_fn`` (your evaluation code): BatchNorm layers that ran in
                  training mode, and how far their running statistics moved
NaN               the step where the loss or a gradient first stopped being finite, then
                  ``mc.detect_anomaly`` replays the run and names the operation
================  ===================================================================

**The model and the optimizer are never changed.** Every check runs on a
fresh ``copy.deepcopy((model, optimizer))`` (one deep copy of both keeps the
optimizer pointing at the copy's parameters), and the framework's random
generator is put back afterwards; ``tests/test_doctor.py`` checks it.

**The thresholds** (``THRESHOLDS``; pass ``thresholds={...}`` to change any):

* ``input_mean`` 1.0, ``input_std`` (0.1, 5.0): networks are initialised for
  inputs of mean 0 and variance 1 (He/Xavier assume it); raw 0–255 pixels have
  mean ~33 and std ~78 and push every first-layer unit into its extremes.
  Pixels in [0, 1] (mean ~0.13, std ~0.31) pass: they are not centred, but the
  scale is right.
* ``label_imbalance`` 10: a max/min class-count ratio of 10 is where the
  imbalanced-learning literature starts to call a data set "highly
  imbalanced"; a class missing altogether counts as infinite.
* ``initial_loss`` 0.25: at initialisation the logits are small, softmax is
  near uniform and cross-entropy is ln(C) (2.303 for ten classes; Karpathy:
  "verify loss @ init"). More than 25 % off means the logits are large or
  biased before any learning.
* ``overfit_accuracy`` 1.0 in ``overfit_steps`` (default 100) steps on
  ``overfit_batch`` (default 10) samples: any working network and optimizer
  memorises ten images in a hundred steps, even at Adam's cautious 1e-3 (Karpathy: "overfit one batch");
  one that cannot has a bug between the loss and the weights. Dropout is
  switched off for this test (Karpathy: regularise only once it can
  overfit); it fights memorisation, and the question is whether the
  weights can be fitted at all.
* ``loss_jump`` 2.0: during the probe run the loss may wobble, but a loss
  twice its starting value (or NaN/Inf) within a few steps means the step is
  too large. The start is floored at 0.5 so a nearly trained model's noise
  (0.05 -> 0.12) does not count.
* ``dead_relu`` 0.75: some units are off for a whole batch even in a healthy
  network (CS231n: "as much as 40 % of your network can be dead"); the
  reference CNN's hidden layer measures 40-50 % at initialisation, because
  its inputs (ReLU outputs, all >= 0) share a large common component and a
  unit whose weights point against it is off for every image. Three quarters
  is a broken layer (a negative bias, a too-large learning rate).
* ``saturated`` 0.5: sigmoid/tanh outputs within 1 % of their bounds have a
  derivative below ~0.01 (sigmoid) / 0.02 (tanh); if most outputs are there,
  the layer passes almost no gradient back.
* ``vanishing`` 1e-3, ``exploding`` 1e3: the relative gradient ``|g| / |W|`` is the
  fraction a unit learning rate would change a weight by. When the first layer's
  is a thousand times smaller than the largest layer's, the first layers learn
  a thousand times slower (Glorot & Bengio 2010 show the same with sigmoid);
  a thousand times larger, or any ``|g| / |W|`` above 1e3 or not finite, is an
  exploding gradient.
* ``update_ratio`` (1e-5, 1e-1): CS231n's rule of thumb is an update about
  1e-3 of the weight's size per step. Two orders of magnitude either way is
  "far": a learning rate that is too small to learn in reasonable time, or so
  large that each step rewrites a tenth of the weight.
"""
from __future__ import annotations

import copy
import math

import numpy as np

from .. import functional as F
from .. import nn, optim, rng
from ..autograd.anomaly import AnomalyError, detect_anomaly
from ..autograd.tensor import Tensor, no_grad
from ..backend import to_host
from ..tune.lr_range import lr_find
from .report import Finding, Report

__all__ = ["diagnose", "THRESHOLDS", "TUTORIAL"]

TUTORIAL = "tutorials/18_debugging_training.ipynb"

THRESHOLDS = {
    "input_mean": 1.0,                  # |mean| of the input pixels
    "input_std": (0.1, 5.0),            # their standard deviation
    "label_imbalance": 10.0,            # max class count / min class count
    "initial_loss": 0.25,               # |loss0 - ln C| / ln C
    "overfit_accuracy": 1.0,            # on one small batch after overfit_steps steps
    "loss_jump": 2.0,                   # max loss of the probe run / max(first loss, 0.5)
    "dead_relu": 0.75,                  # share of a ReLU's units that are 0 for every image
    "saturated": 0.5,                   # share of sigmoid/tanh outputs within 1 % of a bound
    "vanishing": 1e-3,                  # first layer's |g|/|W| / the largest one's
    "exploding": 1e3,                   # first layer's |g|/|W| / the smallest one's, or any |g|/|W|
    "update_ratio": (1e-5, 1e-1),       # |dW| / |W| per step
}

WHY = {
    "inputs": "weights are initialised for inputs of mean 0 and std 1; far from it, the first layer's "
              "units start in their extremes and the loss landscape is badly scaled",
    "labels": "the network can reach a low loss by predicting the frequent class and never learn the "
              "rare ones; accuracy then says little",
    "initial_loss": "with small random weights the softmax is near uniform and the loss is ln(C); "
                    "far from it, the logits start large or biased and the first steps undo that",
    "overfit": "any working model memorises a handful of images; if it cannot, something between the "
               "loss and the weights is broken (a bug, dead units, a wrong learning rate)",
    "lr": "each step overshoots the minimum it is heading for; the loss bounces up or diverges",
    "dead_relu": "a unit that outputs 0 for every input passes no gradient back, so its incoming "
                 "weights never change again",
    "saturated": "in its flat tails the activation's derivative is ~0: the layer passes almost no "
                 "gradient to the layers below it",
    "vanishing": "the early layers get a tiny share of the gradient and learn far slower than the last "
                 "ones (the product of many small derivatives)",
    "exploding": "gradients grow layer by layer; steps become huge and training diverges",
    "update_small": "updates this small barely change the weights: training crawls (learning rate too small)",
    "update_large": "each step rewrites a large part of the weight: training is unstable (learning rate "
                    "too large)",
    "frozen": "requires_grad=False: no gradient is computed and the optimizer never changes it; fine for "
              "a backbone you froze on purpose (pass expect_frozen=...), a bug otherwise",
    "unused": "the loss does not depend on it (a layer built but never called in forward): it gets no "
              "gradient and never trains, yet counts as a parameter and is saved",
    "not_optimized": "it gets a gradient but is in none of the optimizer's parameter groups, so it "
                     "never changes (an optimizer built before the layer was added or replaced)",
    "batchnorm_eval": "in training mode BatchNorm normalises with the statistics of each evaluation "
                      "batch and overwrites its running statistics with test data: results depend on "
                      "the batch and the model changes while being measured (call model.eval())",
    "nan": "one NaN spreads to every weight it touches through the next update; find the first "
           "operation that produced it",
}

# Where each finding's fix is explained: the debugging tutorial, and the one that teaches the idea.
SECTION = {
    "inputs": "section 2 (and 08_mnist_case_study.ipynb: normalisation)",
    "labels": "section 2 (and 08_mnist_case_study.ipynb: stratified splits, per-class metrics)",
    "initial_loss": "section 3",
    "overfit": "section 3",
    "lr": "section 4 (and 16_hyperparameter_tuning.ipynb: the learning-rate range test)",
    "nan": "section 4 (and 01_autograd.ipynb: mc.detect_anomaly)",
    "dead_relu": "section 5 (and 03_activations_pooling.ipynb: dead ReLU)",
    "saturated": "section 5 (and 03_activations_pooling.ipynb: saturation)",
    "vanishing": "section 5 (and 04_initialization.ipynb)",
    "exploding": "section 5 (and 04_initialization.ipynb)",
    "update_ratio": "section 6 (and 06_optimizers_schedules.ipynb)",
    "frozen": "section 6 (and 11_transfer_learning.ipynb: freezing)",
    "unused": "section 6",
    "not_optimized": "section 6",
    "batchnorm_eval": "section 7 (and 05_batchnorm_dropout.ipynb: train vs eval)",
}

RELUS = (nn.ReLU,)                    # LeakyReLU is never dead: its negative side still passes gradient
SQUASHERS = (nn.Sigmoid, nn.Tanh)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def finding(name, key, message, measured, threshold, layer=None):
    return Finding(name=name, message=message, measured=measured, threshold=threshold,
                   why=WHY[key], tutorial=f"{TUTORIAL}, {SECTION.get(key, SECTION.get(name))}", layer=layer)


def host(t):
    """A tensor's values as a float64 host array."""
    return np.asarray(to_host(t.array if isinstance(t, Tensor) else t), dtype=np.float64)


def as_tensors(x, y):
    return (x if isinstance(x, Tensor) else Tensor(x)), (y if isinstance(y, Tensor) else Tensor(y))


def draw_batches(loader, count):
    """The first ``count`` batches of one pass (the loader is cycled when it has fewer)."""
    batches = []
    while len(batches) < count:
        before = len(batches)
        for x, y in loader:
            batches.append(as_tensors(x, y))
            if len(batches) == count:
                break
        if len(batches) == before:
            raise ValueError("diagnose: the loader produced no batches")
    return batches


def is_cross_entropy(loss_fn):
    return loss_fn is F.cross_entropy or isinstance(loss_fn, nn.CrossEntropyLoss)


def weights(model):
    """``[(name, parameter)]`` of the weight matrices and kernels (ndim >= 2), in model order:
    the layers whose gradients and updates are compared (biases and BatchNorm's gamma/beta are
    1-D, start at 0 or 1, and have no meaningful ``|g| / |W|``)."""
    return [(n, p) for n, p in model.named_parameters() if p.ndim >= 2]


# -----------------------------------------------------------------------------
# Data
# -----------------------------------------------------------------------------
def check_inputs(batches, th, report):
    x = np.concatenate([host(b[0]).ravel() for b in batches])
    mean, std = float(x.mean()), float(x.std())
    report.measurements.update(input_mean=mean, input_std=std, input_min=float(x.min()),
                               input_max=float(x.max()))
    low, high = th["input_std"]
    if abs(mean) > th["input_mean"] or not (low <= std <= high):
        report.findings.append(finding(
            "inputs_not_normalized", "inputs",
            f"the input pixels have mean {mean:.3g} and std {std:.3g} (range {x.min():.3g} .. {x.max():.3g}); "
            "normalise them, e.g. transforms.Normalize(mean, std) with the training set's statistics",
            std if abs(mean) <= th["input_mean"] else abs(mean),
            f"|mean| > {th['input_mean']:g} or std outside [{low:g}, {high:g}]"))


def check_labels(loader, batches, num_classes, th, report):
    arrays = getattr(loader, "arrays", None)
    labels = (np.asarray(to_host(arrays[1])) if arrays is not None
              else np.concatenate([host(b[1]) for b in batches]))
    labels = labels.astype(np.int64).ravel()
    counts = np.bincount(labels, minlength=num_classes)[:max(num_classes, int(labels.max()) + 1)]
    report.measurements["label_counts"] = counts.tolist()
    most, least = int(counts.max()), int(counts.min())
    ratio = math.inf if least == 0 else most / least
    report.measurements["label_imbalance"] = ratio
    if ratio > th["label_imbalance"]:
        missing = int((counts == 0).sum())
        what = (f"{missing} of the {len(counts)} classes never occur" if missing else
                f"the largest class has {most} samples, the smallest {least}")
        top = int(counts.argmax())
        report.findings.append(finding(
            "labels_imbalanced", "labels",
            f"{what} (class {top} is {most / counts.sum():.0%} of {counts.sum()} labels"
            f"{', counted over the batches drawn' if arrays is None else ''})",
            ratio, f"max/min class count > {th['label_imbalance']:g}"))


# -----------------------------------------------------------------------------
# The probe run: a few real steps with hooks on every activation
# -----------------------------------------------------------------------------
class ActivationRecorder:
    """Forward hooks on every ReLU / Sigmoid / Tanh: while ``active``, the share of dead units
    (ReLU) or saturated outputs (sigmoid, tanh) of each call is kept by layer name."""

    def __init__(self, model):
        self.active = False
        self.stats = {}                # name -> {"kind": ..., "inactive": share}
        self.handles = []
        for name, module in model.named_modules():
            if isinstance(module, RELUS + SQUASHERS):
                self.handles.append(module.register_forward_hook(self.hook_for(name or "model")))

    def hook_for(self, name):
        def hook(module, inputs, output):
            if not self.active:
                return None
            out = host(output)                                 # (N, C, H, W) or (N, F)
            if isinstance(module, RELUS):
                # a unit (a channel of a conv map, a feature of a linear layer) is dead when it is
                # <= 0 for every image and every position of the batch
                units = np.moveaxis(out, 1, 0).reshape(out.shape[1], -1) if out.ndim > 1 else out[None]
                share, kind = float((units <= 0).all(axis=1).mean()), "relu"
            elif isinstance(module, nn.Sigmoid):
                share, kind = float(((out < 0.01) | (out > 0.99)).mean()), "sigmoid"
            else:
                share, kind = float((np.abs(out) > 0.99).mean()), "tanh"
            old = self.stats.get(name)
            if old is None or share > old["inactive"]:
                self.stats[name] = {"kind": kind, "inactive": share}
            return None
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def probe_run(model, optimizer, batches, loss_fn, anomaly=False):
    """Train a copy for ``len(batches)`` steps; measure activations, gradients and updates.

    With ``anomaly=True`` the same run is replayed under ``mc.detect_anomaly`` and the
    :class:`AnomalyError` of the first non-finite operation is returned instead.
    """
    recorder = ActivationRecorder(model)
    named = weights(model)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    result = {"losses": [], "first_bad_step": None, "update_ratios": {n: [] for n, _ in named}}
    model.train()
    try:
        for step, (x, y) in enumerate(batches):
            recorder.active = step == 0                         # activations at initialisation
            if anomaly:
                with detect_anomaly():
                    loss = loss_fn(model(x), y)
                    optimizer.zero_grad()
                    loss.backward()
            else:
                loss = loss_fn(model(x), y)
                optimizer.zero_grad()
                loss.backward()
            value = float(loss.item())
            result["losses"].append(value)
            grads_finite = all(p.grad is None or np.isfinite(host(p.grad)).all() for p in model.parameters())
            if step == 0:
                result["grad_ratio"] = {n: (float(np.linalg.norm(host(p.grad)) / (np.linalg.norm(host(p))
                                                                               + 1e-12))
                                            if p.grad is not None else None) for n, p in named}
                result["frozen"] = [n for n, p in model.named_parameters() if not p.requires_grad]
                result["unused"] = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
                result["not_optimized"] = [n for n, p in model.named_parameters()
                                           if p.grad is not None and id(p) not in in_optimizer]
            if not (math.isfinite(value) and grads_finite):
                result["first_bad_step"] = step
                break
            before = {n: host(p).copy() for n, p in named}
            optimizer.step()
            for n, p in named:
                size = np.linalg.norm(before[n])
                if p.requires_grad and p.grad is not None and size > 0:
                    result["update_ratios"][n].append(float(np.linalg.norm(host(p) - before[n]) / size))
        # the activations once more after the steps: a layer can die during training
        recorder.active = True
        with no_grad():
            model(batches[0][0])
    except AnomalyError as e:
        return e
    finally:
        recorder.remove()
    result["activations"] = recorder.stats
    return result


def check_activations(stats, th, report, layers):
    dead, saturated = [], {}
    for name, s in stats.items():
        layers.setdefault(name, {}).update(kind=s["kind"], inactive=s["inactive"])
        if s["kind"] == "relu" and s["inactive"] > th["dead_relu"]:
            dead.append((name, s["inactive"]))
        elif s["kind"] != "relu" and s["inactive"] > th["saturated"]:
            saturated.setdefault(s["kind"], []).append((name, s["inactive"]))
    if dead:
        report.findings.append(finding(
            "dead_relu", "dead_relu",
            "ReLU layer(s) " + ", ".join(f"{n} ({v:.0%})" for n, v in dead)
            + ": that share of their units output 0 for every image of the batch",
            max(v for _, v in dead), f"> {th['dead_relu']:g}", layer=dead[0][0]))
    for kind, found in saturated.items():
        bounds = "0 or 1" if kind == "sigmoid" else "-1 or 1"
        report.findings.append(finding(
            f"saturated_{kind}", "saturated",
            f"{kind} layer(s) " + ", ".join(f"{n} ({v:.0%})" for n, v in found)
            + f": that share of their outputs are within 0.01 of {bounds}",
            max(v for _, v in found), f"> {th['saturated']:g}", layer=found[0][0]))


def check_gradients(ratios, th, report, layers):
    named = [(n, r) for n, r in ratios.items() if r is not None]
    for n, r in named:
        layers.setdefault(n, {}).update(kind=layers.get(n, {}).get("kind", "weight"), grad_ratio=r)
    if not named:
        return
    values = np.array([r for _, r in named])
    bad = [n for n, r in named if not math.isfinite(r) or r > th["exploding"]]
    first_name, first = named[0]
    if bad:
        report.findings.append(finding(
            "exploding_gradients", "exploding",
            f"|grad|/|weight| of {bad[0]} is {ratios[bad[0]]:.3g} at the first step",
            ratios[bad[0]], f"> {th['exploding']:g} (or not finite)", layer=bad[0]))
        return
    largest, smallest = float(values.max()), float(values.min())
    if len(named) > 1 and first < th["vanishing"] * largest:
        top = named[int(values.argmax())][0]
        report.findings.append(finding(
            "vanishing_gradients", "vanishing",
            f"|grad|/|weight| of the first layer {first_name} is {first:.2e}, "
            f"{first / largest:.1e} x that of {top} ({largest:.2e})",
            first / largest, f"< {th['vanishing']:g}", layer=first_name))
    elif len(named) > 1 and smallest > 0 and first > th["exploding"] * smallest:
        low = named[int(values.argmin())][0]
        report.findings.append(finding(
            "exploding_gradients", "exploding",
            f"|grad|/|weight| of the first layer {first_name} is {first:.2e}, "
            f"{first / smallest:.1e} x that of {low} ({smallest:.2e})",
            first / smallest, f"> {th['exploding']:g}", layer=first_name))


def check_updates(update_ratios, th, report, layers):
    low, high = th["update_ratio"]
    small, large = [], []
    for n, rs in update_ratios.items():
        rs = [r for r in rs if math.isfinite(r)]
        if not rs:
            continue
        ratio = float(np.median(rs))                        # over the steps: robust to one odd step
        layers.setdefault(n, {}).update(update_ratio=ratio)
        if ratio < low:
            small.append((n, ratio))
        elif ratio > high:
            large.append((n, ratio))
    for found, key, pick in ((small, "update_small", min), (large, "update_large", max)):
        if found:
            report.findings.append(finding(
                "update_ratio", key,
                "each step changes " + ", ".join(f"{n} by {v:.1e}" for n, v in found)
                + " of its size (median over the probe steps; ~1e-3 is healthy)",
                pick(v for _, v in found), f"outside [{low:g}, {high:g}]", layer=found[0][0]))


def check_no_gradient(probe, expect_frozen, report):
    def expected(name):
        return any(name == e or name.startswith(e.rstrip(".") + ".") for e in expect_frozen)
    frozen = [n for n in probe["frozen"] if not expected(n)]
    for key, names, text in (
            ("frozen", frozen, "requires_grad=False: frozen"),
            ("unused", probe["unused"], "received no gradient: the loss does not depend on"),
            ("not_optimized", probe["not_optimized"], "received a gradient but is not in the optimizer:")):
        if names:
            report.findings.append(finding(
                f"{key}_parameters", key,
                f"{len(names)} parameter(s) {text} {', '.join(names)}",
                len(names), "0 parameters", layer=names[0]))


def check_loss_jump(probe, loss_fn, fresh, loader, th, report, lr_test, seed):
    losses = probe["losses"]
    finite = [v for v in losses if math.isfinite(v)]
    if not losses:
        return
    start = max(losses[0], 0.5) if math.isfinite(losses[0]) else math.nan
    worst = max(finite) if finite else math.nan
    ratio = math.inf if (probe["first_bad_step"] is not None or not finite) else worst / start
    report.measurements["loss_jump"] = ratio
    if ratio <= th["loss_jump"]:
        return
    m, o = fresh()
    lrs = sorted({float(g["lr"]) for g in o.param_groups})
    lr_text = ", ".join(f"{v:g}" for v in lrs)
    message = (f"with lr {lr_text} the loss went from {losses[0]:.3g} to "
               + (f"a non-finite value at step {probe['first_bad_step']}" if probe["first_bad_step"] is not None
                  else f"{worst:.3g} within {len(losses)} steps"))
    if lr_test:
        try:
            found = lr_find(m, o, loader, start_lr=1e-6, end_lr=10.0, num_iter=50, seed=seed, loss_fn=loss_fn)
            report.measurements["lr_find_suggestion"] = found.suggestion
            message += f"; the learning-rate range test suggests lr {found.suggestion:.1e}"
        except RuntimeError as e:
            message += f"; the learning-rate range test failed too ({str(e).splitlines()[0]})"
    report.findings.append(finding("loss_jump", "lr", message, ratio,
                                   f"> {th['loss_jump']:g} (max loss / first loss)"))


# -----------------------------------------------------------------------------
# Initial loss, overfitting one batch, BatchNorm at evaluation
# -----------------------------------------------------------------------------
def check_initial_loss(model, batches, loss_fn, num_classes, th, report):
    model.train()
    with no_grad():
        values = [float(loss_fn(model(x), y).item()) for x, y in batches[:3]]
    loss, expected = float(np.mean(values)), math.log(num_classes)
    report.measurements.update(initial_loss=loss, expected_initial_loss=expected)
    off = abs(loss - expected) / expected
    if not off <= th["initial_loss"]:
        report.findings.append(finding(
            "initial_loss", "initial_loss",
            f"the loss before training is {loss:.4g}; cross-entropy over {num_classes} classes "
            f"with near-uniform predictions starts at ln {num_classes} = {expected:.3f}",
            off, f"> {th['initial_loss']:g} (|loss - ln C| / ln C)"))


def check_overfit(model, optimizer, batches, loss_fn, steps, size, th, report):
    x, y = batches[0]
    x, y = x[:size], y[:size]
    model.train()
    for m in model.modules():             # regularisation off: the question is whether it *can* fit
        if isinstance(m, nn.Dropout):
            m.training = False
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with no_grad():
        out = model(x)
        loss = float(loss_fn(out, y).item())
    acc = float((host(out).argmax(axis=1) == host(y)).mean())
    report.measurements.update(overfit_accuracy=acc, overfit_loss=loss, overfit_steps=steps,
                               overfit_batch=int(len(host(y))))
    if not acc >= th["overfit_accuracy"]:
        report.findings.append(finding(
            "cannot_overfit", "overfit",
            f"after {steps} steps on the same {len(host(y))} images the model gets {acc:.0%} of them "
            f"right (loss {loss:.3g})", acc, f"< {th['overfit_accuracy']:g} (accuracy)"))


def check_batchnorm_eval(model, loader, eval_fn, report):
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, BATCHNORMS)]
    if not bns:
        return                                 # nothing to watch: the check does not run
    report.checks.append("batchnorm_eval")
    calls = {"train": 0, "all": 0}
    names = []

    def hook(module, inputs, output):
        calls["all"] += 1
        if module.training:
            calls["train"] += 1
            if module not in [m for _, m in names]:
                names.append((next(n for n, m in bns if m is module), module))
    before = {n: host(m.running_mean).copy() for n, m in bns}
    handles = [m.register_forward_hook(hook) for _, m in bns]
    model.train()                           # as a model is after its training loop
    try:
        eval_fn(model, loader)
    finally:
        for h in handles:
            h.remove()
    report.measurements["batchnorm_eval_calls"] = dict(calls)
    if calls["train"]:
        moved = max(float(np.abs(host(m.running_mean) - before[n]).max()) for n, m in names)
        report.findings.append(finding(
            "batchnorm_train_mode_at_eval", "batchnorm_eval",
            f"{calls['train']} of {calls['all']} BatchNorm forward calls during evaluation ran in training "
            f"mode ({', '.join(n for n, _ in names)}); their running_mean moved by up to {moved:.3g}",
            calls["train"] / calls["all"], "> 0 (share of BatchNorm calls in training mode)",
            layer=names[0][0]))


# -----------------------------------------------------------------------------
# The whole examination
# -----------------------------------------------------------------------------
def diagnose(model, loader, loss_fn=None, optimizer=None, *, steps=10, overfit_steps=100, overfit_batch=10,
             at_init=True, eval_fn=None, expect_frozen=(), lr_test=True, seed=0, thresholds=None) -> Report:
    """Run a few training steps on a copy of ``model`` with hooks; return a :class:`Report`.

    Args:
        model: the network, as you are about to train it (or a trained one with
            ``at_init=False``). Never changed: the doctor works on deep copies.
        loader: training batches ``(x, y)``, ``y`` integer class indices.
        loss_fn: ``loss_fn(logits, y)``; default ``F.cross_entropy``. The
            initial-loss check applies to cross-entropy only.
        optimizer: the optimizer you will train with (its class, learning
            rates and state are what the probe steps use; never stepped itself).
            Default: Adam, lr 1e-3.
        steps: how many batches the probe run trains on.
        overfit_steps, overfit_batch: the overfit-one-batch test.
        at_init: False for a trained model (a checkpoint): skips the
            initial-loss check, which only holds before training.
        eval_fn: your evaluation function, ``eval_fn(model, loader)``; the
            doctor calls it on a copy left in training mode, as after a training
            loop, and reports BatchNorm layers that run in training mode inside
            it. Without it there is no evaluation to watch and the check is skipped.
        expect_frozen: names (or prefixes, e.g. ``"0."``) of parameters you froze
            on purpose; other frozen parameters are reported.
        lr_test: when the loss jumps, run ``tune.lr_find`` for a suggestion.
        seed: the batches drawn and the dropout masks of the probe.
        thresholds: overrides of ``THRESHOLDS`` (see the module docstring).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"diagnose: expected an nn.Module as model, got {type(model).__name__}")
    th = dict(THRESHOLDS)
    unknown = sorted(set(thresholds or {}) - set(th))
    if unknown:
        raise ValueError(f"diagnose: unknown threshold(s) {', '.join(unknown)}; expected some of {', '.join(th)}")
    th.update(thresholds or {})
    if int(steps) < 2:
        raise ValueError(f"diagnose: steps must be >= 2, got {steps}")
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    if optimizer is None:
        optimizer = optim.Adam(model.parameters(), lr=1e-3)
    pristine = copy.deepcopy((model, optimizer))       # every check starts from a copy of this

    def fresh():
        return copy.deepcopy(pristine)

    report = Report()
    saved_rng = copy.deepcopy(rng.get_rng_state())
    quiet = np.errstate(over="ignore", invalid="ignore", divide="ignore")   # non-finite values are findings here
    quiet.__enter__()
    try:
        rng.manual_seed(seed)
        batches = draw_batches(loader, int(steps))
        m, _ = fresh()
        with no_grad():
            m.eval()
            num_classes = int(m(batches[0][0]).shape[1])
        report.measurements["num_classes"] = num_classes
        layers = report.measurements.setdefault("layers", {})

        check_inputs(batches[:3], th, report)
        check_labels(loader, batches, num_classes, th, report)
        report.checks += ["inputs", "labels"]
        if at_init and is_cross_entropy(loss_fn):
            rng.manual_seed(seed)
            check_initial_loss(fresh()[0], batches, loss_fn, num_classes, th, report)
            report.checks.append("initial_loss")

        rng.manual_seed(seed)
        probe = probe_run(*fresh(), batches, loss_fn)
        report.measurements["losses"] = probe["losses"]
        # a loss that is not finite before any update: the NaN finding below says where it comes
        # from; gradients computed from it and a "jump" from it would only repeat it
        nan_from_start = not math.isfinite(probe["losses"][0])
        check_activations(probe["activations"], th, report, layers)
        if not nan_from_start:
            check_gradients(probe["grad_ratio"], th, report, layers)
        check_updates(probe["update_ratios"], th, report, layers)
        check_no_gradient(probe, expect_frozen, report)
        report.checks += ["activations", "gradients", "updates", "no_gradient"]
        if probe["first_bad_step"] is not None:
            rng.manual_seed(seed)
            error = probe_run(*fresh(), batches, loss_fn, anomaly=True)
            lines = str(error).splitlines() if isinstance(error, AnomalyError) else ["no operation was caught"]
            where = "; ".join([lines[0]] + [l.strip() for l in lines if l.strip().startswith("created at")])
            report.findings.append(Finding(
                name="nan", message=f"the loss or a gradient stopped being finite at step "
                f"{probe['first_bad_step']}: {where}", measured=probe["first_bad_step"],
                threshold="finite at every step", why=WHY["nan"], tutorial=f"{TUTORIAL}, {SECTION['nan']}"))
            report.measurements["anomaly"] = str(error) if isinstance(error, AnomalyError) else None
        report.checks.append("nan")
        if not nan_from_start:
            rng.manual_seed(seed)
            check_loss_jump(probe, loss_fn, fresh, loader, th, report, lr_test, seed)
            report.checks.append("learning_rate")

        rng.manual_seed(seed)
        check_overfit(*fresh(), batches, loss_fn, int(overfit_steps), int(overfit_batch), th, report)
        report.checks.append("overfit")
        if eval_fn is not None:
            rng.manual_seed(seed)
            check_batchnorm_eval(fresh()[0], loader, eval_fn, report)
    finally:
        quiet.__exit__(None, None, None)
        rng.set_rng_state(saved_rng)
    return report
