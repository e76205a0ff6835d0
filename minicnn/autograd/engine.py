"""Reverse-mode automatic differentiation: what ``Tensor.backward`` does, in two steps.

Calling operations records a graph (tensor.py): each tensor an operation made
points to its :class:`~minicnn.autograd.tensor.Function` (``tensor._ctx``), and the
Function to its input tensors (``fn.inputs``). ``y.backward()`` then

1. :func:`topological_order` — lists the tensors ``y`` was computed from, each
   one after every tensor it was computed from;
2. :func:`backpropagate` — walks that list backwards, from ``y`` to the leaves,
   applying the chain rule once per Function.

Both loops are iterative, so a chain of 10,000 operations does not hit
Python's recursion limit.
"""
from __future__ import annotations

from .observer import observers
from .tensor import shape_str


def topological_order(output) -> list:
    """Every tensor ``output`` depends on (through tensors that require grad), inputs first.

    The list is a *topological order* of the graph: each tensor comes after
    all the tensors it was computed from, so ``output`` is last and the leaves
    come early. Why backward needs it: a tensor used several times receives
    one gradient from each use, and may pass its gradient on to its own
    inputs only once *all* of them have arrived. Reading the list backwards
    visits every use of a tensor before the tensor itself::

        x = mc.tensor(2.0, requires_grad=True)
        y = x * 3                  # y is used twice below
        z = y * y + y              # dz/dy = 2y + 1 = 13 arrives in two parts
        z.backward()               # only then y hands on 13 * 3: x.grad = 39

    Here the order is ``[x, y, y*y, z]`` (the constant 3 does not require
    grad, so it is left out): ``y*y`` and ``z`` — both users of ``y`` — come
    after ``y``.

    How: depth-first search with an explicit stack instead of recursion. A
    tensor is pushed twice: first to visit its inputs, then (marked
    ``inputs_done``) to be appended once they are all in the list.
    """
    order, visited = [], set()          # visited holds id()s: tensors compare with ==, elementwise
    stack = [(output, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node._ctx is not None:
            for parent in node._ctx.inputs:
                if parent is not None and parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    return order


def backpropagate(output, grad) -> None:
    """Accumulate ``grad`` · d(output)/d(leaf) into ``.grad`` of every leaf ``output`` depends on.

    ``grad`` is an array of ``output``'s shape: the gradient of some final
    scalar L with respect to ``output`` (1 when ``output`` is L itself).
    Visiting the tensors in reverse :func:`topological_order`, for each tensor
    ``t`` made by a Function ``fn`` from inputs ``a, b, ...``:

    * take dL/dt, which is complete now: every use of ``t`` was visited before;
    * ``fn.backward(dL/dt)`` returns ``(dL/da, dL/db, ...)`` — the chain rule,
      dL/da = dL/dt · dt/da;
    * add each to what its input has already received. A tensor used twice
      gets the sum of both contributions — the multivariate chain rule,
      dL/da = Σ over the uses u of a of dL/du · du/da.

    Leaves (tensors no recorded operation made, e.g. parameters) add what they
    receive to ``.grad``, as do intermediates marked with ``retain_grad()``;
    other intermediate gradients are dropped once used.
    """
    grads = {id(output): grad}          # dL/dt for the tensors t reached so far, by id
    for node in reversed(topological_order(output)):
        g = grads.pop(id(node), None)
        if g is None:                   # every path to it returned None: nothing to pass on
            continue
        if node._ctx is None or node._retain_grad:
            node._accumulate(g)
        if node._ctx is None:           # a leaf: the graph ends here
            continue
        fn = node._ctx
        input_grads = fn.backward(g)
        if not isinstance(input_grads, tuple):
            input_grads = (input_grads,)
        _check_input_grads(fn, input_grads)
        if observers:                  # someone is watching (observer.py): detect_anomaly, ...
            for observer in observers:
                observer.on_backward(fn, g, input_grads)
        for parent, parent_grad in zip(fn.inputs, input_grads):
            if parent is None or parent_grad is None or not parent.requires_grad:
                continue
            key = id(parent)
            grads[key] = parent_grad if key not in grads else grads[key] + parent_grad


def _check_input_grads(fn, input_grads):
    """One gradient per input, each of its input's shape (a ``None`` gradient means zero)."""
    if len(input_grads) != len(fn.inputs):
        raise RuntimeError(f"{type(fn).__name__}.backward returned {len(input_grads)} "
                           f"gradients for {len(fn.inputs)} inputs")
    for parent, parent_grad in zip(fn.inputs, input_grads):
        if parent is None or parent_grad is None or not parent.requires_grad:
            continue
        if parent_grad.shape != parent.array.shape:
            raise RuntimeError(f"{type(fn).__name__}.backward returned a gradient of shape "
                               f"{shape_str(parent_grad.shape)} for an input of shape "
                               f"{shape_str(parent.shape)}")
