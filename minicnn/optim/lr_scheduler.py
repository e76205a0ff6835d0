"""Learning-rate schedules: change ``group["lr"]`` as training goes on.

A large learning rate makes fast progress early; a small one settles into a
minimum late. A scheduler rewrites the optimizer's ``lr`` once per epoch, with
PyTorch's calling convention::

    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.1)
    for epoch in range(100):
        train_one_epoch(model, optimizer)      # many optimizer.step() calls
        scheduler.step()                       # then once per epoch, *after* them

Constructing a scheduler records each group's starting learning rate as
``group["initial_lr"]`` (the schedule's ``base_lrs``) and sets the learning
rate for epoch 0. ``scheduler.last_epoch`` counts the ``step()`` calls;
``scheduler.get_last_lr()`` returns the learning rates now in effect.

Each schedule here is written in *closed form*: the learning rate at epoch t
is a formula in the base learning rate and t (``get_lr``), which is the
clearest way to read it and gives PyTorch's values epoch by epoch. (PyTorch
computes most schedules recursively, from the current ``group["lr"]``, so
that two schedulers stepping the same optimizer multiply their effects. Here
the formula wins: to chain phases use :class:`SequentialLR`, and a manual
change of ``group["lr"]`` lasts only until the scheduler's next step.)

To resume training, build the optimizer and scheduler as before, then call
``optimizer.load_state_dict(...)`` and ``scheduler.load_state_dict(...)``.
"""
from __future__ import annotations

import copy
import math
import numbers
import warnings
from bisect import bisect_right

from ..autograd.tensor import Tensor
from .optimizer import Optimizer

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR",
           "LinearLR", "SequentialLR", "ReduceLROnPlateau"]


