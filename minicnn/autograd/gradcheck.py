"""Numerical gradient checking: does backward agree with the definition of a derivative?

For a function ``f`` and a random fixed weighting ``v`` of its outputs, we
compare, for every element x_i of every input that requires a gradient::

    analytic:  (J^T v)_i          from one call of backward(v)
    numeric:   [s(x + eps e_i) - s(x - eps e_i)] / (2 eps),   s(x) = sum(v * f(x))

Central differences have error O(eps^2), so in float64 with eps = 1e-6 the two
agree to about 1e-9 relative for a correct backward; a wrong backward is off by
order 1. In float32 the rounding error of f (about ``1e-7 * |f|``) divided by eps
swamps the comparison — which is why gradient checks are done in float64.

An element passes when ``|analytic - numeric| <= atol + rtol * |numeric|``.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_host
from .tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """Raised when an analytic gradient disagrees with the numerical one."""


def _targets(fn, inputs):
    """(name, tensor) for every input that requires grad, then a Module's parameters."""
    found = [(f"input {i}", t) for i, t in enumerate(inputs)
             if isinstance(t, Tensor) and t.requires_grad]
    named = getattr(fn, "named_parameters", None)
    if callable(named):
        seen = {id(t) for _, t in found}
        found += [(f"parameter {name!r}", p) for name, p in named()
                  if p.requires_grad and id(p) not in seen]
    return found


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, seed=0, verbose=False):
    """Check ``fn``'s backward against central differences; return True or raise.

    Args:
        fn: a callable (a function or an ``nn.Module``) taking ``*inputs`` and
            returning a Tensor of any shape. A Module's parameters are checked too.
        inputs: a Tensor or a sequence of them (non-tensors pass through untouched).
            Every tensor that requires grad must be float64.
        eps, atol, rtol: step and tolerances (see the module docstring).
        verbose: print the worst absolute and relative error per input.

    Raises:
        GradcheckError naming the input, the worst element's index and the
        analytic and numeric values there.
    """
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    inputs = tuple(inputs)
    targets = _targets(fn, inputs)
    if not targets:
        raise ValueError("gradcheck: nothing to check — no input has requires_grad=True "
                         "and fn has no parameters")
    for name, t in targets:
        if t.dtype != np.float64:
            raise TypeError(f"gradcheck: {name} is {t.dtype}; gradient checks need float64 "
                            "(in float32 the rounding error divided by eps hides real bugs). "
                            "Create it with dtype='float64' (modules: .double())")

    out = fn(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    if not out.requires_grad:
        raise GradcheckError("gradcheck: the output does not depend on any checked input "
                             "(it does not require grad)")
    rs = np.random.default_rng(seed)
    weights = rs.standard_normal(out.shape)                        # the fixed projection v
    weights_t = Tensor(weights, dtype=out.dtype)

    # Analytic: one backward with grad = v gives J^T v for every target at once.
    for _, t in targets:
        t.grad = None
    out.backward(weights_t)
    analytic = [np.zeros(t.shape) if t.grad is None else to_host(t.grad.array).astype(np.float64)
                for _, t in targets]
    for _, t in targets:
        t.grad = None

    def scalar():
        with no_grad():
            return float((to_host(fn(*inputs).array).astype(np.float64) * weights).sum())

    for (name, t), a in zip(targets, analytic):
        numeric = np.zeros(t.shape)
        if not t.array.flags.c_contiguous:
            t.array = t.array.copy()                      # so that reshape(-1) is a view
        flat = t.array.reshape(-1)                       # a view: nudging it nudges t
        num_flat = numeric.reshape(-1)
        for i in range(flat.size):
            original = flat[i].item()
            flat[i] = original + eps
            plus = scalar()
            flat[i] = original - eps
            minus = scalar()
            flat[i] = original
            num_flat[i] = (plus - minus) / (2 * eps)

        err = np.abs(a - numeric)
        allowed = atol + rtol * np.abs(numeric)
        if verbose:
            rel = err / np.maximum(np.abs(a) + np.abs(numeric), 1e-300)
            print(f"gradcheck {name}: shape {t.shape}, max abs error {err.max(initial=0):.2e}, "
                  f"max relative error {rel.max(initial=0):.2e}")
        if np.any(~np.isfinite(a)) or np.any(err > allowed):
            excess = np.where(np.isfinite(a), err - allowed, np.inf)
            worst = np.unravel_index(int(np.argmax(excess)), t.shape) if t.shape else ()
            raise GradcheckError(
                f"gradcheck failed for {name} (shape {t.shape}) at index {tuple(int(i) for i in worst)}: "
                f"analytic {a[worst]:.10g} vs numeric {numeric[worst]:.10g} "
                f"(abs error {err[worst]:.3g} > allowed {allowed[worst]:.3g} = atol {atol:g} + "
                f"rtol {rtol:g} * |numeric|); {int((err > allowed).sum())} of {err.size} elements fail")
    return True
