"""Optimizer: the base class that turns gradients into parameter updates.

Training is a loop of four lines, the same as in PyTorch::

    optimizer.zero_grad()          # forget the previous batch's gradients
    loss = criterion(model(x), y)
    loss.backward()                # fill p.grad for every parameter
    optimizer.step()               # p <- p - (something computed from p.grad)

The "something" is what distinguishes SGD, Adam, RMSprop, ... Each of them is
a subclass that implements one method, :meth:`Optimizer.update_param`, the
update rule for one parameter. Everything else is bookkeeping shared here:

* ``param_groups`` — a list of dicts. Each holds ``"params"`` (a list of
  parameters) and that group's options (``"lr"``, ``"momentum"``, ...), so a
  network's parts can train with different settings::

      optim.SGD([{"params": model.features.parameters()},
                 {"params": model.classifier.parameters(), "lr": 1e-3}],
                lr=1e-2, momentum=0.9)     # lr=1e-2 is the default for group 0

  Learning-rate schedulers work by rewriting ``group["lr"]``.
* ``state`` — a dict from parameter to that parameter's running quantities
  (momentum buffers, moment estimates, step counts), created on its first
  update.
* ``state_dict()`` / ``load_state_dict()`` — save and resume. As in PyTorch,
  parameters are referred to by their position (0, 1, 2, ... across the
  groups, in order), not by identity, so the state of one run can be loaded
  into an optimizer built the same way over a freshly built model. Arrays are
  saved as host NumPy copies: a checkpoint written on the GPU loads on the CPU
  and vice versa.
"""
from __future__ import annotations

import copy
import numbers
from collections import defaultdict

import numpy as np

from ..backend import to_device, to_host
from ..autograd.tensor import Tensor, shape_str, enable_grad, no_grad


