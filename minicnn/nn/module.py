"""Module and Parameter: how layers own their weights.

A :class:`Module` registers, as attributes are assigned,

* **parameters** (``nn.Parameter``: tensors that the optimizer updates),
* **buffers** (tensors saved with the model but not trained, e.g. BatchNorm's
  running_mean), via :meth:`Module.register_buffer`,
* **submodules** (any ``Module`` assigned as an attribute).

From that bookkeeping come ``parameters()``, ``named_parameters()`` with
PyTorch's dotted names (``features.0.weight``), ``state_dict()`` /
``load_state_dict()``, ``train()`` / ``eval()`` and a readable ``repr``.

Hooks
-----
Calling a module (``module(x)``) runs, in order::

    for hook in forward_pre_hooks:  inputs = hook(module, inputs) or inputs
    output = module.forward(*inputs)
    for hook in forward_hooks:      output = hook(module, inputs, output) or output

so code outside a layer can look at (or replace) what flows through it
without editing the layer: ``mc.summary`` records output shapes this way,
pruning recomputes ``weight = weight_orig * weight_mask`` in a pre-hook, and
Grad-CAM keeps the last conv layer's activations. Each ``register_*`` returns
a handle whose ``.remove()`` takes the hook out again. Hooks fire wherever the
module is *called* — inside ``Sequential`` and inside any custom ``forward``
that calls its submodules — but not if code calls ``module.forward`` directly.
"""
from __future__ import annotations

import numbers
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from ..backend import to_device
from ..autograd.tensor import Tensor, names_a_dtype, resolve_dtype, shape_str
from ..device import device as mc_device, move


def check_state_value(key, value):
    """One state_dict value: a Tensor, a numeric array (``shape`` and ``dtype``), or a number.

    TypeError otherwise — a string, a list, None — naming the key, instead of a
    confusing failure later ("shape mismatch ... got ()", "'int' object is not iterable").
    """
    if isinstance(value, Tensor):
        return
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        try:
            kind = np.dtype(value.dtype).kind
        except TypeError:                 # a dtype NumPy does not name (PyTorch's): converted later
            return
        if kind in "biuf":
            return
        raise TypeError(f"load_state_dict: {key!r} must hold numbers, got an array of dtype {value.dtype}")
    raise TypeError(f"load_state_dict: {key!r} must be a Tensor or an array, got {type(value).__name__}")


class Parameter(Tensor):
    """A tensor that is a model's learnable weight: requires_grad=True by default."""

    def __init__(self, data, requires_grad=True):
        dtype = data.dtype if isinstance(data, Tensor) else None
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class RemovableHandle:
    """Returned by ``register_forward_hook`` / ``register_forward_pre_hook``: ``.remove()`` it."""

    _next_id = 0

    def __init__(self, hooks_dict):
        self._hooks = hooks_dict
        self.id = RemovableHandle._next_id
        RemovableHandle._next_id += 1

    def remove(self):
        self._hooks.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


