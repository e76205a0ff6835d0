"""Pruning: zero out weights through a mask, with ``torch.nn.utils.prune``'s API.

Pruning a tensor ``weight`` of a module *reparametrizes* it::

    module.weight_orig   the Parameter the optimizer trains (the old ``weight`` object)
    module.weight_mask   a buffer of 0s and 1s, same shape (saved in the state_dict)
    module.weight        = weight_orig * weight_mask, recomputed by a forward pre-hook
                           before every call of the module

so the forward pass sees the pruned weights and, since ``weight`` is a product
with a constant mask, the gradient reaching ``weight_orig`` is ``grad * mask``:
zero wherever a weight was removed. ``remove(module, "weight")`` makes the
pruning permanent (``weight`` becomes a plain Parameter again, zeros in place).

How the mask is chosen (``amount``: a fraction in [0, 1] of the entries, or an
int count; a fraction is rounded with Python's ``round``, as PyTorch does):

* :func:`l1_unstructured` — the ``amount`` entries of smallest ``|w|`` (magnitude
  pruning, Han et al. 2015).
* :func:`random_unstructured` — ``amount`` entries chosen at random (a baseline).
* :func:`ln_structured` — whole slices along ``dim`` (``dim=0``: whole conv
  filters / output neurons) with the smallest L\\ :sub:`n` norm (Li et al. 2017).
  This is the kind of sparsity that can be turned into a smaller dense model
  (:func:`minicnn.compress.shrink`).
* :func:`global_unstructured` — one magnitude threshold over several tensors at
  once: layers with many small weights lose more of them.

Pruning twice composes as in PyTorch (a ``PruningContainer``): the new method
only looks at the entries (unstructured) or channels (structured) that are
still alive, so ``l1_unstructured(m, "weight", 0.5)`` twice leaves 25 %.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ..backend import current, to_host
from ..autograd.tensor import Tensor

__all__ = ["BasePruningMethod", "PruningContainer", "Identity", "L1Unstructured", "RandomUnstructured",
           "LnStructured", "CustomFromMask", "identity", "l1_unstructured", "random_unstructured",
           "ln_structured", "global_unstructured", "custom_from_mask", "remove", "is_pruned", "sparsity",
           "SparsityReport"]


# -----------------------------------------------------------------------------
# amount: a fraction or a count
# -----------------------------------------------------------------------------
def _validate_amount_init(amount):
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(f"invalid type for amount: {amount!r} ({type(amount).__name__}); "
                        "must be an int (a count) or a float (a fraction in [0, 1])")
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise ValueError(f"amount={amount} should either be a float in the range [0, 1] "
                             "or a non-negative integer")
    elif not (0.0 <= float(amount) <= 1.0):
        raise ValueError(f"amount={amount} should either be a float in the range [0, 1] "
                         "or a non-negative integer")


def _nparams_toprune(amount, tensor_size):
    """How many of ``tensor_size`` entries to prune (round() as PyTorch: 2.5 -> 2)."""
    if isinstance(amount, numbers.Integral):
        if amount > tensor_size:
            raise ValueError(f"amount={amount} should be smaller than the number of parameters "
                             f"to prune={tensor_size}")
        return int(amount)
    return round(amount * tensor_size)


def _smallest(scores, k):
    """Flat indices of the k smallest entries of a 1-D array (stable on ties)."""
    return current.xp.argsort(scores, kind="stable")[:k]


# -----------------------------------------------------------------------------
# Methods
# -----------------------------------------------------------------------------
class BasePruningMethod:
    """A way of computing a mask; also the forward pre-hook that applies it.

    Subclasses set ``PRUNING_TYPE`` ("unstructured", "structured" or "global")
    and implement ``compute_mask(t, default_mask)``: ``t`` the importance
    scores (by default the current weights), ``default_mask`` the mask so far.
    """

    PRUNING_TYPE = None
    _tensor_name = None

    def __call__(self, module, inputs):
        setattr(module, self._tensor_name, self.apply_mask(module))

    def compute_mask(self, t, default_mask):
        raise NotImplementedError

    def apply_mask(self, module):
        """``orig * mask`` as a Tensor in the autograd graph (gradient to orig only where mask = 1)."""
        orig = getattr(module, self._tensor_name + "_orig")
        mask = getattr(module, self._tensor_name + "_mask")
        return orig * mask

    @classmethod
    def apply(cls, module, name, *args, importance_scores=None, **kwargs):
        """Prune ``module.<name>`` with this method; returns the (possibly composite) method."""
        _check_name(module, name)
        old_key, old_method = _find_method(module, name)
        method = cls(*args, **kwargs)
        method._tensor_name = name
        if old_method is not None:
            container = old_method if isinstance(old_method, PruningContainer) \
                else PruningContainer(old_method)
            container.add_pruning_method(method)
            method = container
        current_weight = getattr(module, name)            # orig * mask once pruned before
        if importance_scores is None:
            importance_scores = current_weight
        elif tuple(importance_scores.shape) != tuple(current_weight.shape):
            raise ValueError(f"importance_scores has shape {tuple(importance_scores.shape)} but "
                             f"{name} of {type(module).__name__} has {tuple(current_weight.shape)}")
        scores = importance_scores.array if isinstance(importance_scores, Tensor) else importance_scores
        if old_method is None:
            default_mask = current.xp.ones_like(current_weight.array)
        else:
            default_mask = getattr(module, name + "_mask").array.copy()
        # compute first (errors leave the module untouched), then reparametrize
        mask = method.compute_mask(scores, default_mask=default_mask)
        if old_method is None:
            orig = module._parameters[name]
            module.register_parameter(name + "_orig", orig)
            del module._parameters[name]
        else:
            del module._forward_pre_hooks[old_key]
        module.register_buffer(name + "_mask", Tensor(mask, dtype=current_weight.array.dtype))
        setattr(module, name, method.apply_mask(module))
        module.register_forward_pre_hook(method)
        return method

    def prune(self, t, default_mask=None, importance_scores=None):
        """``t * mask`` for a plain tensor (no module involved)."""
        data = t.array if isinstance(t, Tensor) else t
        scores = data if importance_scores is None else getattr(importance_scores, "array", importance_scores)
        if default_mask is None:
            default_mask = current.xp.ones_like(data)
        return t * Tensor(self.compute_mask(scores, default_mask=default_mask), dtype=data.dtype)

    def remove(self, module):
        """Make the pruning permanent: ``weight`` becomes a Parameter holding ``orig * mask``."""
        name = self._tensor_name
        weight = self.apply_mask(module)
        if name in module.__dict__:
            delattr(module, name)
        orig = module._parameters[name + "_orig"]
        orig.array = weight.array
        orig.grad = None
        del module._parameters[name + "_orig"]
        del module._buffers[name + "_mask"]
        setattr(module, name, orig)


class PruningContainer(BasePruningMethod):
    """A sequence of pruning methods applied one after the other to one tensor.

    Each new method's mask is computed only on what the previous masks left:
    unstructured methods see the entries still equal to 1, structured methods
    the channels (along their ``dim``) that still hold a 1, global methods everything.
    """

    def __init__(self, *methods):
        self._pruning_methods = ()
        if len(methods) == 1 and not isinstance(methods[0], BasePruningMethod):
            methods = tuple(methods[0])
        for m in methods:
            if self._tensor_name is None:
                self._tensor_name = m._tensor_name
            self.add_pruning_method(m)

    def add_pruning_method(self, method):
        if not isinstance(method, BasePruningMethod):
            raise TypeError(f"{type(method).__name__} is not a BasePruningMethod subclass")
        if self._tensor_name is not None and method._tensor_name != self._tensor_name:
            raise ValueError(f"can only add pruning methods acting on the parameter named "
                             f"'{self._tensor_name}' to this PruningContainer; got "
                             f"'{method._tensor_name}'")
        self._pruning_methods += (method,)

    def __len__(self):
        return len(self._pruning_methods)

    def __iter__(self):
        return iter(self._pruning_methods)

    def __getitem__(self, idx):
        return self._pruning_methods[idx]

    def compute_mask(self, t, default_mask):
        method = self._pruning_methods[-1]
        new_mask = default_mask.astype(t.dtype)
        if method.PRUNING_TYPE == "unstructured":
            alive = default_mask == 1
            partial = method.compute_mask(t[alive], default_mask=default_mask[alive])
            new_mask[alive] = partial
        elif method.PRUNING_TYPE == "structured":
            dim = method.dim if method.dim >= 0 else t.ndim + method.dim
            other = tuple(d for d in range(t.ndim) if d != dim)
            keep = current.xp.flatnonzero(default_mask.sum(axis=other) != 0)     # live channels
            t_live = current.xp.take(t, keep, axis=dim)
            m_live = current.xp.take(default_mask, keep, axis=dim)
            partial = method.compute_mask(t_live, default_mask=m_live)
            slc = [slice(None)] * t.ndim
            slc[dim] = keep
            new_mask[tuple(slc)] = partial
        elif method.PRUNING_TYPE == "global":
            new_mask = method.compute_mask(t, default_mask=default_mask).astype(t.dtype)
        else:
            raise ValueError(f"unrecognized PRUNING_TYPE {method.PRUNING_TYPE!r}")
        return new_mask


class Identity(BasePruningMethod):
    """A mask of ones: the reparametrization without removing anything."""

    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t, default_mask):
        return default_mask.copy()


class L1Unstructured(BasePruningMethod):
    """Zero the ``amount`` entries with the smallest absolute value."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, amount):
        _validate_amount_init(amount)
        self.amount = amount

    def compute_mask(self, t, default_mask):
        k = _nparams_toprune(self.amount, int(t.size))
        mask = default_mask.copy()
        if k:
            mask.reshape(-1)[_smallest(current.xp.abs(t).reshape(-1), k)] = 0
        return mask