class Optimizer:
    """Base class of every optimizer.

    Args:
        params: an iterable of parameters (``model.parameters()``), or of dicts
            (parameter groups) each with a ``"params"`` entry and any options
            that override ``defaults`` for that group.
        defaults: the options (``lr``, ``momentum``, ...) of every group that
            does not set its own.

    Subclasses call ``super().__init__(params, defaults)``, implement
    :meth:`update_param`, and may extend :meth:`_check_options` to validate
    their own options.
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = defaultdict(dict)       # parameter -> its running quantities
        self.param_groups = []
        self._step_count = 0                 # lets a scheduler warn if it steps first

        name = type(self).__name__
        if isinstance(params, Tensor):
            raise TypeError(f"{name}: params must be an iterable of Tensors or of dicts "
                            f"(e.g. model.parameters()), got a single {type(params).__name__}; "
                            "wrap it in a list: [param]")
        if isinstance(params, dict):
            raise TypeError(f"{name}: params must be an iterable of Tensors or of dicts, got one "
                            "dict; wrap the parameter group in a list: [{'params': ...}]")
        try:
            groups = list(params)
        except TypeError:
            raise TypeError(f"{name}: params must be an iterable of Tensors or of dicts, "
                            f"got {type(params).__name__}") from None
        if not groups:
            raise ValueError(f"{name} got an empty parameter list (if you passed "
                             "model.parameters(), is it a generator you already used up? A model "
                             "of lazy layers, nn.LazyLinear / nn.LazyConv2d, has parameters only "
                             "after its first forward: run a dummy batch through it first)")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)

    # -- parameter groups ------------------------------------------------------
    def add_param_group(self, param_group):
        """Add a dict ``{"params": [...], option: value, ...}`` as a new group.

        Options the group does not set are taken from ``defaults``. Useful for
        fine-tuning: unfreeze a layer, then hand its parameters to the
        optimizer with their own learning rate.
        """
        name = type(self).__name__
        if not isinstance(param_group, dict):
            raise TypeError(f"{name}: a parameter group must be a dict with a 'params' entry, "
                            f"got {type(param_group).__name__} (do not mix parameters and "
                            "dicts in one list)")
        if "params" not in param_group:
            raise ValueError(f"{name}: a parameter group needs a 'params' entry, got keys "
                             f"{sorted(param_group)}")
        group = dict(param_group)
        params = group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(f"{name}: parameters must be in an ordered collection (a list); a set "
                            "has no fixed order, so state_dict() could not number them")
        else:
            params = list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"{name} can only optimize Tensors, but one of the params is "
                                f"a {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(f"{name} can't optimize a non-leaf Tensor (one computed by an "
                                 "operation); optimize the leaf it was computed from, e.g. an "
                                 "nn.Parameter")
            if p.dtype.kind != "f":
                raise TypeError(f"{name} can only optimize floating-point tensors, got dtype "
                                f"{p.dtype}")
        # identity, not ==: Tensor.__eq__ is elementwise
        ids = [id(p) for p in params]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{name}: a parameter appears more than once in one parameter group")
        taken = {id(p) for g in self.param_groups for p in g["params"]}
        if taken.intersection(ids):
            raise ValueError(f"{name}: some parameters appear in more than one parameter group")
        group["params"] = params
        for key, default in self.defaults.items():
            group.setdefault(key, default)
        self._check_options(group)
        self.param_groups.append(group)

    def _check_options(self, group):
        """Validate (and normalise) one group's options; subclasses extend this.

        Numbers are stored as Python floats, so that an ``np.float64`` learning
        rate cannot silently turn float32 updates into float64 ones.
        """
        self._check_number(group, "lr", low=0.0)

    def _check_number(self, group, key, low=None, high=None, low_open=False, high_open=False):
        """Check that ``group[key]`` is a number in the given range; store it as a float.

        ``low_open=True`` excludes ``low`` itself (``> low``), likewise ``high_open``.
        """
        value = group[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{type(self).__name__}: {key} must be a number, got "
                            f"{type(value).__name__} {value!r}")
        value = float(value)
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high or value != value:            # value != value: NaN
            if high is None:
                wanted = f"{'>' if low_open else '>='} {low:g}"
            else:
                wanted = (f"in {'(' if low_open else '['}{low:g}, {high:g}"
                          f"{')' if high_open else ']'}")
            raise ValueError(f"{type(self).__name__}: {key} must be {wanted}, got {group[key]!r}")
        group[key] = value
        return value

    # -- the training-loop API ---------------------------------------------------
    def zero_grad(self, set_to_none=True):
        """Forget the gradients: ``p.grad = None`` (or zeros if ``set_to_none=False``).

        Gradients accumulate (``backward`` adds to ``.grad``), so call this once
        per batch, before ``loss.backward()``.
        """
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.array[...] = 0

    def step(self, closure=None):
        """Update every parameter that has a gradient, in place; return the closure's loss.

        Parameters whose ``grad`` is None (unused this batch, or frozen) are
        skipped and their state is untouched. ``closure``, if given, is a
        function that recomputes the loss (zero_grad, forward, backward) and
        returns it; it is called first, with gradient recording on.
        """
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        with no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    grad = p.grad.array
                    if grad.shape != p.array.shape:
                        raise ValueError(f"{type(self).__name__}.step: a parameter of shape "
                                         f"{shape_str(p.shape)} has a gradient of shape "
                                         f"{shape_str(grad.shape)}")
                    self.update_param(p, grad, self.state[p], group)
        self._step_count += 1
        return loss

    def update_param(self, p, grad, state, group):
        """Update one parameter in place: the rule that defines the optimizer.

        Args:
            p: the parameter; write the new values into ``p.array`` in place.
            grad: the gradient array (``p.grad.array``); do not modify it.
            state: this parameter's dict of running quantities (empty at first).
            group: the parameter's group (``group["lr"]`` and other options).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement "
                                  "update_param(p, grad, state, group)")

    # -- saving and resuming -----------------------------------------------------
    def state_dict(self):
        """``{"state": {index: {name: value}}, "param_groups": [{..., "params": [index]}]}``.

        Parameters are numbered 0, 1, 2, ... in group order. Arrays are host
        NumPy copies, so the result can be pickled and loaded on any backend,
        and later steps do not change it.
        """
        index = {}
        groups = []
        for group in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {}
        for p, s in self.state.items():
            if id(p) in index and s:
                state[index[id(p)]] = {k: _to_host_copy(v) for k, v in s.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Resume from :meth:`state_dict`: group options and per-parameter state.

        The optimizer must have been built the same way (same number of groups,
        same number of parameters in each). Arrays are copied to the active
        backend and cast to their parameter's floating dtype.
        """
        name = type(self).__name__
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            got = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise TypeError(f"{name}.load_state_dict: expected a dict with keys 'state' and "
                            f"'param_groups' (from optimizer.state_dict()), got {got}")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: the saved state has {len(saved_groups)} "
                             f"parameter group(s), this optimizer has {len(self.param_groups)}")
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{name}.load_state_dict: parameter group {i} has "
                                 f"{len(saved['params'])} parameters in the saved state but "
                                 f"{len(group['params'])} in this optimizer")
            missing = [k for k in self.defaults if k not in saved]
            if missing:
                raise ValueError(f"{name}.load_state_dict: saved parameter group {i} lacks the "
                                 f"option(s) {missing} that {name} needs (was it saved by a "
                                 "different optimizer?)")

        # saved index -> live parameter, position by position
        by_index = {}
        for saved, group in zip(saved_groups, self.param_groups):
            by_index.update(zip(saved["params"], group["params"]))

        new_state = defaultdict(dict)
        for i, saved_state in state_dict["state"].items():
            if i not in by_index:
                raise ValueError(f"{name}.load_state_dict: the saved state refers to parameter "
                                 f"{i}, which no saved parameter group lists")
            p = by_index[i]
            new_state[p] = {k: _to_param_backend(v, p, k, name) for k, v in saved_state.items()}

        new_groups = []
        for saved, group in zip(saved_groups, self.param_groups):
            restored = {k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}
            restored["params"] = group["params"]
            self._check_options(restored)
            new_groups.append(restored)
        self.state = new_state
        self.param_groups = new_groups


def _to_host_copy(value):
    """Arrays (host or device) -> a private host NumPy copy; anything else -> a deep copy."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return np.array(to_host(value), copy=True)
    return copy.deepcopy(value)


def _to_param_backend(value, p, key, optimizer_name):
    """A saved state value back on the active backend, in ``p``'s dtype if floating."""
    if not (hasattr(value, "shape") and hasattr(value, "dtype")):
        return copy.deepcopy(value)
    if tuple(value.shape) != p.shape:
        raise ValueError(f"{optimizer_name}.load_state_dict: state {key!r} has shape "
                         f"{shape_str(tuple(value.shape))} but its parameter has shape "
                         f"{shape_str(p.shape)}")
    dtype = p.dtype if value.dtype.kind == "f" else value.dtype
    array = to_device(to_host(value), dtype=dtype)
    return array.copy()
