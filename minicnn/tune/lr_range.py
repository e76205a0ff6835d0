"""The learning-rate range test (``lr_find``): the first hyper-parameter to tune.

**Parameters vs hyper-parameters.** Training chooses the *parameters* (the
weights) by gradient descent. Everything training cannot choose for itself —
the learning rate, the batch size, the optimizer, weight decay, dropout, the
kernel size and width of the network, augmentation — is a *hyper-parameter*,
chosen from outside by comparing trained models on held-out **validation**
data (never the test set, which must stay an unbiased estimate).

**The learning-rate range test** (Smith 2017, "Cyclical learning rates";
fastai's ``lr_find``). Train for ``num_iter`` mini-batches while the learning
rate grows exponentially from ``start_lr`` to ``end_lr``::

    lr_i = start_lr * (end_lr / start_lr) ** (i / (num_iter - 1)),   i = 0 .. num_iter-1

and record the loss. The raw losses are noisy, so they are smoothed with an
exponential moving average, bias-corrected as in Adam::

    avg_i = smooth * avg_{i-1} + (1 - smooth) * loss_i,     smoothed_i = avg_i / (1 - smooth ** (i+1))

The sweep stops early once ``smoothed_i > diverge * min(smoothed)``: the
learning rate is so large that training has blown up. Three readings of the
curve suggest a learning rate (all on the smoothed curve, over log lr):

* ``steepest`` — where the loss falls fastest (most negative slope), before the minimum
  (the first tenth of the curve, where the average is still settling, is skipped);
* ``minimum/10`` — a tenth of the lr at the lowest loss (the loss is lowest just
  before it explodes, so one order of magnitude back is a safe choice);
* ``valley`` — fastai's default: the longest stretch where the loss keeps
  decreasing, and a point two thirds of the way down it.

The test trains the model, so :func:`lr_find` puts the model's weights and
buffers, the optimizer's state (learning rates included) and the framework's
random generator back exactly as they were: you call it, then train from the
same start. It draws its batches and dropout masks from ``seed`` so that the
suggestions do not jump between calls.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np

from .. import functional as F
from .. import rng
from ..backend import to_host
from ..autograd.tensor import Tensor

__all__ = ["lr_find", "LRFindResult", "exponential_lrs", "suggest_steepest", "suggest_minimum",
           "suggest_valley"]


# -----------------------------------------------------------------------------
# The learning-rate range test
# -----------------------------------------------------------------------------
def exponential_lrs(start_lr, end_lr, num_iter):
    """``num_iter`` learning rates from ``start_lr`` to ``end_lr``, equally spaced in log lr."""
    i = np.arange(num_iter, dtype=np.float64)
    return start_lr * (end_lr / start_lr) ** (i / (num_iter - 1))


def suggest_steepest(lrs, smoothed):
    """The lr of the most negative slope d(loss)/d(log lr), between the first tenth of the
    curve (where the moving average is still settling and its wiggles look steep) and its minimum."""
    stop = int(np.argmin(smoothed)) + 1
    skip = min(len(smoothed) // 10, max(stop - 2, 0))
    if stop - skip < 2:
        return float(lrs[min(skip, len(lrs) - 1)])
    slope = np.gradient(np.asarray(smoothed[skip:stop]), np.log(np.asarray(lrs[skip:stop])))
    return float(lrs[skip + int(np.argmin(slope))])


def suggest_minimum(lrs, smoothed):
    """A tenth of the lr at the lowest smoothed loss (at least the first lr swept)."""
    return float(max(lrs[0], lrs[int(np.argmin(smoothed))] / 10.0))   # never below the sweep


def suggest_valley(lrs, smoothed):
    """fastai's "valley": the longest decreasing run of the curve, 2/3 of the way down it.

    ``lds[i]`` is the length of the longest decreasing subsequence ending at
    point i (O(n^2), n is about 100); the longest one spans
    ``[max_start, max_end]``.
    """
    losses = np.asarray(smoothed)
    n = len(losses)
    lds = [1] * n
    max_start, max_end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max(0, min(n - 1, max_start + int(sections) + int(sections / 2)))
    return float(lrs[idx])


@dataclass
class LRFindResult:
    """What :func:`lr_find` measured.

    ``lrs``, ``losses`` (raw) and ``smoothed_losses`` have one entry per step
    taken; ``suggestions`` maps ``"steepest"``, ``"minimum/10"`` and ``"valley"``
    to a learning rate; ``suggestion`` is the valley one (fastai's default).
    ``diverged`` says whether the sweep stopped early, and ``schedule`` holds
    all ``num_iter`` planned learning rates.
    """
    lrs: np.ndarray
    losses: np.ndarray
    smoothed_losses: np.ndarray
    suggestions: dict
    schedule: np.ndarray
    diverged: bool
    start_lr: float
    end_lr: float
    extra: dict = field(default_factory=dict)

    @property
    def suggestion(self):
        return self.suggestions["valley"]

    def __repr__(self):
        s = ", ".join(f"{k} {v:.2e}" for k, v in self.suggestions.items())
        return (f"LRFindResult({len(self.lrs)} of {len(self.schedule)} steps"
                f"{', diverged' if self.diverged else ''}; suggestions: {s})")

    def plot(self, path=None, ax=None, title="learning-rate range test"):
        """Loss vs lr (log axis), raw and smoothed, every suggestion marked.

        Writes a PNG when ``path`` is given (returns the path); otherwise draws
        on ``ax`` (or a new figure) and returns the axes.
        """
        import matplotlib
        if path is not None and ax is None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        own = ax is None
        if own:
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
        ax.plot(self.lrs, self.losses, color="0.75", lw=1, label="loss (raw)")
        ax.plot(self.lrs, self.smoothed_losses, color="C0", lw=2, label="loss (smoothed)")
        markers = {"steepest": ("C1", "v"), "minimum/10": ("C2", "s"), "valley": ("C3", "o")}
        for name, lr in self.suggestions.items():
            color, marker = markers.get(name, ("k", "x"))
            y = float(np.interp(np.log(lr), np.log(self.lrs), self.smoothed_losses))
            ax.axvline(lr, color=color, ls=":", lw=1)
            ax.plot([lr], [y], marker=marker, color=color, ms=8, ls="none", label=f"{name}: {lr:.1e}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("training loss")
        top = float(np.max(self.smoothed_losses[: max(1, int(np.argmin(self.smoothed_losses)) + 1)]))
        lo = float(np.min(self.smoothed_losses))
        ax.set_ylim(lo - 0.1 * (top - lo + 1e-12), top + 0.5 * (top - lo + 1e-12))
        ax.set_title(title)
        ax.legend(fontsize=8)
        if path is not None:
            fig = ax.figure
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            if own:
                plt.close(fig)
            return path
        return ax


def _snapshot(model, optimizer):
    params = [p for p in model.parameters()]
    return {
        "model": {k: np.array(to_host(v.array), copy=True) for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else np.array(to_host(p.grad.array), copy=True) for p in params],
        "optimizer": optimizer.state_dict(),                 # host copies (and every group's lr)
        "step_count": getattr(optimizer, "_step_count", None),
        "rng": copy.deepcopy(rng.get_rng_state()),
        "training": {id(m): m.training for m in model.modules()},
    }


def _restore(model, optimizer, snap):
    from ..backend import to_device
    model.load_state_dict(snap["model"])
    for p, g in zip(model.parameters(), snap["grads"]):
        p.grad = None if g is None else Tensor(to_device(g), dtype=g.dtype)
    optimizer.load_state_dict(snap["optimizer"])
    if snap["step_count"] is not None:
        optimizer._step_count = snap["step_count"]
    rng.set_rng_state(snap["rng"])
    for m in model.modules():
        m.training = snap["training"].get(id(m), m.training)


def lr_find(model, optimizer, loader, start_lr=1e-7, end_lr=10, num_iter=100, smooth=0.98,
            diverge=4.0, seed=0, loss_fn=F.cross_entropy, train_step=None) -> LRFindResult:
    """Learning-rate range test (see the module docstring); returns an :class:`LRFindResult`.

    Args:
        model, optimizer: what you are about to train. Every parameter group's
            lr is set to the swept value at each step; afterwards model,
            optimizer and the framework's random generator are restored.
        loader: training batches ``(x, y)``; cycled if it has fewer than
            ``num_iter`` batches.
        start_lr, end_lr, num_iter: the exponential schedule (``num_iter >= 2``).
        smooth: the moving-average factor of the smoothed loss, in [0, 1).
        diverge: stop once the smoothed loss exceeds ``diverge`` x its minimum.
        seed: the batch order and dropout masks of the sweep (None: continue the
            current generator instead — the suggestions then vary between calls).
        train_step: ``step(model, optimizer, x, y, loss_fn) -> (loss, logits)``;
            default :func:`minicnn.train.standard_step`.
    """
    from ..train.loop import standard_step
    if not (start_lr > 0 and end_lr > start_lr):
        raise ValueError(f"lr_find: need 0 < start_lr < end_lr, got start_lr={start_lr}, end_lr={end_lr}")
    if int(num_iter) != num_iter or num_iter < 2:
        raise ValueError(f"lr_find: num_iter must be an int >= 2, got {num_iter}")
    if not (0.0 <= smooth < 1.0):
        raise ValueError(f"lr_find: smooth must be in [0, 1), got {smooth}")
    if not diverge > 1.0:
        raise ValueError(f"lr_find: diverge must be > 1, got {diverge}")
    step = standard_step if train_step is None else train_step
    schedule = exponential_lrs(float(start_lr), float(end_lr), int(num_iter))
    snap = _snapshot(model, optimizer)
    lrs, losses, smoothed = [], [], []
    diverged = False
    try:
        if seed is not None:
            rng.manual_seed(int(seed))
        model.train()
        batches = iter(loader)
        avg, best = 0.0, math.inf
        for i, lr in enumerate(schedule):
            try:
                x, y = next(batches)
            except StopIteration:                      # a new epoch of the loader
                batches = iter(loader)
                x, y = next(batches)
            for group in optimizer.param_groups:
                group["lr"] = float(lr)
            loss, _ = step(model, optimizer, x, y, loss_fn)
            value = float(loss.item())
            lrs.append(float(lr))
            losses.append(value)
            if not math.isfinite(value):               # exploded outright: keep what came before
                lrs.pop(), losses.pop()
                diverged = True
                break
            avg = smooth * avg + (1 - smooth) * value
            s = avg / (1 - smooth ** (i + 1))
            smoothed.append(s)
            best = min(best, s)
            if s > diverge * best:
                diverged = True
                break
    finally:
        _restore(model, optimizer, snap)
    if len(lrs) < 2:
        raise RuntimeError(f"lr_find: the loss was not finite from the first steps (start_lr={start_lr}); "
                           "start lower")
    lrs, losses, smoothed = np.array(lrs), np.array(losses), np.array(smoothed)
    suggestions = {"steepest": suggest_steepest(lrs, smoothed),
                   "minimum/10": suggest_minimum(lrs, smoothed),
                   "valley": suggest_valley(lrs, smoothed)}
    return LRFindResult(lrs=lrs, losses=losses, smoothed_losses=smoothed, suggestions=suggestions,
                        schedule=schedule, diverged=diverged, start_lr=float(start_lr), end_lr=float(end_lr))
