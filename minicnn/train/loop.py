"""The training loop: fit, evaluate, predict, checkpoints, resume, early stopping.

One epoch is: draw the epoch's sample order, then for each batch
``forward -> loss -> zero_grad -> backward -> optimizer.step``; then evaluate
on the validation set, step the schedule, save a checkpoint, and check early
stopping. A tqdm bar shows loss, accuracy, learning rate and images/s.

Checkpoints hold everything that determines the rest of the run — the model,
optimizer and scheduler states, the epoch and batch position, the epoch's
sample order, the framework's RNG state and the history — so that a run that
is interrupted (even mid-epoch, by Ctrl-C) and resumed ends with exactly the
same weights as one that never stopped. They are written atomically (a temp
file, then ``os.replace``): a crash mid-write never leaves a half checkpoint.

Checkpoints are safetensors files (see :mod:`minicnn.io`): the
arrays as tensors named by role (``model.conv1.weight``,
``optimizer.state.0.exp_avg``, ...), everything else as JSON metadata.
Loading one never runs code, and PyTorch reads the weights with
``safetensors.torch.load_file`` (strip the ``model.`` prefix).

Training stops at the first non-finite loss (``nan_policy="stop"``), before
anything is written over the last good checkpoints.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time

import numpy as np

from .. import functional as F
from .. import rng
from .. import io
from . import schema
from ..backend import get_backend, to_host
from ..nn.fusion import fuse as fuse_model
from ..autograd.tensor import Tensor, no_grad

CHECKPOINT_VERSION = io.FORMAT_VERSION   # 1 was pickle; 2 is safetensors
CheckpointError = io.CheckpointError


# -----------------------------------------------------------------------------
# Checkpoints
# -----------------------------------------------------------------------------
def _host_tree(obj):
    """Copy every backend array / Tensor inside nested dicts/lists to host NumPy."""
    if isinstance(obj, Tensor):
        return np.array(to_host(obj.array))
    if hasattr(obj, "__array__") and not isinstance(obj, (np.generic,)) and hasattr(obj, "shape"):
        return np.array(to_host(obj))
    if isinstance(obj, dict):
        return {k: _host_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_tree(v) for v in obj)
    return obj


def save_checkpoint(path, model, optimizer=None, scheduler=None, **extra):
    """Write a checkpoint atomically as a safetensors file; returns the path.

    Everything is copied to host NumPy first, so a checkpoint made on a GPU
    loads on a CPU and back. ``extra`` holds plain values (epoch, history,
    config, sample order, ...): dicts, lists, tuples, arrays, numbers, strings.
    """
    state = {
        "version": CHECKPOINT_VERSION,
        "model": _host_tree(model.state_dict()),
        "model_class": type(model).__name__,
        "optimizer": None if optimizer is None else _host_tree(optimizer.state_dict()),
        "scheduler": None if scheduler is None else _host_tree(scheduler.state_dict()),
        "rng_state": rng.get_rng_state(),
        "backend": get_backend(),
        **_host_tree(extra),
    }
    return io.save_file(state, path, kind="checkpoint")


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (a dict); never runs code.

    A pickle (an old minicnn checkpoint, a ``torch.save`` file) or any other
    file raises :class:`CheckpointError` (a ``ValueError``) saying what it is.
    """
    state, info = io.load_file(path)
    if info.get("kind") != "checkpoint" or not isinstance(state.get("model"), dict) \
            or "version" not in state:
        raise CheckpointError(f"{os.fspath(path)} is a minicnn safetensors file but not a training "
                              "checkpoint (no model state inside; load it with mc.load)")
    return state


# -----------------------------------------------------------------------------
# Evaluation
# -----------------------------------------------------------------------------
def _count_correct(logits, y):
    """How many rows' argmax equal the label; computed where the data lives, one number back."""
    return int((logits.array.argmax(axis=1) == y.array).sum())


def _batches(loader):
    for x, y in loader:
        yield (x if isinstance(x, Tensor) else Tensor(x)), (y if isinstance(y, Tensor) else Tensor(y))


