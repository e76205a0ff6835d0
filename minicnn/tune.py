"""Hyper-parameter tuning: the learning-rate range test, and the search behind ``minicnn tune``.

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

**The search** (:func:`run_study`, behind ``minicnn tune``) is Optuna's
(https://optuna.org): a *study* is a set of *trials*, each one training run
with hyper-parameters drawn by a *sampler* — a grid, random draws, or TPE
(Bergstra et al. 2011, a Bayesian method that models which values gave good
results and samples near them). A *pruner* stops trials whose per-epoch
validation accuracy is below the median of earlier trials at the same epoch.
The study lives in a database (SQLite by default), so a study continues where
it stopped and several processes can share one. Optuna is imported only when a
search runs: ``pip install "minicnn[tune]"``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np

from . import functional as F
from . import rng
from .backend import to_host
from .tensor import Tensor

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
        "model": {k: np.array(to_host(v.data), copy=True) for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else np.array(to_host(p.grad.data), copy=True) for p in params],
        "optimizer": optimizer.state_dict(),                 # host copies (and every group's lr)
        "step_count": getattr(optimizer, "_step_count", None),
        "rng": copy.deepcopy(rng.get_rng_state()),
        "training": {id(m): m.training for m in model.modules()},
    }


def _restore(model, optimizer, snap):
    from .backend import to_device
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
    from .train import standard_step
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


# -----------------------------------------------------------------------------
# The search space: "name=spec" strings -> dimensions
# -----------------------------------------------------------------------------
class SpaceError(ValueError):
    """A search-space string that cannot be read; the message names the token."""


_TRUE = {"on", "true", "yes", "1"}
_FALSE = {"off", "false", "no", "0"}
NOT_SEARCHABLE = {"out", "resume", "config", "no_progress", "data_dir", "no_download", "func"}


@dataclass
class Dimension:
    """One searched option: ``kind`` is "float", "int" or "categorical"."""
    name: str
    kind: str
    low: float = None
    high: float = None
    log: bool = False
    choices: tuple = ()
    token: str = ""

    def suggest(self, trial):
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def describe(self):
        if self.kind == "categorical":
            return f"{self.name} in {{{', '.join(map(str, self.choices))}}}"
        return f"{self.name} in [{self.low:g}, {self.high:g}]{' (log)' if self.log else ''}{' (int)' if self.kind == 'int' else ''}"


def _is_int_literal(text):
    t = text.strip().lstrip("+-")
    return t.isdigit()


def _number(text, token):
    try:
        return float(text)
    except ValueError:
        raise SpaceError(f"search space {token!r}: {text.strip()!r} is not a number") from None


def _convert(value, action, name, token):
    """One categorical value, converted the way the train option would convert it."""
    text = value.strip()
    if not text:
        raise SpaceError(f"search space {token!r}: an empty value in the list")
    if action.nargs == 0:                                  # a store_true flag such as --augment
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise SpaceError(f"search space {token!r}: {text!r} is not on/off (the option {name} is a switch)")
    conv = action.type or str
    try:
        out = conv(text)
    except (TypeError, ValueError):
        kind = getattr(conv, "__name__", "value")
        raise SpaceError(f"search space {token!r}: {text!r} is not a valid {kind} for {name}") from None
    if action.choices is not None and out not in action.choices:
        raise SpaceError(f"search space {token!r}: {text!r} is not one of {name}'s choices "
                         f"({', '.join(map(str, action.choices))})")
    return out


def parse_dimension(token, options):
    """``"lr=1e-4:1e-1:log"`` -> a :class:`Dimension`; ``options`` maps option names to argparse actions.

    Forms: ``name=a,b,c`` (a list: categorical), ``name=lo:hi`` (uniform; integer
    when both ends are integers), ``name=lo:hi:log`` (log-uniform). ``name`` is a
    train option, written with ``_`` or ``-`` (``batch_size``, ``batch-size``).
    """
    if not isinstance(token, str) or "=" not in token:
        raise SpaceError(f"search space {token!r}: expected name=values, e.g. lr=1e-4:1e-1:log "
                         "or batch_size=32,64,128")
    key, spec = token.split("=", 1)
    name = key.strip().lstrip("-").replace("-", "_")
    if not name:
        raise SpaceError(f"search space {token!r}: no option name before '='")
    if name in NOT_SEARCHABLE or name not in options:
        known = ", ".join(sorted(k for k in options if k not in NOT_SEARCHABLE))
        raise SpaceError(f"search space {token!r}: {key.strip()!r} is not a train option one can search "
                         f"(options: {known})")
    action = options[name]
    spec = spec.strip()
    if not spec:
        raise SpaceError(f"search space {token!r}: no values after '='")
    if ":" in spec and "," not in spec:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip().lower() != "log"):
            raise SpaceError(f"search space {token!r}: a range is lo:hi or lo:hi:log, got {spec!r}")
        if action.nargs == 0 or action.choices is not None or action.type not in (int, float):
            raise SpaceError(f"search space {token!r}: {name} is not numeric; give a list, "
                             f"e.g. {name}=a,b")
        log = len(parts) == 3
        low, high = _number(parts[0], token), _number(parts[1], token)
        if not low < high:
            raise SpaceError(f"search space {token!r}: the range needs lo < hi, got {parts[0]} and {parts[1]}")
        if log and low <= 0:
            raise SpaceError(f"search space {token!r}: a log range needs lo > 0, got {parts[0]}")
        as_int = action.type is int or (_is_int_literal(parts[0]) and _is_int_literal(parts[1])
                                        and action.type is not float)
        if action.type is int and not (_is_int_literal(parts[0]) and _is_int_literal(parts[1])):
            raise SpaceError(f"search space {token!r}: {name} takes integers, got {spec!r}")
        return Dimension(name, "int" if as_int else "float", low, high, log, token=token)
    values = [_convert(v, action, name, token) for v in spec.split(",")]
    if len(set(values)) != len(values):
        raise SpaceError(f"search space {token!r}: a value is listed twice")
    return Dimension(name, "categorical", choices=tuple(values), token=token)


def _load_space_file(path):
    """A JSON or TOML table ``{name: "lo:hi:log" | [v1, v2, ...]}`` -> tokens ``name=spec``."""
    import json
    import os
    if not os.path.isfile(path):
        raise SpaceError(f"search space file not found: {path}")
    try:
        if path.lower().endswith(".toml"):
            import tomllib
            with open(path, "rb") as f:
                table = tomllib.load(f)
        else:
            with open(path) as f:
                table = json.load(f)
    except Exception as e:
        raise SpaceError(f"search space file {path}: cannot read it ({type(e).__name__}: {e})") from None
    table = table.get("space", table) if isinstance(table, dict) else table
    if not isinstance(table, dict):
        raise SpaceError(f"search space file {path}: expected a table of name = values")
    tokens = []
    for k, v in table.items():
        if isinstance(v, (list, tuple)):
            words = [("on" if x else "off") if isinstance(x, bool) else str(x) for x in v]
            tokens.append(f"{k}={','.join(words)}")
        elif isinstance(v, str):
            tokens.append(f"{k}={v}")
        else:
            raise SpaceError(f"search space file {path}: {k} = {v!r}: expected a list or a string "
                             "such as \"1e-4:1e-1:log\"")
    return tokens


def parse_space(tokens, options):
    """Many ``name=spec`` tokens (or paths of JSON/TOML files of them) -> ``{name: Dimension}``."""
    import os
    expanded = []
    for token in tokens or ():
        if "=" not in token and (token.lower().endswith((".json", ".toml")) or os.path.isfile(token)):
            expanded.extend(_load_space_file(token))
        else:
            expanded.append(token)
    space = {}
    for token in expanded:
        dim = parse_dimension(token, options)
        if dim.name in space:
            raise SpaceError(f"search space {token!r}: {dim.name} is already searched "
                             f"({space[dim.name].token!r})")
        space[dim.name] = dim
    return space


def grid_of(space):
    """The grid sampler's space ``{name: [values]}``; every dimension must be a list."""
    grid = {}
    for dim in space.values():
        if dim.kind != "categorical":
            raise SpaceError(f"search space {dim.token!r}: grid search needs a list of values "
                             f"(e.g. {dim.name}=a,b,c), not a range")
        grid[dim.name] = list(dim.choices)
    return grid