class RandomUnstructured(BasePruningMethod):
    """Zero ``amount`` entries chosen uniformly at random (minicnn's seeded generator)."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, amount):
        _validate_amount_init(amount)
        self.amount = amount

    def compute_mask(self, t, default_mask):
        from .. import rng
        from ..backend import to_device
        k = _nparams_toprune(self.amount, int(t.size))
        mask = default_mask.copy()
        if k:
            scores = to_device(rng.generator().random(int(t.size)))
            mask.reshape(-1)[_smallest(scores, k)] = 0
        return mask


def _norm(t, n, dim):
    """L_n norm of every slice ``t[..., i, ...]`` along ``dim`` (over all the other axes)."""
    xp = current.xp
    other = tuple(d for d in range(t.ndim) if d != dim)
    a = xp.abs(t.astype(np.float64))
    if n == "fro":
        n = 2
    if n == math.inf:
        return a.max(axis=other)
    if n == -math.inf:
        return a.min(axis=other)
    if n == 0:
        return (a != 0).sum(axis=other).astype(np.float64)
    return (a ** n).sum(axis=other) ** (1.0 / n)


class LnStructured(BasePruningMethod):
    """Zero whole slices along ``dim`` (filters for dim=0) with the smallest L_n norm."""

    PRUNING_TYPE = "structured"

    def __init__(self, amount, n, dim=-1):
        _validate_amount_init(amount)
        if not (n == "fro" or (isinstance(n, numbers.Real) and not isinstance(n, bool))):
            raise ValueError(f"ln_structured: n must be a number, inf, -inf or 'fro', got {n!r}")
        self.amount, self.n, self.dim = amount, n, dim

    def compute_mask(self, t, default_mask):
        if t.ndim <= 1:
            raise ValueError(f"structured pruning can only be applied to multidimensional tensors; "
                             f"found a tensor of shape {tuple(t.shape)} with {t.ndim} dims")
        if not -t.ndim <= self.dim < t.ndim:
            raise ValueError(f"ln_structured: dim={self.dim} is out of range for a tensor with {t.ndim} dims")
        dim = self.dim if self.dim >= 0 else t.ndim + self.dim
        size = int(t.shape[dim])
        k = _nparams_toprune(self.amount, size)
        if k == 0:
            return default_mask.copy()
        norms = _norm(t, self.n, dim)
        pruned = _smallest(norms, k)                       # the k weakest slices
        keep = current.xp.ones(size, dtype=default_mask.dtype)
        keep[pruned] = 0
        shape = [1] * t.ndim
        shape[dim] = size
        return default_mask * keep.reshape(shape)


class CustomFromMask(BasePruningMethod):
    """Use a given mask (combined with the existing one by multiplication)."""

    PRUNING_TYPE = "global"

    def __init__(self, mask):
        self.mask = mask

    def compute_mask(self, t, default_mask):
        mask = self.mask.array if isinstance(self.mask, Tensor) else self.mask
        mask = current.xp.asarray(mask)
        if tuple(mask.shape) != tuple(default_mask.shape):
            raise ValueError(f"custom_from_mask: mask has shape {tuple(mask.shape)}, "
                             f"expected {tuple(default_mask.shape)}")
        return default_mask * mask.astype(default_mask.dtype)


# -----------------------------------------------------------------------------
# Functional spellings
# -----------------------------------------------------------------------------
def _check_name(module, name):
    params = module.__dict__.get("_parameters", {})
    if name in params and params[name] is not None:
        return
    if name + "_orig" in params:                           # already pruned: fine
        return
    known = [n for n, p in params.items() if p is not None]
    raise AttributeError(f"{type(module).__name__} has no parameter named {name!r} to prune; "
                         f"its parameters are: {', '.join(known) or '(none)'}")


def _find_method(module, name):
    found = [(k, h) for k, h in module._forward_pre_hooks.items()
             if isinstance(h, BasePruningMethod) and h._tensor_name == name]
    if len(found) > 1:
        raise RuntimeError(f"{len(found)} pruning hooks act on {name!r}: the module is in a bad state")
    return found[0] if found else (None, None)


def identity(module, name):
    """Reparametrize ``name`` with a mask of ones (nothing removed)."""
    Identity.apply(module, name)
    return module


def l1_unstructured(module, name, amount, importance_scores=None):
    """Prune the ``amount`` smallest-magnitude entries of ``module.<name>``; returns module."""
    L1Unstructured.apply(module, name, amount=amount, importance_scores=importance_scores)
    return module


def random_unstructured(module, name, amount):
    """Prune ``amount`` random entries of ``module.<name>``; returns module."""
    RandomUnstructured.apply(module, name, amount=amount)
    return module


def ln_structured(module, name, amount, n, dim, importance_scores=None):
    """Prune ``amount`` slices along ``dim`` with the smallest L_n norm; returns module."""
    LnStructured.apply(module, name, amount=amount, n=n, dim=dim, importance_scores=importance_scores)
    return module


def custom_from_mask(module, name, mask):
    """Prune with a given 0/1 mask; returns module."""
    CustomFromMask.apply(module, name, mask=mask)
    return module


def global_unstructured(parameters, pruning_method, importance_scores=None, **kwargs):
    """Prune several tensors with one criterion over all their entries together.

    ``parameters``: an iterable of ``(module, name)``; ``pruning_method``: an
    unstructured method class (``L1Unstructured`` or ``RandomUnstructured``);
    ``kwargs``: its arguments (``amount=0.9``). The entries already pruned are
    left out of the count, as in PyTorch.
    """
    xp = current.xp
    parameters = list(parameters)
    if not parameters:
        raise ValueError("global_unstructured: parameters is empty; expected (module, name) pairs")
    if not (isinstance(pruning_method, type) and issubclass(pruning_method, BasePruningMethod)):
        raise TypeError(f"global_unstructured: pruning_method must be a pruning method class such as "
                        f"prune.L1Unstructured, got {pruning_method!r}")
    if pruning_method.PRUNING_TYPE != "unstructured":
        raise TypeError(f"only 'unstructured' PRUNING_TYPE supported for the `pruning_method`; "
                        f"found method {pruning_method.__name__} of type {pruning_method.PRUNING_TYPE}")
    importance_scores = importance_scores or {}
    for module, name in parameters:
        _check_name(module, name)
    scores, masks = [], []
    for module, name in parameters:
        w = getattr(module, name)
        s = importance_scores.get((module, name), w)
        scores.append((s.array if isinstance(s, Tensor) else s).reshape(-1))
        m = getattr(module, name + "_mask", None)
        masks.append(xp.ones_like(w.array).reshape(-1) if m is None else m.array.reshape(-1))
    t, default_mask = xp.concatenate(scores), xp.concatenate(masks)
    method = pruning_method(**kwargs)
    container = PruningContainer()
    method._tensor_name = container._tensor_name = "temp"
    container.add_pruning_method(method)
    final = container.compute_mask(t, default_mask)
    start = 0
    for module, name in parameters:
        w = getattr(module, name)
        n = int(w.array.size)
        custom_from_mask(module, name, mask=final[start:start + n].reshape(w.shape))
        start += n


def remove(module, name):
    """Make the pruning of ``module.<name>`` permanent (drop ``_orig``, ``_mask`` and the hook)."""
    for k, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, BasePruningMethod) and hook._tensor_name == name:
            hook.remove(module)
            del module._forward_pre_hooks[k]
            return module
    raise ValueError(f"parameter {name!r} of module {type(module).__name__} has to be pruned "
                     "before pruning can be removed")


def is_pruned(module):
    """True if ``module`` or any submodule carries a pruning hook."""
    for _, m in module.named_modules():
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, BasePruningMethod):
                return True
    return False


# -----------------------------------------------------------------------------
# Reporting
# -----------------------------------------------------------------------------
class SparsityReport:
    """Fraction of zeros per parameter (the effective, masked tensors) and in total.

    ``rows``: ``[(name, zeros, total)]``; ``global_sparsity``: zeros / total over
    the weight tensors (conv and linear: two or more dims), ``overall_sparsity``
    over every parameter (biases and BN included). ``str()`` is a table.
    """

    def __init__(self, rows):
        self.rows = rows
        w = [(z, n) for name, z, n, nd in rows if nd >= 2]
        self.weight_zeros, self.weight_total = sum(z for z, _ in w), sum(n for _, n in w)
        self.zeros, self.total = sum(r[1] for r in rows), sum(r[2] for r in rows)
        self.global_sparsity = self.weight_zeros / max(self.weight_total, 1)
        self.overall_sparsity = self.zeros / max(self.total, 1)

    def __getitem__(self, name):
        for row in self.rows:
            if row[0] == name:
                return row[1] / max(row[2], 1)
        raise KeyError(name)

    def as_dict(self):
        return {"parameters": {name: {"zeros": z, "total": n, "sparsity": z / max(n, 1)}
                               for name, z, n, _ in self.rows},
                "global_sparsity": self.global_sparsity, "overall_sparsity": self.overall_sparsity,
                "weight_zeros": self.weight_zeros, "weight_total": self.weight_total}

    def __str__(self):
        width = max([len("weights (conv + linear)")] + [len(r[0]) for r in self.rows])
        lines = [f"{'parameter':<{width}}  {'zeros':>9}  {'total':>9}  sparsity",
                 "-" * (width + 33)]
        for name, z, n, _ in self.rows:
            lines.append(f"{name:<{width}}  {z:>9,}  {n:>9,}  {z / max(n, 1):7.2%}")
        lines.append("-" * (width + 33))
        lines.append(f"{'weights (conv + linear)':<{width}}  {self.weight_zeros:>9,}  "
                     f"{self.weight_total:>9,}  {self.global_sparsity:7.2%}")
        lines.append(f"{'all parameters':<{width}}  {self.zeros:>9,}  {self.total:>9,}  "
                     f"{self.overall_sparsity:7.2%}")
        return "\n".join(lines)

    __repr__ = __str__


def effective_parameters(model):
    """Yield (dotted name, host array) of every parameter as the forward pass sees it
    (``weight = weight_orig * weight_mask`` for pruned tensors, named ``weight``)."""
    for prefix, m in model.named_modules():
        for name, p in m._parameters.items():
            if p is None:
                continue
            if name.endswith("_orig") and name[:-5] + "_mask" in m._buffers:
                base = name[:-5]
                arr = to_host(p.array) * to_host(m._buffers[base + "_mask"].array)
                name = base
            else:
                arr = to_host(p.array)
            yield (f"{prefix}.{name}" if prefix else name), np.asarray(arr)


def sparsity(model):
    """Per-parameter and global fraction of zeros of ``model`` as a :class:`SparsityReport`."""
    rows = [(name, int((a == 0).sum()), int(a.size), a.ndim) for name, a in effective_parameters(model)]
    return SparsityReport(rows)
