"""Backward, one step at a time: :func:`trace_backward`.

``loss.backward()`` visits the Functions of the graph in reverse topological
order (engine.py) and, at each, applies the chain rule once: the gradient the
Function's output received, dL/dout, goes in; one gradient per input,
dL/din = dL/dout · dout/din, comes out. :func:`trace_backward` runs that same
backward and hands back one :class:`BackwardStep` per Function, in the order
the engine took them, so a notebook can print or draw each step::

    for step in mc.autograd.trace_backward(loss, params=dict(model.named_parameters())):
        print(step)

The gradients in the steps are the engine's own arrays (it watches the real
backward through the observer hook, observer.py), so they are bit for bit the
ones ``backward`` adds up in ``.grad``; after the trace, ``.grad`` holds what
``loss.backward()`` would have left there.

A tensor used twice (``y`` in ``y * y + y``) receives one gradient per use;
the engine adds them up before passing the sum on. A step marks the inputs
whose gradient was *added* to one already received (``step.accumulated``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import to_host
from .engine import topological_order
from .observer import OperationObserver, observe
from .tensor import Tensor, shape_str


@dataclass
class BackwardStep:
    """What one Function did during backward.

    Attributes:
        step: 0 for the first Function backward visits (the one that made the
            output), then 1, 2, ...
        position: where the Function's output stands in
            :func:`~minicnn.autograd.engine.topological_order` of the traced
            output (inputs first, the output last): steps go from the highest
            position down.
        name: the Function's class name (``"Conv2dFn"``).
        function: the Function object itself.
        output: the tensor the Function made.
        grad_output: dL/d(output), an array of ``output``'s shape: what the Function received.
        inputs: the Function's inputs (tensors, or ``None``).
        input_names: a name per input: a parameter name from ``params``, ``"leaf"``
            for another leaf, the making Function's name and position for an
            intermediate (``"MulFn #2"``), ``"constant"`` for an input that needs no gradient.
        input_grads: dL/d(input) per input (an array, or ``None`` where the input
            needs no gradient): what the Function passed on.
        accumulated: per input, ``True`` where that tensor had already received a
            gradient from an earlier use, so this one was *added* to it.
    """

    step: int
    position: int
    name: str
    function: object
    output: Tensor
    grad_output: object
    inputs: tuple
    input_names: tuple
    input_grads: tuple
    accumulated: tuple

    def __str__(self):
        lines = [f"step {self.step}: {self.name} #{self.position}, "
                 f"received dL/dout {summary(self.grad_output)}"]
        for i, (name, grad, added) in enumerate(zip(self.input_names, self.input_grads, self.accumulated)):
            if grad is None:
                lines.append(f"    input {i} ({name}): no gradient")
                continue
            how = "  + added to the gradient it already had" if added else ""
            lines.append(f"    input {i} ({name}) <- {summary(grad)}{how}")
        return "\n".join(lines)


def summary(array, with_shape=True) -> str:
    """A one-line summary of an array: its shape, then its value or its mean, min and max."""
    values = np.asarray(to_host(array), dtype=np.float64)
    if values.size == 1:
        text = f"{values.reshape(-1)[0]:.4g}"
    elif values.size == 0:
        text = "(empty)"
    else:
        text = f"mean {values.mean():.3g}, min {values.min():.3g}, max {values.max():.3g}"
    return f"{shape_str(values.shape)} {text}" if with_shape else text


class _RecordBackward(OperationObserver):
    """Keeps what ``on_backward`` reports, in the order the engine calls it."""

    def __init__(self):
        self.calls = []

    def on_backward(self, fn, grad_output, input_grads):
        self.calls.append((fn, grad_output, tuple(input_grads)))


def input_name(tensor, names, positions) -> str:
    """How a step names an input (see :attr:`BackwardStep.input_names`).

    ``names``: ``{id(leaf): parameter name}``; ``positions``: ``{id(tensor):
    position in the topological order}``, written after a Function's name
    (``"MulFn #2"``) to tell two Functions of one kind apart.
    """
    if tensor is None or not tensor.requires_grad:
        return "constant"
    if tensor.grad_fn is not None:
        return f"{type(tensor.grad_fn).__name__} #{positions[id(tensor)]}"
    return names.get(id(tensor), "leaf")


def parameter_names(params) -> dict:
    """``{id(tensor): name}`` from a ``{name: tensor}`` dict, ``model.named_parameters()`` or a model."""
    if params is None:
        return {}
    if hasattr(params, "named_parameters"):             # a model: its parameters' names
        params = params.named_parameters()
    items = params.items() if isinstance(params, dict) else params
    try:
        items = [(name, value) for name, value in items]
    except (TypeError, ValueError):
        raise TypeError("params: expected a dict of name -> Tensor (e.g. dict(model.named_parameters())), "
                        f"got {type(params).__name__}") from None
    names = {}
    for name, value in items:
        if not isinstance(value, Tensor):
            raise TypeError(f"params: expected a dict of name -> Tensor (e.g. dict(model.named_parameters())), "
                            f"got {type(value).__name__} for {name!r}")
        names[id(value)] = name
    return names


def trace_backward(output, grad=None, params=None) -> list:
    """Run ``output.backward(grad)``; return one :class:`BackwardStep` per Function, in order.

    Args:
        output: the tensor to differentiate (usually the scalar loss); it must
            have been computed with gradients recorded.
        grad: dL/d(output), as for :meth:`Tensor.backward` (omit it for a scalar).
        params: optional ``{name: tensor}`` (``dict(model.named_parameters())``,
            or the model itself) to name the leaves in ``step.input_names``.

    Backward runs at once, in full, through the engine; the list holds the
    steps in the order the engine took them (the reverse of
    :func:`~minicnn.autograd.engine.topological_order`): iterate over it to
    replay backward one Function at a time. Leaves' ``.grad`` is filled
    exactly as ``output.backward(grad)`` fills it (added to what was there).
    """
    if not isinstance(output, Tensor):
        raise TypeError(f"trace_backward: expected a Tensor, got {type(output).__name__}")
    if output.grad_fn is None:
        raise ValueError("trace_backward: the tensor has no graph to step through (no operation made it "
                         "with gradients recorded); compute it from tensors with requires_grad=True, "
                         "outside no_grad()")
    names = parameter_names(params)
    order = topological_order(output)
    positions = {id(t): position for position, t in enumerate(order)}
    made_by = {id(t.grad_fn): (position, t) for position, t in enumerate(order) if t.grad_fn is not None}
    with observe(_RecordBackward()) as recorder:
        output.backward(grad)
    received = set()                    # ids of the tensors that have received a gradient so far
    steps = []
    for step, (fn, grad_output, input_grads) in enumerate(recorder.calls):
        position, made = made_by[id(fn)]
        accumulated = []
        for parent, parent_grad in zip(fn.inputs, input_grads):
            flows = parent is not None and parent_grad is not None and parent.requires_grad
            accumulated.append(flows and id(parent) in received)
            if flows:
                received.add(id(parent))
        steps.append(BackwardStep(step=step, position=position, name=type(fn).__name__, function=fn,
                                  output=made, grad_output=grad_output, inputs=tuple(fn.inputs),
                                  input_names=tuple(input_name(t, names, positions) for t in fn.inputs),
                                  input_grads=input_grads, accumulated=tuple(accumulated)))
    return steps
