"""``mc.detect_anomaly()``: find the operation that first made a NaN or an Inf.

A NaN loss tells you *that* training broke, not *where*. Inside
``with mc.detect_anomaly():`` every :class:`~minicnn.autograd.tensor.Function` checks
its result as it runs — the forward output, and in ``backward()`` each
gradient it returns (an operation observer, see observer.py) — and the first
one that is not finite raises
:class:`AnomalyError` naming the Function (``Log``, ``Div``, ...), the shapes
of its inputs, whether those inputs were already non-finite, and the line of
*your* code that created it::

    with mc.detect_anomaly():
        y = mc.tensor([1.0, 0.0], requires_grad=True).log()   # AnomalyError: Log ... -inf

After ``torch.autograd.detect_anomaly`` (which checks the backward only;
``check_forward=False`` does the same here). The checks cost a pass over
every array and a look at the call stack per operation: a debugging tool, not
something to leave on.
"""
from __future__ import annotations

import contextlib
import linecache
import os
import sys

from . import tensor as _tensor
from .observer import OperationObserver, observers, observe

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # minicnn/


class AnomalyError(RuntimeError):
    """A Function produced a non-finite forward output or backward gradient."""


def _shape(a):
    return "None" if a is None else "(" + ", ".join(map(str, a.shape)) + ("," if a.ndim == 1 else "") + ")"


def _finite(a):
    xp = _tensor.current.xp
    return a is None or a.dtype.kind not in "fc" or bool(xp.isfinite(a).all())


def _what(a):
    """'nan', 'inf', '-inf' or a mix, for the message."""
    xp = _tensor.current.xp
    kinds = [name for name, found in (("nan", xp.isnan(a).any()), ("inf", (a == xp.inf).any()),
                                      ("-inf", (a == -xp.inf).any())) if bool(found)]
    return "/".join(kinds)


def _call_site():
    """(user line, innermost minicnn line): where the operation was called from."""
    frame, inner = sys._getframe(3), None          # skip _call_site, on_forward, Function.apply
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        where = f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        if filename.startswith(_PACKAGE_DIR + os.sep):
            inner = inner or where
        else:
            code = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
            return where + (f": {code}" if code else ""), inner
        frame = frame.f_back
    return "unknown", inner


class _Detector(OperationObserver):
    """The observer (observer.py) that ``detect_anomaly`` installs."""

    def __init__(self, check_forward):
        self.check_forward = check_forward

    def _is_innermost(self):
        """Nested ``detect_anomaly`` blocks: only the innermost one checks (its settings win)."""
        return self is [o for o in observers if isinstance(o, _Detector)][-1]

    def on_forward(self, fn, inputs, options, output):
        """Called by Function.apply after ``forward``: remember where, check the output."""
        if not self._is_innermost():
            return
        fn._anomaly_site = _call_site()
        output = output.array
        if self.check_forward and not _finite(output):
            self._raise(fn, [t.array if t is not None else None for t in inputs],
                        f"its forward output {_shape(output)} contains {_what(output)}")

    def on_backward(self, fn, grad_output, grads):
        """Called by backpropagate after ``fn.backward``: check each input gradient."""
        if not self._is_innermost():
            return
        for i, (t, g) in enumerate(zip(fn.inputs, grads)):
            wanted = t is not None and t.requires_grad     # other gradients are thrown away
            if wanted and g is not None and not _finite(g):
                self._raise(fn, [t.array if t is not None else None for t in fn.inputs],
                            f"the gradient it returned for input {i} {_shape(g)} contains {_what(g)}")

    @staticmethod
    def _raise(fn, arrays, problem):
        site, inner = getattr(fn, "_anomaly_site", ("unknown (created outside detect_anomaly)", None))
        shapes = ", ".join(_shape(a) + ("" if a is None else f" {a.dtype}") for a in arrays)
        bad = [i for i, a in enumerate(arrays) if not _finite(a)]
        inputs_note = (f"; input(s) {bad} were already non-finite, so look further up"
                       if bad else "; all its inputs were finite, so this is where it starts")
        raise AnomalyError(f"detect_anomaly: Function {type(fn).__name__}: {problem}\n"
                           f"  inputs: {shapes}{inputs_note}\n"
                           f"  created at {site}" + (f"\n  (inside minicnn at {inner})" if inner else ""))


@contextlib.contextmanager
def detect_anomaly(check_forward=True):
    """Raise :class:`AnomalyError` at the first Function whose result is NaN/Inf (see module doc)."""
    with observe(_Detector(check_forward)):
        yield