def predict(model, loader):
    """Run the model in eval mode over a loader; return host arrays (logits, targets)."""
    was_training = model.training
    model.eval()
    logits, targets = [], []
    try:
        with no_grad():
            for x, y in _batches(loader):
                logits.append(to_host(model(x).array))
                targets.append(to_host(y.array))
    finally:
        model.train(was_training)
    return np.concatenate(logits), np.concatenate(targets)


def evaluate(model, loader, loss_fn=F.cross_entropy) -> dict:
    """Mean loss and accuracy of ``model`` on ``loader`` (eval mode, no graph)."""
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    try:
        with no_grad():
            for x, y in _batches(loader):
                out = model(x)
                n = len(y)
                total_loss += loss_fn(out, y).item() * n
                correct += _count_correct(out, y)
                count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate: the loader produced no samples")
    return {"loss": total_loss / count, "accuracy": correct / count, "count": count}


# -----------------------------------------------------------------------------
# Early stopping
# -----------------------------------------------------------------------------
class EarlyStopping:
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    ``mode='min'`` for losses, ``'max'`` for accuracies. ``best_state`` keeps a
    host copy of the best model's weights so the trainer can restore them.
    """

    def __init__(self, patience=3, min_delta=0.0, monitor="val_loss", mode="min", restore_best=True):
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {mode!r}")
        if patience < 1:
            raise ValueError(f"EarlyStopping: patience must be >= 1, got {patience}")
        self.patience, self.min_delta, self.monitor, self.mode = patience, min_delta, monitor, mode
        self.restore_best = restore_best
        self.best, self.best_epoch, self.bad_epochs, self.best_state = None, None, 0, None

    def _improved(self, value):
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(self, value, epoch, model) -> bool:
        """Record this epoch's metric; return True when training should stop."""
        if self._improved(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            if self.restore_best:
                self.best_state = _host_tree(model.state_dict())
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self):
        return {k: getattr(self, k) for k in ("best", "best_epoch", "bad_epochs", "best_state")}

    def load_state_dict(self, state):
        for k, v in state.items():
            setattr(self, k, v)


