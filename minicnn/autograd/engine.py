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

:func:`grad` (``mc.autograd.grad``, PyTorch's) runs the same walk but returns
the gradients of chosen tensors instead of adding to ``.grad``. With
``create_graph=True`` (here or in ``backward``) the walk calls each Function's
``backward_graph`` — its backward written with Tensor operations — so the
backward pass is recorded as a graph too, and gradients can be differentiated
again: Hessian-vector products, Newton's method, gradient penalties.
"""
from __future__ import annotations

from .observer import observers
from ..backend import current
from .tensor import Tensor, enable_grad, shape_str


def topological_order(output) -> list:
    """Every tensor ``output`` depends on (through tensors that require grad), inputs first.

    ``output`` may also be a list of tensors (:func:`grad` of several outputs):
    the order then holds everything any of them depends on.

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
    roots = output if isinstance(output, (list, tuple)) else [output]
    stack = [(root, False) for root in reversed(roots)]
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


def backpropagate(output, grad, create_graph=False, retain_graph=True, capture=None):
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

    Three options, all off by default (the default path is the one above):

    * ``create_graph=True`` — gradients of gradients. The gradients travel as
      :class:`Tensor` s instead of arrays, and each Function's
      ``backward_graph`` (its backward written with differentiable
      operations) is called instead of ``backward``, with gradient recording
      on. So the backward pass is itself recorded as a graph, and the
      gradients it leaves behind can be differentiated again (a Hessian-vector
      product, a gradient penalty). ``grad`` may then be a Tensor.
    * ``retain_graph=False`` — each Function visited drops what it saved for
      backward; a second backward through it raises (PyTorch's rule).
    * ``capture`` — a list of tensors (leaves or intermediates): their
      gradients are returned, as a list in the same order (``None`` for one the
      output does not depend on), and no ``.grad`` anywhere is touched. Only
      the part of the graph between the output and them is walked. This is
      :func:`grad`.
    """
    outputs = output if isinstance(output, (list, tuple)) else [output]
    seeds = grad if isinstance(output, (list, tuple)) else [grad]
    order = topological_order(outputs)
    wanted = None                       # capture: ids of the tensors on a path to a captured one
    if capture is not None:
        targets = {id(t) for t in capture}
        wanted = set()
        for node in order:              # inputs first: a node is wanted if it or a parent is
            if id(node) in targets or (node._ctx is not None and any(
                    p is not None and id(p) in wanted for p in node._ctx.inputs)):
                wanted.add(id(node))
        captured = {}
    grads = {}                          # dL/dt for the tensors t reached so far, by id
    for out, seed in zip(outputs, seeds):
        grads[id(out)] = seed if id(out) not in grads else grads[id(out)] + seed
    for node in reversed(order):
        g = grads.pop(id(node), None)
        if g is None:                   # every path to it returned None: nothing to pass on
            continue
        if capture is not None:
            if id(node) in targets:
                captured[id(node)] = g
        elif node._ctx is None or node._retain_grad:
            node._accumulate(g)
        if node._ctx is None:           # a leaf: the graph ends here
            continue
        if wanted is not None and not any(p is not None and id(p) in wanted for p in node._ctx.inputs):
            continue                    # nothing captured lies behind this Function
        fn = node._ctx
        if fn.released:
            raise RuntimeError(f"Trying to backward through the graph a second time (through "
                               f"{type(fn).__name__}): its saved values were freed by an earlier "
                               "backward with retain_graph=False; pass retain_graph=True to the first")
        if create_graph:
            input_grads = graph_backward_step(fn, g)
        else:
            input_grads = fn.backward(g)
        if not isinstance(input_grads, tuple):
            input_grads = (input_grads,)
        _check_input_grads(fn, input_grads)
        if observers:                  # someone is watching (observer.py): detect_anomaly, ...
            arrays = ((g.array, tuple(None if t is None else t.array for t in input_grads))
                      if create_graph else (g, input_grads))
            for observer in observers:
                observer.on_backward(fn, *arrays)
        if not retain_graph:
            fn.release()
        for parent, parent_grad in zip(fn.inputs, input_grads):
            if parent is None or parent_grad is None or not parent.requires_grad:
                continue
            key = id(parent)
            if wanted is not None and key not in wanted:
                continue
            if key in grads:
                if create_graph:
                    with enable_grad():
                        grads[key] = grads[key] + parent_grad
                else:
                    grads[key] = grads[key] + parent_grad
            else:
                grads[key] = parent_grad
    if capture is not None:
        return [captured.get(id(t)) for t in capture]
    return None


def graph_backward_step(fn, grad_output):
    """One Function's chain-rule step with ``create_graph=True``: ``fn.backward_graph(grad_output)``.

    ``grad_output`` is a Tensor; so are the gradients returned. Recording is
    switched on (even inside ``no_grad``), so the operations of the backward
    become a graph of their own. A Function without a ``backward_graph``
    raises, naming itself (Function.backward_graph's default), rather than
    give second derivatives that are silently wrong.
    """
    with enable_grad():
        return fn.backward_graph(grad_output)


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


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, allow_unused=False):
    """The gradients of ``outputs`` with respect to ``inputs``, returned (PyTorch's ``torch.autograd.grad``).

    Returns a tuple with one Tensor per input: Σ_k grad_outputs[k] · d outputs[k] / d input.
    Unlike ``backward()``, it leaves every ``.grad`` untouched.

    Args:
        outputs: a Tensor or a sequence of Tensors to differentiate.
        inputs: a Tensor or a sequence of Tensors (leaves or intermediates)
            to differentiate with respect to.
        grad_outputs: the "vector" of the vector-Jacobian product, one per
            output (a Tensor or array of its shape); may be left out (or be
            None) for a one-element output, where it is 1.
        retain_graph: False frees what the Functions saved, so a second
            backward through them raises; None or True keep the graph
            (minicnn's default, as ``backward()``: PyTorch frees it unless
            ``create_graph``).
        create_graph: record the backward pass, so the returned gradients have
            a graph of their own and can be differentiated again::

                x = mc.tensor([1., 2.], requires_grad=True)
                y = (x ** 3).sum()
                g, = mc.autograd.grad(y, x, create_graph=True)   # 3 x^2 = [3, 12]
                h, = mc.autograd.grad(g.sum(), x)                # 6 x   = [6, 12]

        allow_unused: an input the outputs do not depend on gets ``None``
            instead of an error.
    """
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    if grad_outputs is None or isinstance(grad_outputs, Tensor):
        grad_outputs = [grad_outputs] * len(outputs) if grad_outputs is None else [grad_outputs]
    grad_outputs = list(grad_outputs)
    if not outputs or not inputs:
        raise ValueError(f"grad: expected at least one output and one input, got {len(outputs)} and {len(inputs)}")
    if len(grad_outputs) != len(outputs):
        raise ValueError(f"grad: grad_outputs has {len(grad_outputs)} entries for {len(outputs)} outputs")
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"grad: inputs[{i}] must be a Tensor, got {type(t).__name__}")
        if not t.requires_grad:
            raise RuntimeError(f"grad: inputs[{i}] (shape {shape_str(t.shape)}) does not require grad")
    seeds = []
    for i, (out, g) in enumerate(zip(outputs, grad_outputs)):
        if not isinstance(out, Tensor):
            raise TypeError(f"grad: outputs[{i}] must be a Tensor, got {type(out).__name__}")
        if not out.requires_grad:
            raise RuntimeError(f"grad: outputs[{i}] does not require grad: none of the tensors it was "
                               "computed from has requires_grad=True")
        if g is None:
            if out.numel() != 1:
                raise RuntimeError(f"grad: outputs[{i}] has shape {shape_str(out.shape)}; grad_outputs "
                                   "can be left out only for a scalar (one-element) output; pass "
                                   "grad_outputs= with a gradient of that shape, or reduce it first (.sum())")
            g = Tensor(current.xp.ones_like(out.array), dtype=out.dtype)
        elif not isinstance(g, Tensor):
            g = Tensor(g, dtype=out.dtype)
        if g.shape != out.shape:
            raise ValueError(f"grad: grad_outputs[{i}] has shape {shape_str(g.shape)} but outputs[{i}] "
                             f"has shape {shape_str(out.shape)}")
        seeds.append(g if create_graph else g.array)
    found = backpropagate(outputs, seeds, create_graph=create_graph,
                          retain_graph=retain_graph is not False, capture=inputs)
    result = []
    for i, (t, g) in enumerate(zip(inputs, found)):
        if g is None:
            if not allow_unused:
                raise RuntimeError(f"grad: inputs[{i}] (shape {shape_str(t.shape)}) was not used to compute "
                                   "the outputs; pass allow_unused=True to get None for it")
            result.append(None)
            continue
        if not create_graph:                      # an array: wrap it, outside any graph
            g = Tensor(g if g.dtype == t.dtype else g.astype(t.dtype), dtype=t.dtype)
        elif g.dtype != t.dtype:
            g = g.astype(t.dtype)
        result.append(g)
    return tuple(result)