# -----------------------------------------------------------------------------
# The study database
# -----------------------------------------------------------------------------
def open_storage(url, heartbeat_interval=5, grace_period=30):
    """An Optuna storage for ``url``, safe for several processes at once.

    * ``sqlite:///path.db`` — SQLite in WAL mode with a 60 s busy timeout, so
      concurrent writers wait for each other instead of failing with
      "database is locked";
    * ``journal:path.log`` — Optuna's journal file storage (an append-only
      log with file locks; the storage Optuna recommends for several
      processes without a database server);
    * any other SQLAlchemy URL (``postgresql://...``) — as Optuna opens it.

    With a heartbeat, a trial whose process was killed is marked FAIL by the
    next worker that starts once ``grace_period`` seconds have passed.
    """
    import os
    import sqlite3
    import optuna
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        try:
            from optuna.storages.journal import JournalFileBackend          # Optuna >= 4
        except ImportError:                                                # Optuna 3.x
            from optuna.storages import JournalFileStorage as JournalFileBackend
        path = url[len("journal:"):]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    import contextlib
    import warnings
    engine_kwargs, lock = {}, contextlib.nullcontext()
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            lock = _file_lock(path + ".lock")
        engine_kwargs = {"connect_args": {"timeout": 60}}
    # Two processes opening a new database at once would both create its tables
    # ("table ... already exists"): the first to take the lock creates them.
    with lock:
        if url.startswith("sqlite:///") and path and path != ":memory:":
            con = sqlite3.connect(path, timeout=60)
            try:
                con.execute("PRAGMA journal_mode=WAL")     # persistent: readers never block writers
            finally:
                con.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)   # heartbeat_interval
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                              heartbeat_interval=heartbeat_interval,
                                              grace_period=grace_period)


def _file_lock(path):
    """An exclusive lock on ``path`` (POSIX flock; no lock where fcntl is missing)."""
    import contextlib
    try:
        import fcntl
    except ImportError:                                    # Windows: one process at a time is assumed
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def locked():
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    return locked()


def make_sampler(kind, space, seed):
    import optuna
    if kind == "grid":
        return optuna.samplers.GridSampler(grid_of(space), seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    raise SpaceError(f"unknown sampler {kind!r}; expected grid, random or tpe")


def make_pruner(kind, startup_trials=3):
    import optuna
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise SpaceError(f"unknown pruner {kind!r}; expected median or none")


def sampler_seed(seed, n_existing, worker=0):
    """A seed for this run's sampler: re-running a study must not redraw the same trials."""
    return int(np.random.SeedSequence([int(seed), int(n_existing), int(worker)]).generate_state(1)[0])