# -----------------------------------------------------------------------------
# The non-finite guard
# -----------------------------------------------------------------------------
class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss became NaN or infinite."""


NAN_POLICIES = ("stop", "skip-batch", "ignore")


class _NonFiniteGuard:
    """What ``fit`` does when a batch's loss is NaN/Inf (``nan_policy``).

    * ``"stop"`` (default): raise :class:`NonFiniteLossError` at once, saying
      where (epoch, step, learning rate, the last finite loss) and what to try.
      Nothing is saved, so ``last.ckpt`` / ``best.ckpt`` keep the last finite epoch.
    * ``"skip-batch"``: undo that batch's update (weights, BatchNorm statistics,
      optimizer state are copied before every step — a cost paid only under
      this policy) and go on with the next batch.
    * ``"ignore"``: train on (the old behaviour), with one warning.
    """

    def __init__(self, policy, model, optimizer, log, out_dir):
        if policy not in NAN_POLICIES:
            raise ValueError(f"fit: nan_policy must be one of {NAN_POLICIES}, got {policy!r}")
        self.policy, self.model, self.optimizer, self.log, self.out_dir = policy, model, optimizer, log, out_dir
        self.last_finite, self.skipped, self.warned, self._saved = None, 0, False, None

    def before_step(self):
        if self.policy == "skip-batch":
            self._saved = (_host_tree(self.model.state_dict()), self.optimizer.state_dict())

    def skip(self, value, epoch, batch, completed_epochs):
        """True if this batch (0-based ``batch``) must not count; raises under "stop"."""
        if math.isfinite(value):
            self.last_finite = (value, epoch, batch)
            return False
        lr = self.optimizer.param_groups[0]["lr"]
        where = f"epoch {epoch + 1}, step {batch + 1}, learning rate {lr:.3g}"
        if self.policy == "ignore":
            if not self.warned:
                self.log(f"warning: the loss is {value} at {where}; training on (--nan-policy ignore)")
                self.warned = True
            return False
        if self.policy == "skip-batch":
            self.model.load_state_dict(self._saved[0])
            self.optimizer.load_state_dict(self._saved[1])
            self.skipped += 1
            self.log(f"skipped a batch whose loss was {value} ({where}; {self.skipped} skipped so far)")
            return True
        raise NonFiniteLossError(self.message(value, where, completed_epochs))

    def message(self, value, where, completed_epochs):
        if self.last_finite is None:
            last = "no finite loss was seen in this run"
        else:
            v, e, b = self.last_finite
            last = f"the last finite loss was {v:.6g} (epoch {e + 1}, step {b + 1})"
        if not self.out_dir:
            saved = "no checkpoints are written in this run (no out_dir)"
        elif completed_epochs:
            saved = (f"the checkpoints in {self.out_dir} were left as they were after epoch "
                     f"{completed_epochs}, the last finite one")
        else:
            saved = f"no checkpoint was written to {self.out_dir} (no epoch finished)"
        return (f"training stopped: the loss became {value} at {where}; {last}.\n"
                f"{saved[0].upper()}{saved[1:]}.\n"
                "Things to try: a lower learning rate (--lr, e.g. 10x lower); gradient clipping "
                "(nn.utils.clip_grad_norm_); a warm-up (--schedule warmup-cosine); check the data for "
                "NaN/Inf and its normalisation; find the operation with `with mc.detect_anomaly():`; "
                "or --nan-policy skip-batch to skip such batches.")


# -----------------------------------------------------------------------------
# The loop
# -----------------------------------------------------------------------------
class _Progress:
    """A tqdm bar when enabled, otherwise nothing (tests, notebooks without widgets)."""

    def __init__(self, total, desc, enabled, initial=0):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, initial=initial, leave=True, dynamic_ncols=True)

    def update(self, **postfix):
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class _GracefulInterrupt:
    """Turn the first Ctrl-C into a flag checked between batches and at the end of the epoch.

    Installed for the whole run — batches, validation, callbacks, checkpoint
    writes — so a Ctrl-C at any moment is acted on at the next safe point:
    after the current batch (never half an optimizer step), or once the epoch's
    validation and checkpoints are done. Either way ``interrupted.ckpt`` is
    written and resumes exactly. A second Ctrl-C interrupts at once, as usual.
    """

    def __init__(self):
        self.requested = False

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self                                 # signals only reach the main thread
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self.requested:                         # second Ctrl-C: stop right now
                signal.signal(signal.SIGINT, previous)
                raise KeyboardInterrupt
            self.requested = True

        signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def _epoch_sizes(loader, has_orders):
    """``(samples per epoch, dataset size)`` of a minicnn DataLoader; ``(None, None)`` for others."""
    if not has_orders:
        return None, None
    arrays, dataset = getattr(loader, "arrays", None), getattr(loader, "dataset", None)
    size = len(arrays[0]) if arrays is not None else (len(dataset) if hasattr(dataset, "__len__") else None)
    sampler = getattr(loader, "sampler", None)
    return (len(sampler) if sampler is not None else size), size


def standard_step(model, optimizer, x, y, loss_fn):
    """One ordinary training step; returns ``(loss, logits)``.

    ``forward -> loss -> zero_grad -> backward -> optimizer.step``. Techniques
    that change what a step does (a teacher's soft targets, an adversary's
    perturbation, a gradient all-reduce across processes) are written as a
    function with this signature in their own module and handed to ``fit`` as
    ``train_step``; the loop itself stays the same.
    """
    out = model(x)
    loss = loss_fn(out, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss, out


class Callback:
    """Hooks into ``fit`` at epoch boundaries; override what you need.

    ``on_epoch_begin(epoch, model)`` runs before the epoch's first batch
    (``epoch`` counts from 0); ``on_epoch_end(epoch, model, logs)`` after
    validation, with ``logs`` this epoch's entry of the history. Used e.g. by
    quantization-aware training (freeze BN / observers after an epoch) and by
    the distributed sampler (``set_epoch``).
    """

    def on_epoch_begin(self, epoch, model):
        pass

    def on_epoch_end(self, epoch, model, logs):
        pass


def fit(model, optimizer, train_loader, epochs, val_loader=None, scheduler=None,
        loss_fn=F.cross_entropy, out_dir=None, early_stopping=None, resume=None,
        progress=True, log=print, step_scheduler_per_batch=False, max_batches_per_epoch=None,
        checkpoint_extra=None, train_step=None, callbacks=(), evaluate_fn=None, nan_policy="stop",
        fuse=True):
    """Train ``model``; return the history (a dict of per-epoch lists).

    Three data sets, three jobs. ``train_loader`` fits the weights.
    ``val_loader`` — images held out from the *training* split (e.g. with
    :func:`minicnn.data.stratified_split`), never trained on — is measured after
    every epoch and is what every choice here looks at: ``best.ckpt``, early
    stopping, ReduceLROnPlateau. The *test* set is not an argument: evaluate it
    once, after ``fit`` returns (``evaluate(model, test_loader)``). A test set
    that also chose the best epoch would report an optimistic accuracy.

    Args:
        train_loader: yields (x, y) batches. If it has ``epoch_order()`` and
            ``batches(order, start)`` (minicnn's DataLoader does), a resumed run
            replays exactly the same batches.
        val_loader: the validation set (None: no validation, no ``best.ckpt``).
        scheduler: stepped once per epoch (or per batch with
            ``step_scheduler_per_batch``, for warm-up schedules counted in steps);
            ReduceLROnPlateau gets the validation loss.
        out_dir: if given, ``last.ckpt`` is written there after every epoch,
            ``best.ckpt`` when validation accuracy improves, and ``interrupted.ckpt``
            on Ctrl-C at any moment (then KeyboardInterrupt is re-raised).
            Temporary files left there by a killed writer are removed at the start.
        resume: a checkpoint path (or a loaded dict) to continue from. Its
            metadata is checked first (:mod:`minicnn.train.schema`): types,
            ranges, and its sample order against ``train_loader``'s data. The
            position in the epoch is kept in samples, so ``train_loader`` may
            have another batch size: the rest of the epoch is cut into the new
            batches from the same sample on.
        early_stopping: an :class:`EarlyStopping`, checked after each epoch.
        max_batches_per_epoch: cap the batches per epoch (quick demos and tests).
        checkpoint_extra: a dict stored in every checkpoint (e.g. the model's name,
            so ``minicnn evaluate`` can rebuild it).
        train_step: ``step(model, optimizer, x, y, loss_fn) -> (loss, logits)``;
            default :func:`standard_step`. Distillation, adversarial training and
            data-parallel training plug in here (each in its own module).
        callbacks: :class:`Callback` objects called at epoch boundaries
            (``on_epoch_begin`` before the epoch's sample order is drawn).
        evaluate_fn: ``fn(model, val_loader, loss_fn) -> {"loss", "accuracy", ...}``
            for validation; default :func:`evaluate` (data-parallel training
            passes one that all-reduces the metrics over the ranks).
        nan_policy: what a NaN/Inf training loss does: ``"stop"`` (raise
            :class:`NonFiniteLossError` naming epoch, step, learning rate and the
            last finite loss; checkpoints stay at the last finite epoch),
            ``"skip-batch"`` (undo that update and go on) or ``"ignore"``.
        fuse: run the training and validation batches through ``mc.fuse(model)``
            (Conv2d -> ReLU -> MaxPool2d as one fused module; the same numbers,
            faster). It shares ``model``'s parameters and buffers, so ``model`` is
            what gets trained, checkpointed and returned. ``fuse=False`` runs
            every layer as written (to step through them in a debugger).
    """
    train_step = standard_step if train_step is None else train_step
    callbacks = list(callbacks or ())
    if epochs < 1:
        raise ValueError(f"fit: epochs must be >= 1, got {epochs}")
    history = {"epoch": [], "train_loss": [], "train_acc": [], "val_loss": [], "val_acc": [], "lr": [],
               "epoch_time": [], "images_per_s": []}
    start_epoch, start_batch, start_sample, order, partial = 0, 0, 0, None, None
    has_orders = hasattr(train_loader, "epoch_order") and hasattr(train_loader, "batches")
    batch_size = getattr(train_loader, "batch_size", None) if has_orders else None
    if resume is not None:
        state = load_checkpoint(resume) if not isinstance(resume, dict) else resume
        where = os.fspath(resume) if not isinstance(resume, dict) else "the checkpoint"
        # types, ranges and the sample order against this run's data, before anything is loaded
        start_sample = schema.check_resume(state, where, epochs, *_epoch_sizes(train_loader, has_orders),
                                           batch_size=batch_size)
        model.load_state_dict(state["model"])
        if optimizer is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if early_stopping is not None and state.get("early_stopping") is not None:
            early_stopping.load_state_dict(state["early_stopping"])
        try:
            rng.set_rng_state(state["rng_state"])
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise CheckpointError(f"{where}: field 'rng_state' is not a generator state "
                                  f"({type(e).__name__}: {e})") from None
        history = state.get("history", history)
        start_epoch, start_batch = state["epoch"], state.get("batch", 0)
        order = state.get("order")
        partial = state.get("partial")
        if order is None:
            start_batch, start_sample = 0, 0
        elif batch_size is not None:                 # the position in *this* run's batches
            start_batch = start_sample // batch_size
        log(f"resumed from {where}: epoch {start_epoch + 1}, sample {start_sample}")

    ckpt = (lambda name: os.path.join(out_dir, name)) if out_dir else None
    if ckpt:
        for path in io.sweep_temp_files(out_dir):  # left by a run killed while writing (kill -9)
            log(f"note: removed {path}, a temporary file left by a run that was killed while writing")
    best_acc = max([a for a in history["val_acc"] if a is not None], default=-1.0)
    model.train()
    # the network the batches run through: the same weights, fused runs (nn/fusion.py)
    net = fuse_model(model) if fuse else model
    guard = _NonFiniteGuard(nan_policy, model, optimizer, log, out_dir)

    def state_for(epoch, batch, sample, order, partial):
        return dict(epoch=epoch, batch=batch, sample=sample, batch_size=batch_size, order=order,
                    partial=partial, history=history,
                    early_stopping=None if early_stopping is None else early_stopping.state_dict(),
                    **(checkpoint_extra or {}))

    def save_interrupted(epoch, batch, sample, order, partial):
        if ckpt:
            path = save_checkpoint(ckpt("interrupted.ckpt"), model, optimizer, scheduler,
                                   **state_for(epoch, batch, sample, order, partial))
            log(f"\ninterrupted: saved {path} (epoch {epoch + 1}, sample {sample}); "
                "continue with --resume / resume=that path")
        raise KeyboardInterrupt

    def _run_epoch(epoch):
        """One epoch: its batches, validation, schedule, checkpoints; True when early stopping ends the run."""
        nonlocal start_batch, start_sample, order, partial, best_acc
        for cb in callbacks:                      # first: a sampler's set_epoch decides this epoch's order
            cb.on_epoch_begin(epoch, model)
        if (start_batch == 0 and start_sample == 0) or order is None:
            order = train_loader.epoch_order() if has_orders else None
            partial = None
        n_batches = len(train_loader)
        if max_batches_per_epoch is not None:
            n_batches = min(n_batches, max_batches_per_epoch)
        loss_sum, correct, seen, elapsed = (0.0, 0, 0, 0.0) if partial is None else partial
        bar = _Progress(n_batches, f"epoch {epoch + 1}/{epochs}", progress, initial=start_batch)
        batch_index, sample = start_batch, start_sample
        t0 = time.perf_counter()
        batches = train_loader.batches(order, start_sample=start_sample) if order is not None \
            else iter(train_loader)
        for x, y in batches:
            if batch_index >= n_batches:
                break
            guard.before_step()
            loss, out = train_step(net, optimizer, x, y, loss_fn)
            loss_value = loss.item()                 # one host scalar per step, checked here
            n = len(y)
            if guard.skip(loss_value, epoch, batch_index, len(history["epoch"])):
                batch_index += 1
                sample += n
                continue
            if scheduler is not None and step_scheduler_per_batch:
                scheduler.step()
            loss_sum += loss_value * n
            correct += _count_correct(out, y)
            seen += n
            batch_index += 1
            sample += n
            now = elapsed + time.perf_counter() - t0
            bar.update(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}",
                       lr=f"{optimizer.param_groups[0]['lr']:.2e}", img_s=f"{seen / max(now, 1e-9):.0f}")
            if interrupt.requested:
                break
        bar.close()
        if interrupt.requested:      # between batches, or after the last one but before validation
            save_interrupted(epoch, batch_index, sample, order,
                             (loss_sum, correct, seen, elapsed + time.perf_counter() - t0))
        start_batch, start_sample = 0, 0
        epoch_time = elapsed + time.perf_counter() - t0
        if seen == 0 and guard.skipped:
            raise NonFiniteLossError(f"training stopped: every batch of epoch {epoch + 1} had a "
                                     "non-finite loss and was skipped; lower the learning rate")
        if seen == 0:
            raise ValueError("fit: the training loader produced no batches")

        lr = optimizer.param_groups[0]["lr"]
        history["epoch"].append(epoch + 1)
        history["train_loss"].append(loss_sum / seen)
        history["train_acc"].append(correct / seen)
        history["lr"].append(lr)
        history["epoch_time"].append(epoch_time)
        history["images_per_s"].append(seen / epoch_time)
        val = (evaluate_fn or evaluate)(net, val_loader, loss_fn) if val_loader is not None else None
        history["val_loss"].append(val["loss"] if val else None)
        history["val_acc"].append(val["accuracy"] if val else None)
        msg = (f"epoch {epoch + 1}/{epochs}: train loss {loss_sum / seen:.4f} acc {correct / seen:.4f}"
               + (f" | val loss {val['loss']:.4f} acc {val['accuracy']:.4f}" if val else "")
               + f" | lr {lr:.2e} | {epoch_time:.1f}s, {seen / epoch_time:.0f} img/s")
        log(msg)
        logs = {k: v[-1] for k, v in history.items() if v}
        for cb in callbacks:
            cb.on_epoch_end(epoch, model, logs)

        if scheduler is not None and not step_scheduler_per_batch:
            if type(scheduler).__name__ == "ReduceLROnPlateau":
                scheduler.step(val["loss"] if val else loss_sum / seen)
            else:
                scheduler.step()

        stop = False
        if early_stopping is not None:
            monitored = {"val_loss": val and val["loss"], "val_acc": val and val["accuracy"],
                         "train_loss": loss_sum / seen}.get(early_stopping.monitor)
            if monitored is None:
                raise ValueError(f"EarlyStopping monitors {early_stopping.monitor!r}, which this run "
                                 "does not compute (give val_loader for val_loss / val_acc)")
            stop = early_stopping.step(monitored, epoch + 1, model)

        if ckpt:
            save_checkpoint(ckpt("last.ckpt"), model, optimizer, scheduler,
                            **state_for(epoch + 1, 0, 0, None, None))
            if val and val["accuracy"] > best_acc:
                best_acc = val["accuracy"]
                save_checkpoint(ckpt("best.ckpt"), model, optimizer, scheduler,
                                **state_for(epoch + 1, 0, 0, None, None))
        if stop:
            log(f"early stopping: no improvement in {early_stopping.monitor} for "
                f"{early_stopping.patience} epochs (best {early_stopping.best:.4f} "
                f"at epoch {early_stopping.best_epoch})")
            if early_stopping.restore_best and early_stopping.best_state is not None:
                model.load_state_dict(early_stopping.best_state)
        return stop

    interrupt = _GracefulInterrupt()
    with interrupt.installed():                  # Ctrl-C anywhere in an epoch: a flag, acted on below
        for epoch in range(start_epoch, epochs):
            if _run_epoch(epoch):                # early stopping ended the run (best weights restored)
                break
            if interrupt.requested:              # during validation or checkpointing: the epoch is
                save_interrupted(epoch + 1, 0, 0, None, None)   # complete and saved; say where to resume
    return history
