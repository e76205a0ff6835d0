"""Watch every operation as it runs: one hook for debugging tools and exporters.

Every operation in minicnn goes through two places: ``Function.apply`` (the
forward, tensor.py) and :func:`~minicnn.autograd.engine.backpropagate` (the backward,
engine.py). Each has exactly one line that tells the installed *observers*
what just happened:

* ``observer.on_forward(fn, inputs, options, output)`` after a Function's
  forward: ``fn`` is the Function object, ``inputs`` the input tensors (or
  ``None``), ``options`` the keyword arguments given to ``apply`` (a
  convolution's ``stride``, a sum's ``axis``), ``output`` the result tensor;
* ``observer.on_backward(fn, grad_output, input_grads)`` after a Function's
  backward: the gradient w.r.t. its output (an array) and the tuple it
  returned, one gradient (array or ``None``) per input. Backward visits the
  Functions in reverse topological order (output first).

Install one for a block of code with ``with observe(observer): ...``. Blocks
nest — every installed observer sees every operation, the outermost first —
and each observer is removed when its block ends, even by an exception.

Two tools in minicnn are observers: ``mc.detect_anomaly()`` (anomaly.py)
checks each result for NaN/Inf, and the ONNX exporter (onnx.py) records the
operations of one forward pass. With nobody watching, the cost is one test of
an empty list per operation.

A small example — count the operations of a forward pass::

    class Counter(OperationObserver):
        def __init__(self):
            self.names = []
        def on_forward(self, fn, inputs, options, output):
            self.names.append(type(fn).__name__)

    with observe(Counter()) as counter:
        model(x)
    print(counter.names)          # ['Conv2dFn', 'ReLUFn', ...]
"""
from __future__ import annotations

import contextlib

# The observers installed now, outermost first. Function.apply and backpropagate
# read this list on every operation: an empty list means "nobody is watching".
# It is changed in place (append / remove), never replaced, so modules that
# imported it always see the current contents.
observers = []


class OperationObserver:
    """The two methods an observer may implement; both do nothing by default."""

    def on_forward(self, fn, inputs, options, output):
        """Called after ``fn.forward``: input tensors, ``apply``'s keyword options, output tensor."""

    def on_backward(self, fn, grad_output, input_grads):
        """Called after ``fn.backward``: the gradient it received, the tuple of gradients it returned."""


@contextlib.contextmanager
def observe(observer):
    """Install ``observer`` for the body of the ``with`` block (and hand it back as ``as``)."""
    observers.append(observer)
    try:
        yield observer
    finally:
        observers.remove(observer)