class Module:
    """Base class of every layer and model. Subclasses define ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- registration ------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before "
                                 "assigning attributes in __init__")
        params, buffers, modules = self._parameters, self._buffers, self._modules
        if isinstance(value, (Parameter, Module)):
            for store in (params, buffers, modules, self.__dict__):
                store.pop(name, None)
            (params if isinstance(value, Parameter) else modules)[name] = value
        elif name in params or name in modules:
            if value is not None:
                kind = "nn.Parameter" if name in params else "nn.Module"
                raise TypeError(f"cannot assign a {type(value).__name__} to {name!r}: "
                                f"expected an {kind} or None")
            (params if name in params else modules)[name] = None
        elif name in buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"buffer {name!r} must be a Tensor or None, got {type(value).__name__}")
            buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        for store in ("_parameters", "_buffers", "_modules"):
            d = self.__dict__.get(store)
            if d is not None and name in d:
                return d[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name, tensor, persistent=True):
        """Attach a non-trained tensor that moves and saves with the module."""
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer({name!r}): expected a Tensor or None, "
                            f"got {type(tensor).__name__}")
        self.__dict__.pop(name, None)
        self._buffers[name] = tensor
        if not persistent:
            self._non_persistent.add(name)

    def register_parameter(self, name, param):
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter({name!r}): expected a Parameter or None, "
                            f"got {type(param).__name__}")
        self._parameters[name] = param

    def add_module(self, name, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module({name!r}): expected a Module, got {type(module).__name__}")
        self._modules[name] = module

    # -- traversal -------------------------------------------------------------
    def named_modules(self, prefix=""):
        """Yield (dotted name, module) for this module and every descendant."""
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        for name, child in self._modules.items():
            if child is not None:
                yield name, child

    def children(self):
        for _, child in self.named_children():
            yield child

    def named_parameters(self, prefix="", recurse=True):
        """Yield (dotted name, parameter); a parameter shared by two layers comes once."""
        seen = set()
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mod_prefix, module in modules:
            for name, p in module._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True):
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mod_prefix, module in modules:
            for name, b in module._buffers.items():
                if b is not None:
                    yield (f"{mod_prefix}.{name}" if mod_prefix else name), b

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # -- modes and housekeeping ----------------------------------------------
    def train(self, mode=True):
        """Training mode (dropout active, batch norm uses batch statistics).

        A BatchNorm frozen by ``nn.utils.freeze(..., bn_eval=True)`` stays in
        eval mode (its running statistics must not move).
        """
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode) and not m.__dict__.get("_frozen_eval", False))
        return self

    def eval(self):
        """Evaluation mode: dropout off, batch norm uses its running statistics."""
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, requires_grad=True):
        """Set ``requires_grad`` on every parameter (``False`` freezes them); returns self.

        A frozen parameter gets no ``.grad`` and optimizers leave it unchanged.
        BatchNorm's running statistics are buffers and still update in training
        mode: use ``nn.utils.freeze(module)`` to pin those too.
        """
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def apply(self, fn):
        """Call ``fn(module)`` on every descendant, then on self (as PyTorch)."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def to(self, *args, dtype=None, device=None):
        """``module.to(device)``, ``.to(dtype)``, ``.to(device, dtype)``: parameters and buffers, in place.

        A dtype converts the floating ones; a device moves every array (and
        gradient) there. Returns self. As ``Tensor.to``, moving does not switch
        minicnn's backend (``minicnn/device.py``).
        """
        for a in args:
            if isinstance(a, (str, mc_device)) and not names_a_dtype(a):
                device = a
            else:
                dtype = a
        dtype = resolve_dtype(dtype)
        device = None if device is None else mc_device(device)
        for t in list(self.parameters()) + list(self.buffers()):
            if dtype is not None and t.array.dtype.kind == "f":
                t.array = t.array.astype(dtype)
                if t.grad is not None:
                    t.grad = Tensor(t.grad.array.astype(dtype), dtype=dtype)
            if device is not None:
                t.array = move(t.array, device)
                if t.grad is not None:
                    t.grad = Tensor(move(t.grad.array, device), dtype=t.grad.dtype)
        return self

    def cpu(self):
        return self.to("cpu")

    def cuda(self, device=None):
        return self.to("cuda" if device is None else mc_device("cuda", device) if isinstance(device, int) else device)

    def double(self):
        return self.to(np.float64)

    def float(self):
        return self.to(np.float32)

    def num_parameters(self, trainable_only=True):
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # -- saving and loading ----------------------------------------------------
    def state_dict(self):
        """OrderedDict of dotted name -> tensor (parameters, then persistent buffers).

        The tensors share data with the module (as in PyTorch); copy them, e.g.
        with ``{k: v.numpy() for k, v in sd.items()}``, to keep a snapshot.
        """
        out = OrderedDict()
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                if p is not None:
                    out[f"{prefix}.{name}" if prefix else name] = p.detach()
            for name, b in module._buffers.items():
                if b is not None and name not in module._non_persistent:
                    out[f"{prefix}.{name}" if prefix else name] = b.detach()
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy values (Tensors or arrays) into this module's parameters and buffers.

        Strict (the default): every key must be present, no extra keys, every
        shape must match; otherwise nothing is changed and the error lists all
        problems. Values are cast to the existing dtype and moved to the backend.

        ``state_dict`` must be a mapping (name -> value), and each value a Tensor,
        an array (NumPy, CuPy, PyTorch: anything with ``shape`` and ``dtype``) of
        numbers, or a plain number for a 0-d entry; anything else is a TypeError
        naming the key (PyTorch refuses them too).
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"load_state_dict into {type(self).__name__}: expected a dict-like state_dict "
                            f"(name -> tensor), got {type(state_dict).__name__}")
        given = OrderedDict(state_dict)
        for k, value in given.items():
            check_state_value(k, value)
        own = self.state_dict()
        missing = [k for k in own if k not in given]
        unexpected = [str(k) for k in given if k not in own]
        wrong = []
        for k, target in own.items():
            if k in given:
                shape = tuple(getattr(given[k], "shape", np.shape(given[k])))
                if shape != target.shape:
                    wrong.append(f"{k}: expected shape {shape_str(target.shape)}, got {shape_str(shape)}")
        problems = []
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if wrong:
            problems.append("shape mismatch: " + "; ".join(wrong))
        if problems:
            raise KeyError(f"load_state_dict into {type(self).__name__}: " + " | ".join(problems))
        live = {}
        for prefix, module in self.named_modules():
            for store in (module._parameters, module._buffers):
                for name, t in store.items():
                    if t is not None:
                        live[f"{prefix}.{name}" if prefix else name] = t
        for k, value in given.items():
            if k in live:
                arr = value.array if isinstance(value, Tensor) else value
                t = live[k]
                # a private copy in t's dtype, on the active backend
                t.array = to_device(np.asarray(arr) if not hasattr(arr, "dtype") else arr,
                                   dtype=t.array.dtype).reshape(t.shape).copy()
        return {"missing_keys": missing, "unexpected_keys": unexpected}

    # -- calling and hooks -------------------------------------------------
    def register_forward_pre_hook(self, hook):
        """``hook(module, inputs)`` runs before ``forward``; it may return new inputs.

        ``inputs`` is the tuple of positional arguments; a returned non-tuple
        value is wrapped into a 1-tuple (as PyTorch). Returns a handle with ``.remove()``.
        """
        if not callable(hook):
            raise TypeError(f"register_forward_pre_hook: expected a callable, got {type(hook).__name__}")
        handle = RemovableHandle(self._forward_pre_hooks)
        self._forward_pre_hooks[handle.id] = hook
        return handle

    def register_forward_hook(self, hook):
        """``hook(module, inputs, output)`` runs after ``forward``; it may return a new output.

        Returns a handle with ``.remove()``.
        """
        if not callable(hook):
            raise TypeError(f"register_forward_hook: expected a callable, got {type(hook).__name__}")
        handle = RemovableHandle(self._forward_hooks)
        self._forward_hooks[handle.id] = hook
        return handle

    def __call__(self, *args, **kwargs):
        for hook in list(self._forward_pre_hooks.values()):
            result = hook(self, args)
            if result is not None:
                args = result if isinstance(result, tuple) else (result,)
        output = self.forward(*args, **kwargs)
        for hook in list(self._forward_hooks.values()):
            result = hook(self, args, output)
            if result is not None:
                output = result
        return output

    def extra_repr(self) -> str:
        """One line of settings shown inside ``Name(...)`` (override in layers)."""
        return ""

    def __repr__(self):
        lines = []
        extra = self.extra_repr()
        if extra:
            lines.extend(extra.split("\n"))
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"({name}): {child_repr}")
        if not lines:
            return f"{type(self).__name__}()"
        if len(lines) == 1 and not self._modules:
            return f"{type(self).__name__}({lines[0]})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"