def _check_int(owner, name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{owner}: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_float(owner, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


class LRScheduler:
    """Base class: set every group's ``lr`` to ``get_lr()`` at each ``step()``.

    Subclasses implement :meth:`get_lr`, the learning rate of every parameter
    group at epoch ``self.last_epoch`` computed from ``self.base_lrs``.

    Attributes:
        optimizer: the optimizer whose ``param_groups[i]["lr"]`` is set.
        base_lrs: each group's ``initial_lr`` (its ``lr`` when the first
            scheduler was attached).
        last_epoch: how many times ``step()`` has been called (0 right after
            construction, which already applied epoch 0's learning rate).
    """

    def __init__(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected a minicnn optimizer "
                            f"(e.g. optim.SGD), got {type(optimizer).__name__}")
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = -1
        self._initial_step()

    def _initial_step(self):
        """Apply epoch 0's learning rate (done by the constructor)."""
        self._step_count = 0
        self.step()

    def get_lr(self):
        """The learning rate of every group at epoch ``self.last_epoch`` (a list)."""
        raise NotImplementedError(f"{type(self).__name__} must implement get_lr()")

    def step(self):
        """Advance one epoch and set each group's ``lr``. Call after ``optimizer.step()``."""
        if self._step_count == 1 and getattr(self.optimizer, "_step_count", 1) == 0:
            warnings.warn(
                "scheduler.step() was called before optimizer.step(): the first learning "
                "rate of the schedule was skipped. Call optimizer.step() for every batch of "
                "an epoch, then scheduler.step() once at the end of the epoch.",
                UserWarning, stacklevel=2)
        self._step_count += 1
        self.last_epoch += 1
        self._set_lrs(self.get_lr())

    def _set_epoch(self, epoch):
        """Jump to ``epoch`` and apply its learning rate (used by :class:`SequentialLR`)."""
        self.last_epoch = epoch
        self._set_lrs(self.get_lr())

    def _set_lrs(self, lrs):
        groups = self.optimizer.param_groups
        if len(lrs) != len(groups):
            raise RuntimeError(f"{type(self).__name__}: the optimizer now has {len(groups)} "
                               f"parameter groups but the scheduler was built for {len(lrs)}; "
                               "create the scheduler after adding every parameter group")
        for group, lr in zip(groups, lrs):
            group["lr"] = float(lr)
        self._last_lr = [group["lr"] for group in groups]

    def get_last_lr(self):
        """The learning rates now in effect, one per parameter group."""
        return list(self._last_lr)

    def state_dict(self):
        """Everything but the optimizer: ``last_epoch``, ``base_lrs``, the options."""
        return {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict):
        """Restore what :meth:`state_dict` returned (the optimizer stays as it is)."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"{type(self).__name__}.load_state_dict: expected a dict from "
                            f"scheduler.state_dict(), got {type(state_dict).__name__}")
        self.__dict__.update(copy.deepcopy(state_dict))


class StepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs::

        lr_t = base_lr * gamma ^ floor(t / step_size)

    e.g. base_lr 0.1, step_size 30, gamma 0.1: 0.1 for epochs 0-29, 0.01 for 30-59, ...
    """

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = _check_int("StepLR", "step_size", step_size, 1)
        self.gamma = _check_float("StepLR", "gamma", gamma)
        super().__init__(optimizer)

    def get_lr(self):
        return [base_lr * self.gamma ** (self.last_epoch // self.step_size)
                for base_lr in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` at each epoch listed in ``milestones``::

        lr_t = base_lr * gamma ^ (number of milestones <= t)

    e.g. milestones [30, 80], gamma 0.1: base_lr until 29, base_lr/10 from 30,
    base_lr/100 from 80. A milestone listed twice applies gamma twice.
    """

    def __init__(self, optimizer, milestones, gamma=0.1):
        milestones = list(milestones)
        for m in milestones:
            _check_int("MultiStepLR", "every milestone", m, 0)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = _check_float("MultiStepLR", "gamma", gamma)
        super().__init__(optimizer)

    def get_lr(self):
        passed = bisect_right(self.milestones, self.last_epoch)   # milestones <= t
        return [base_lr * self.gamma ** passed for base_lr in self.base_lrs]


class ExponentialLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every epoch: ``lr_t = base_lr * gamma ^ t``."""

    def __init__(self, optimizer, gamma):
        self.gamma = _check_float("ExponentialLR", "gamma", gamma)
        super().__init__(optimizer)

    def get_lr(self):
        return [base_lr * self.gamma ** self.last_epoch for base_lr in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Follow half a cosine from ``base_lr`` down to ``eta_min`` over ``T_max`` epochs::

        lr_t = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2

    lr_0 = base_lr, lr_{T_max} = eta_min; the decay is slow at both ends and
    fastest in the middle. Stepping past T_max continues the cosine, so the
    rate climbs back up (period 2 * T_max), as in PyTorch; usually T_max is
    the number of epochs. (SGDR's warm restarts are a different scheduler.)
    """

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max = _check_int("CosineAnnealingLR", "T_max", T_max, 1)
        self.eta_min = _check_float("CosineAnnealingLR", "eta_min", eta_min)
        super().__init__(optimizer)

    def get_lr(self):
        cosine = (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2   # 1 -> 0
        return [self.eta_min + (base_lr - self.eta_min) * cosine for base_lr in self.base_lrs]


class LinearLR(LRScheduler):
    """Change the learning rate linearly for ``total_iters`` epochs, then hold it::

        factor_t = start_factor + (end_factor - start_factor) * min(t, total_iters) / total_iters
        lr_t     = base_lr * factor_t

    The usual *warm-up*: start_factor 0.1, end_factor 1.0 ramps from base_lr/10
    up to base_lr, so that the first updates — made when the weights are
    random and gradients large — are gentle. Combine with a decay through
    :class:`SequentialLR`.
    """

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
        start_factor = _check_float("LinearLR", "start_factor", start_factor)
        end_factor = _check_float("LinearLR", "end_factor", end_factor)
        if not 0 < start_factor <= 1:
            raise ValueError(f"LinearLR: start_factor must be in (0, 1], got {start_factor!r}")
        if not 0 <= end_factor <= 1:
            raise ValueError(f"LinearLR: end_factor must be in [0, 1], got {end_factor!r}")
        self.start_factor, self.end_factor = start_factor, end_factor
        self.total_iters = _check_int("LinearLR", "total_iters", total_iters, 1)
        super().__init__(optimizer)

    def get_lr(self):
        progress = min(self.last_epoch, self.total_iters) / self.total_iters     # 0 -> 1
        factor = self.start_factor + (self.end_factor - self.start_factor) * progress
        return [base_lr * factor for base_lr in self.base_lrs]


class SequentialLR(LRScheduler):
    """Run schedulers one after another, switching at the ``milestones`` epochs.

    Warm-up for 5 epochs, then cosine decay over the remaining 95::

        warmup = LinearLR(optimizer, start_factor=0.1, total_iters=5)
        decay = CosineAnnealingLR(optimizer, T_max=95)
        scheduler = SequentialLR(optimizer, [warmup, decay], milestones=[5])

    Scheduler i runs from epoch ``milestones[i-1]`` (0 for the first) and,
    like in PyTorch, restarts its own count there: at epoch 5 above the
    cosine starts at its epoch 0, i.e. at base_lr. The schedulers must
    belong to ``optimizer``; there must be one more scheduler than milestones.
    """

    def __init__(self, optimizer, schedulers, milestones):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"SequentialLR: expected a minicnn optimizer, got "
                            f"{type(optimizer).__name__}")
        schedulers, milestones = list(schedulers), list(milestones)
        if not schedulers:
            raise ValueError("SequentialLR expects at least one scheduler, got none")
        for i, s in enumerate(schedulers):
            if isinstance(s, ReduceLROnPlateau):
                raise ValueError(f"SequentialLR does not support ReduceLROnPlateau (scheduler "
                                 f"{i}): its step() needs the metric, which SequentialLR "
                                 "cannot pass")
            if not isinstance(s, LRScheduler):
                raise TypeError(f"SequentialLR: scheduler {i} is a {type(s).__name__}, "
                                "not a learning-rate scheduler")
            if s.optimizer is not optimizer:
                raise ValueError(f"SequentialLR: scheduler {i} ({type(s).__name__}) belongs to a "
                                 "different optimizer than the one given")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR expects one milestone fewer than schedulers, got "
                             f"{len(schedulers)} schedulers and {len(milestones)} milestones")
        for m in milestones:
            _check_int("SequentialLR", "every milestone", m, 0)
        if any(a >= b for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"SequentialLR: milestones must be increasing, got {milestones}")

        self.optimizer = optimizer
        self._schedulers = schedulers
        self._milestones = [int(m) for m in milestones]
        self.last_epoch = 0
        # Each scheduler's constructor already applied its own epoch 0. Start
        # again from the initial learning rates, wind every scheduler back one
        # epoch, and let only the first phase take its epoch 0.
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self._undo_step(self)
        first = self._schedulers[bisect_right(self._milestones, 0)]
        first._initial_step()
        self._last_lr = first.get_last_lr()

    def _undo_step(self, scheduler):
        for s in getattr(scheduler, "_schedulers", ()):
            if isinstance(s, SequentialLR):
                self._undo_step(s)
            else:
                s.last_epoch -= 1

    def step(self):
        """Advance one epoch: step the current phase, or start the next one at a milestone."""
        self.last_epoch += 1
        phase = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[phase]
        if phase > 0 and self._milestones[phase - 1] == self.last_epoch:
            scheduler._set_epoch(0)        # a new phase starts at its own epoch 0
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def state_dict(self):
        state = {k: copy.deepcopy(v) for k, v in self.__dict__.items()
                 if k not in ("optimizer", "_schedulers")}
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict):
        state = dict(state_dict)
        inner = state.pop("_schedulers", None)
        if inner is None or len(inner) != len(self._schedulers):
            got = "none" if inner is None else len(inner)
            raise ValueError(f"SequentialLR.load_state_dict: expected the states of "
                             f"{len(self._schedulers)} schedulers, got {got}")
        super().load_state_dict(state)
        for s, s_state in zip(self._schedulers, inner):
            s.load_state_dict(s_state)


class ReduceLROnPlateau(LRScheduler):
    """Cut the learning rate when a monitored metric stops improving.

    Call ``scheduler.step(val_loss)`` once per epoch. With ``mode="min"`` an
    epoch *improves* on the best value so far when::

        threshold_mode="rel":  metric < best * (1 - threshold)
        threshold_mode="abs":  metric < best - threshold
        (mode="max": metric > best * (1 + threshold), or metric > best + threshold)

    Every other epoch is *bad*. After more than ``patience`` bad epochs in a
    row, every group's rate becomes ``max(lr * factor, min_lr)`` (a change
    smaller than ``eps`` is skipped), the bad-epoch count restarts, and for
    ``cooldown`` epochs bad epochs are not counted, to let the new rate show
    its effect.

    Args:
        optimizer: the optimizer to adjust.
        mode: "min" (a loss) or "max" (an accuracy).
        factor: multiplies the learning rate, in [0, 1).
        patience: how many bad epochs in a row are tolerated.
        threshold, threshold_mode: how much better counts as better.
        cooldown: epochs to wait after a reduction before counting again.
        min_lr: a lower bound, one number or one per parameter group.
        eps: the smallest change of learning rate worth applying.
    """

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0, eps=1e-8):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"ReduceLROnPlateau: expected a minicnn optimizer, got "
                            f"{type(optimizer).__name__}")
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateau: threshold_mode must be 'rel' or 'abs', "
                             f"got {threshold_mode!r}")
        factor = _check_float("ReduceLROnPlateau", "factor", factor)
        if not 0 <= factor < 1:
            raise ValueError(f"ReduceLROnPlateau: factor must be in [0, 1) (the learning rate "
                             f"is multiplied by it), got {factor!r}")
        n_groups = len(optimizer.param_groups)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != n_groups:
                raise ValueError(f"ReduceLROnPlateau: expected {n_groups} min_lr values (one per "
                                 f"parameter group), got {len(min_lr)}")
            self.min_lrs = [_check_float("ReduceLROnPlateau", "min_lr", m) for m in min_lr]
        else:
            self.min_lrs = [_check_float("ReduceLROnPlateau", "min_lr", min_lr)] * n_groups
        self.optimizer = optimizer
        self.mode, self.threshold_mode = mode, threshold_mode
        self.factor = factor
        self.patience = _check_int("ReduceLROnPlateau", "patience", patience, 0)
        self.cooldown = _check_int("ReduceLROnPlateau", "cooldown", cooldown, 0)
        self.threshold = _check_float("ReduceLROnPlateau", "threshold", threshold)
        self.eps = _check_float("ReduceLROnPlateau", "eps", eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0
        self._step_count = 0
        self._last_lr = [group["lr"] for group in optimizer.param_groups]

    @property
    def in_cooldown(self):
        return self.cooldown_counter > 0

    def is_better(self, metric, best):
        """Does ``metric`` improve on ``best`` by more than the threshold?"""
        if self.mode == "min" and self.threshold_mode == "rel":
            return metric < best * (1 - self.threshold)
        if self.mode == "min":
            return metric < best - self.threshold
        if self.threshold_mode == "rel":
            return metric > best * (1 + self.threshold)
        return metric > best + self.threshold

    def step(self, metrics):
        """End an epoch whose monitored value (e.g. validation loss) was ``metrics``."""
        if isinstance(metrics, Tensor):
            metrics = metrics.item()
        try:
            current = float(metrics)
        except (TypeError, ValueError):
            raise TypeError(f"ReduceLROnPlateau.step: expected the monitored metric as a number "
                            f"(e.g. the validation loss), got {type(metrics).__name__}") from None
        self._step_count += 1
        self.last_epoch += 1

        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0            # bad epochs during cooldown do not count
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _reduce_lr(self):
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            raise RuntimeError(f"ReduceLROnPlateau: the optimizer now has {len(groups)} parameter "
                               f"groups but min_lr was given for {len(self.min_lrs)}; create the "
                               "scheduler after adding every parameter group")
        for group, min_lr in zip(groups, self.min_lrs):
            old_lr = float(group["lr"])
            new_lr = max(old_lr * self.factor, min_lr)
            if old_lr - new_lr > self.eps:
                group["lr"] = new_lr
