"""The recorded graph, drawn: :func:`draw_graph`.

Every operation on tensors that require gradients records itself (tensor.py):
the output points to the :class:`~minicnn.autograd.tensor.Function` that made
it (``t.grad_fn``), the Function to its inputs (``fn.inputs``).
:func:`draw_graph` walks that graph from an output — the same walk backward
does, :func:`~minicnn.autograd.engine.topological_order` — and returns a
:class:`Graph`: one node per tensor of the walk (a box per Function, named by
its class and showing its output's shape; a box per leaf, named by its
parameter name), one arrow per input. The graph shows itself in Jupyter
(``_repr_svg_``) and saves to ``.svg`` or ``.png``, with no program to install::

    loss = F.cross_entropy(model(x), y)
    loss.backward()
    g = mc.autograd.draw_graph(loss, params=dict(model.named_parameters()))
    g.save("graph.svg")

**The layout** (no Graphviz): the graph is a DAG, so it is drawn in layers,
data flowing down.

1. A node's layer is one more than the deepest of its inputs (its *depth*: the
   longest path from a leaf); a leaf then moves down to sit just above the
   first operation that uses it, so a layer's weight is drawn beside it.
2. An arrow that skips layers passes through an invisible point in each layer
   it crosses, so that every arrow joins neighbouring layers.
3. Within each layer, nodes are sorted by the mean position of their
   neighbours in the layer above, then in the layer below, a few sweeps down
   and up (the *barycenter heuristic*): fewer arrows cross.
4. Each node is pulled towards the mean x of its neighbours, then the layer is
   spread so that no two boxes overlap.

**A whole network, readable.** With ``collapse=nn.Conv2d`` (a class or a tuple
of classes) each such module becomes one box, its Functions and its
parameters inside. Which Functions a module's forward made is known only
while it runs, so run the forward inside :func:`record_modules`::

    with mc.autograd.record_modules(model) as modules:
        loss = F.cross_entropy(model(x), y)
    mc.autograd.draw_graph(loss, modules=modules, collapse=(nn.Conv2d, nn.Linear))
"""
from __future__ import annotations

import contextlib
import math
import pathlib
from dataclasses import dataclass, field
from html import escape

from .engine import topological_order
from .observer import OperationObserver, observe
from .tensor import Tensor, shape_str
from .trace import BackwardStep, parameter_names, summary


@dataclass
class Node:
    """One box of the drawing.

    Attributes:
        kind: ``"function"`` (a Function and the tensor it made), ``"leaf"``
            (a tensor no recorded operation made: a parameter, an input that
            requires grad) or ``"module"`` (a collapsed module).
        name: the Function's class name, the leaf's parameter name (``"0.weight"``,
            ``"leaf"`` when ``params`` does not name it), or ``"name: Class"`` for a module
            (``"name: Class (call 2)"`` for its second call when it ran twice).
        shape: the shape of the tensor the node stands for (a module: of its output).
        position: the tensor's index in ``topological_order(output)`` (a module: its last Function's).
        tensor: that tensor.
        lines: the text in the box, the name first.
        members: for a module, the positions of the Functions and leaves inside it.
    """

    kind: str
    name: str
    shape: tuple
    position: int
    tensor: Tensor
    lines: list = field(default_factory=list)
    members: tuple = ()


class Graph:
    """A drawn graph: :attr:`nodes` in topological order, :attr:`edges` between them.

    ``edges`` holds ``(source, target, input_index)``: node indices (into
    ``nodes``) and which input of the target the source is — ``x * x`` gives
    two edges, for inputs 0 and 1. Display it in Jupyter by leaving it last in
    a cell; :meth:`to_svg` gives the SVG text, :meth:`save` writes ``.svg`` or ``.png``.
    """

    def __init__(self, nodes, edges, highlight=None):
        self.nodes = nodes
        self.edges = edges
        self.highlight = highlight          # a node index drawn in orange, or None
        self.layout = layered_layout(len(nodes), sorted({(s, t) for s, t, _ in edges}),
                                     [box_size(n.lines) for n in nodes])

    def __repr__(self):
        return f"<Graph: {len(self.nodes)} nodes, {len(self.edges)} edges>"

    def _repr_svg_(self):
        """What Jupyter (and the docs' notebooks) display."""
        return self.to_svg()

    def to_svg(self) -> str:
        """The drawing as an SVG document (a string)."""
        return render_svg(self)

    def save(self, path) -> pathlib.Path:
        """Write the drawing to ``path``: SVG for a ``.svg`` name, PNG (via matplotlib) for ``.png``."""
        path = pathlib.Path(path)
        suffix = path.suffix.lower()
        if suffix == ".svg":
            path.write_text(self.to_svg(), encoding="utf-8")
        elif suffix == ".png":
            render_png(self, path)
        else:
            raise ValueError(f"Graph.save: expected a file name ending in .svg or .png, got {str(path)!r}")
        return path


# ----------------------------------------------------------------------------
# Which module made which Function
# ----------------------------------------------------------------------------
class ModuleRecord(OperationObserver):
    """Which modules were running when each Function was made (see :func:`record_modules`).

    ``record.modules_of(fn)`` lists ``(name, module, call)`` triples, outermost
    first; ``call`` counts the module's forward calls from 1 (a module used
    twice, like one ``ReLU`` applied at two places, made Functions in two calls).
    ``record.named_parameters`` is the model's ``{name: parameter}``.
    """

    def __init__(self, model):
        self.model = model
        self.named_parameters = dict(model.named_parameters())
        self.stack = []                     # the modules running now, outermost first
        self.calls = {}                     # id(module) -> how many times its forward started
        self.made_in = {}                   # id(fn) -> tuple of (name, module)
        self.functions = []                 # keeps each fn alive, so that its id stays its own

    def on_forward(self, fn, inputs, options, output):
        if output.grad_fn is fn:
            self.made_in[id(fn)] = tuple(self.stack)
            self.functions.append(fn)

    def modules_of(self, fn) -> tuple:
        return self.made_in.get(id(fn), ())


@contextlib.contextmanager
def record_modules(model):
    """Record, for every Function made in the block, which of ``model``'s modules made it.

    ``with record_modules(model) as modules: loss = ...`` then
    ``draw_graph(loss, modules=modules, collapse=nn.Conv2d)``. A forward
    pre-hook pushes each module on a stack, a forward hook pops it; an
    operation observer notes the stack when each Function runs.
    """
    if not (hasattr(model, "named_modules") and hasattr(model, "register_forward_hook")):
        raise TypeError(f"record_modules: expected an nn.Module, got {type(model).__name__}")
    record = ModuleRecord(model)

    def push(name):
        def hook(module, inputs):
            record.calls[id(module)] = record.calls.get(id(module), 0) + 1
            record.stack.append((name, module, record.calls[id(module)]))
        return hook

    def pop(module, inputs, output):
        while record.stack and record.stack.pop()[1] is not module:
            pass                            # (a module whose forward raised left itself on the stack)

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(push(name or type(module).__name__)))
        handles.append(module.register_forward_hook(pop))
    try:
        with observe(record):
            yield record
    finally:
        for handle in handles:
            handle.remove()
        record.stack.clear()


# ----------------------------------------------------------------------------
# From the recorded graph to nodes and edges
# ----------------------------------------------------------------------------
def draw_graph(output, params=None, show_values=True, show_grads=True, collapse=None, modules=None,
               trace=None) -> Graph:
    """Draw the graph that computed ``output``; returns a :class:`Graph`.

    Args:
        output: a tensor made by recorded operations (e.g. the loss).
        params: ``{name: tensor}`` naming the leaves, e.g. ``dict(model.named_parameters())``,
            or the model itself. Default: the parameters of the ``modules`` record's
            model if given, else none (leaves read "leaf").
        show_values: write a summary of each tensor's values in its box
            (shape, then mean, min and max, or the value of a single number).
        show_grads: write a summary of each gradient kept in ``.grad`` (leaves
            after ``backward``; intermediates marked with ``retain_grad()``), and
            of the gradients in ``trace``.
        collapse: a module class or tuple of classes (``nn.Conv2d``): each
            module of that kind is drawn as one box. Needs ``modules``.
        modules: the record of :func:`record_modules`, made while ``output`` was computed.
        trace: steps of :func:`~minicnn.autograd.trace.trace_backward` (or the first
            few): the gradients shown are then those of the trace — each Function
            covered shows the gradient it received, each leaf the sum of what it
            received so far — and the last step's Function is highlighted: draw
            ``trace[:k + 1]`` to show backward after k + 1 steps.

    The nodes are the tensors of ``topological_order(output)``, in that order:
    constants and other tensors that need no gradient are not part of the
    recorded graph and are not drawn.
    """
    if not isinstance(output, Tensor):
        raise TypeError(f"draw_graph: expected a Tensor, got {type(output).__name__}")
    if output.grad_fn is None:
        raise ValueError("draw_graph: the tensor has no graph to draw (no operation made it with gradients "
                         "recorded); compute it from tensors with requires_grad=True, outside no_grad()")
    if collapse is not None and modules is None:
        raise ValueError("draw_graph(collapse=...) needs to know which module made each Function: compute the "
                         "output inside `with mc.autograd.record_modules(model) as modules:` and pass "
                         "modules=modules")
    if modules is not None and not isinstance(modules, ModuleRecord):
        raise TypeError(f"draw_graph: modules= expected the record of record_modules(model), "
                        f"got {type(modules).__name__}")
    if params is None and modules is not None:
        params = modules.named_parameters
    names = parameter_names(params)
    received = {}                           # id(tensor) -> its gradient after the steps of trace
    for step in trace or ():
        if not isinstance(step, BackwardStep):
            raise TypeError(f"draw_graph: trace= expected steps of trace_backward, got {type(step).__name__}")
        received[id(step.output)] = step.grad_output
        for parent, grad in zip(step.inputs, step.input_grads):
            if parent is not None and grad is not None and parent.grad_fn is None:   # a leaf adds them up
                key = id(parent)
                received[key] = grad if key not in received else received[key] + grad

    order = topological_order(output)
    index = {id(t): i for i, t in enumerate(order)}
    nodes = []
    for position, t in enumerate(order):
        if t.grad_fn is None:
            kind, name = "leaf", names.get(id(t), "leaf")
        else:
            kind, name = "function", type(t.grad_fn).__name__
        lines = [name, shape_str(t.shape)]
        if show_values:
            lines.append("value " + summary(t.array, with_shape=False))
        if show_grads:
            if trace is not None:           # backward as far as the trace goes
                grad = received.get(id(t))
            else:                           # what backward left in .grad
                grad = t.grad.array if t.grad is not None else None
            if grad is not None:
                lines.append("grad  " + summary(grad, with_shape=False))
        nodes.append(Node(kind, name, tuple(t.shape), position, t, lines))
    edges = [(index[id(parent)], i, k)
             for i, t in enumerate(order) if t.grad_fn is not None
             for k, parent in enumerate(t.grad_fn.inputs)
             if parent is not None and parent.requires_grad and id(parent) in index]
    highlight = None
    if trace:
        highlight = index.get(id(trace[-1].output))
    if collapse is not None:
        nodes, edges, highlight = collapse_modules(nodes, edges, highlight, modules, collapse, show_values)
    return Graph(nodes, edges, highlight)


def collapse_modules(nodes, edges, highlight, modules, collapse, show_values):
    """Merge the nodes made inside each module of class ``collapse`` into one node.

    A Function belongs to the outermost module of that class running when it
    was made; a leaf belongs to a module when every Function using it does
    (its weight and bias). Returns the new nodes, edges and highlighted index.
    """
    group = {}                              # node index -> the module's label (one per call)
    for i, node in enumerate(nodes):
        if node.kind != "function":
            continue
        for name, module, call in modules.modules_of(node.tensor.grad_fn):
            if isinstance(module, collapse):
                again = f" (call {call})" if modules.calls[id(module)] > 1 else ""
                group[i] = f"{name}: {type(module).__name__}{again}"
                break
    users = {}
    for s, t, _ in edges:
        users.setdefault(s, set()).add(group.get(t))
    for i, node in enumerate(nodes):
        if node.kind == "leaf" and len(users.get(i, ())) == 1 and None not in users[i]:
            group[i] = next(iter(users[i]))

    members = {}
    for i in range(len(nodes)):
        if i in group:
            members.setdefault(group[i], []).append(i)
    new_index = {}                          # old node index -> new node index
    new_nodes = []
    # A module's node takes the place of its last member in the topological order.
    last_member = {max(ms): name for name, ms in members.items()}
    for i, node in enumerate(nodes):
        if i in group and i not in last_member:
            continue
        new_index[i] = len(new_nodes)
        if i in last_member:
            label = last_member[i]
            inside = members[label]
            last_fn = max(j for j in inside if nodes[j].kind == "function")
            out = nodes[last_fn]
            lines = [label, shape_str(out.shape)]
            if show_values:
                lines.append("value " + summary(out.tensor.array, with_shape=False))
            functions = [nodes[j].name for j in inside if nodes[j].kind == "function"]
            lines.append(" -> ".join(functions))
            # the gradients drawn in the boxes folded in: the output's, then each parameter's
            prefix = label.split(": ", 1)[0] + "."
            for j in [last_fn] + [j for j in inside if nodes[j].kind == "leaf"]:
                grad = [line for line in nodes[j].lines if line.startswith("grad  ")]
                if grad and j == last_fn:
                    lines.append(grad[0])
                elif grad:
                    lines.append(f"{nodes[j].name.removeprefix(prefix)}.grad {grad[0][len('grad  '):]}")
            new_nodes.append(Node("module", label, out.shape, out.position, out.tensor, lines,
                                  tuple(nodes[j].position for j in inside)))
        else:
            new_nodes.append(node)
    for i in group:
        new_index[i] = new_index[max(members[group[i]])]
    new_edges = []
    for s, t, k in edges:
        a, b = new_index[s], new_index[t]
        if a != b:
            new_edges.append((a, b, k))
    return new_nodes, new_edges, None if highlight is None else new_index[highlight]


# ----------------------------------------------------------------------------
# Layout: layers, crossings, coordinates
# ----------------------------------------------------------------------------
FONT_SIZE = 12                  # px, monospace: every character is 0.6 em wide
CHAR_WIDTH = 0.6 * FONT_SIZE
LINE_HEIGHT = 16
PAD_X, PAD_Y = 10, 7            # inside a box
GAP_X, GAP_Y = 24, 44           # between boxes, between layers
MARGIN = 16


def box_size(lines):
    """(width, height) in px of a box holding ``lines``."""
    width = max(len(line) for line in lines) * CHAR_WIDTH + 2 * PAD_X
    return width, len(lines) * LINE_HEIGHT + 2 * PAD_Y


@dataclass
class Layout:
    """Coordinates: ``boxes[i] = (x, y, w, h)`` (top-left corner) per node,
    ``routes[(s, t)]`` the points each edge passes through, ``size`` = (width, height)."""

    boxes: list
    routes: dict
    size: tuple


def layered_layout(n, edges, sizes) -> Layout:
    """Place ``n`` nodes (``sizes[i] = (w, h)``) with ``edges`` ``(source, target)`` in layers, top down."""
    inputs = [[] for _ in range(n)]
    users = [[] for _ in range(n)]
    for s, t in edges:
        inputs[t].append(s)
        users[s].append(t)
    # 1. layers: depth, visiting each node after its inputs (Kahn's algorithm), then leaves moved down
    layer = [0] * n
    waiting = [len(inputs[i]) for i in range(n)]
    ready = [i for i in range(n) if waiting[i] == 0]
    while ready:
        i = ready.pop()
        layer[i] = max((layer[s] + 1 for s in inputs[i]), default=0)
        for t in users[i]:
            waiting[t] -= 1
            if waiting[t] == 0:
                ready.append(t)
    for i in range(n):
        if not inputs[i] and users[i]:
            layer[i] = min(layer[t] for t in users[i]) - 1
    # 2. long edges pass through one invisible point per layer crossed
    kind_of = list(range(n))                # vertex -> node index, or None for a point
    vertex_layer = list(layer)
    chains = {}                             # (s, t) -> the vertices it passes through, s first
    links = []                              # (upper vertex, lower vertex): one layer apart
    for s, t in edges:
        chain = [s]
        for level in range(layer[s] + 1, layer[t]):
            kind_of.append(None)
            vertex_layer.append(level)
            chain.append(len(kind_of) - 1)
        chain.append(t)
        chains[(s, t)] = chain
        links += list(zip(chain, chain[1:]))
    up = [[] for _ in kind_of]
    down = [[] for _ in kind_of]
    for a, b in links:
        down[a].append(b)
        up[b].append(a)
    levels = [[] for _ in range(max(vertex_layer) + 1)]
    for v in range(len(kind_of)):           # start: in topological order, then the points
        levels[vertex_layer[v]].append(v)
    # 3. fewer crossings: sort each layer by its neighbours' mean position, sweeping down and up
    slot = {}
    for level in levels:
        slot.update({v: k for k, v in enumerate(level)})
    for sweep in range(8):
        going_down = sweep % 2 == 0
        for level in (levels[1:] if going_down else levels[-2::-1]):
            def barycenter(v):
                near = up[v] if going_down else down[v]
                return sum(slot[u] for u in near) / len(near) if near else slot[v]
            level.sort(key=barycenter)
            slot.update({v: k for k, v in enumerate(level)})
    # 4. coordinates: a point is 0 px wide; pull each vertex towards its neighbours, no overlaps
    width = [sizes[kind_of[v]][0] if kind_of[v] is not None else 0.0 for v in range(len(kind_of))]
    x = {}
    for level in levels:
        left = 0.0
        for v in level:
            x[v] = left + width[v] / 2
            left += width[v] + GAP_X
    for sweep in range(12):
        for level in (levels if sweep % 2 == 0 else levels[::-1]):
            wanted = []
            for v in level:
                near = up[v] + down[v]
                wanted.append(sum(x[u] for u in near) / len(near) if near else x[v])
            spread(level, wanted, width, x)
    heights = [max((sizes[kind_of[v]][1] for v in level if kind_of[v] is not None), default=0)
               for level in levels]
    tops = []
    top = MARGIN
    for h in heights:
        tops.append(top)
        top += h + GAP_Y
    shift = MARGIN - min(x[v] - width[v] / 2 for v in x)
    boxes = [None] * n
    centre = {}
    for level, y, h_level in zip(levels, tops, heights):
        for v in level:
            cx = x[v] + shift
            if kind_of[v] is None:
                centre[v] = (cx, y + h_level / 2)
            else:
                w, h = sizes[kind_of[v]]
                boxes[kind_of[v]] = (cx - w / 2, y, w, h)
    routes = {}
    for (s, t), chain in chains.items():
        xs, ys, ws, hs = boxes[s]
        xt, yt, wt, _ = boxes[t]
        routes[(s, t)] = ([(xs + ws / 2, ys + hs)] + [centre[v] for v in chain[1:-1]]
                          + [(xt + wt / 2, yt)])
    total_w = max(b[0] + b[2] for b in boxes) + MARGIN
    total_h = max(b[1] + b[3] for b in boxes) + MARGIN
    return Layout(boxes, routes, (total_w, total_h))


def spread(level, wanted, width, x):
    """Put the vertices of one layer as near their ``wanted`` centres as possible, in order, no overlaps.

    Left to right, each vertex goes to its wanted place or just right of its
    left neighbour; then the layer shifts so that on average it is where it wanted to be.
    """
    placed = []
    right = -math.inf
    for v, want in zip(level, wanted):
        cx = max(want, right + width[v] / 2)
        placed.append(cx)
        right = cx + width[v] / 2 + GAP_X
    offset = sum(w - p for w, p in zip(wanted, placed)) / len(level)
    for v, cx in zip(level, placed):
        x[v] = cx + offset


# ----------------------------------------------------------------------------
# Rendering: SVG by hand, PNG through matplotlib
# ----------------------------------------------------------------------------
COLOURS = {"leaf": "#dbeafe", "function": "#f3f4f6", "module": "#dcfce7"}
BORDERS = {"leaf": "#2563eb", "function": "#4b5563", "module": "#16a34a"}
HIGHLIGHT = "#f97316"


def curve(points):
    """SVG path data through ``points``, top to bottom: a vertical S-curve between each pair."""
    (x0, y0), rest = points[0], points[1:]
    d = [f"M {x0:.1f} {y0:.1f}"]
    for x1, y1 in rest:
        mid = (y0 + y1) / 2
        d.append(f"C {x0:.1f} {mid:.1f} {x1:.1f} {mid:.1f} {x1:.1f} {y1:.1f}")
        x0, y0 = x1, y1
    return " ".join(d)


def render_svg(graph) -> str:
    """The SVG document: an arrow per edge (drawn first), then a box with text per node."""
    layout = graph.layout
    width, height = layout.size
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" '
           f'font-size="{FONT_SIZE}">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#6b7280"/></marker></defs>',
           f'<rect width="{width:.0f}" height="{height:.0f}" fill="white"/>']
    for points in layout.routes.values():
        out.append(f'<path d="{curve(points)}" fill="none" stroke="#6b7280" stroke-width="1.2" '
                   'marker-end="url(#arrow)"/>')
    for i, (node, (x, y, w, h)) in enumerate(zip(graph.nodes, layout.boxes)):
        border = HIGHLIGHT if i == graph.highlight else BORDERS[node.kind]
        stroke = 3 if i == graph.highlight else 1.2
        out.append(f'<g><title>{escape(node.name)} {escape(shape_str(node.shape))}</title>'
                   f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="5" '
                   f'fill="{COLOURS[node.kind]}" stroke="{border}" stroke-width="{stroke}"/>')
        for k, line in enumerate(node.lines):
            weight = ' font-weight="bold"' if k == 0 else ""
            baseline = y + PAD_Y + (k + 0.75) * LINE_HEIGHT
            out.append(f'<text x="{x + w / 2:.1f}" y="{baseline:.1f}" text-anchor="middle"{weight}>'
                       f'{escape(line)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def render_png(graph, path, dpi=100):
    """The same drawing with matplotlib, one pixel of the layout per pixel of the image."""
    import matplotlib                       # loaded here: import minicnn stays free of matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch, FancyArrowPatch
    from matplotlib.path import Path

    width, height = graph.layout.size
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)                  # y grows downwards, as in SVG
    ax.axis("off")
    points_per_px = 72 / dpi
    for points in graph.layout.routes.values():
        vertices, codes = [points[0]], [Path.MOVETO]
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            mid = (y0 + y1) / 2
            vertices += [(x0, mid), (x1, mid), (x1, y1)]
            codes += [Path.CURVE4] * 3
        ax.add_patch(FancyArrowPatch(path=Path(vertices, codes), arrowstyle="-|>", mutation_scale=10,
                                     color="#6b7280", linewidth=1.2 * points_per_px * 1.5))
    for i, (node, (x, y, w, h)) in enumerate(zip(graph.nodes, graph.layout.boxes)):
        highlighted = i == graph.highlight
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=5",
                                    facecolor=COLOURS[node.kind],
                                    edgecolor=HIGHLIGHT if highlighted else BORDERS[node.kind],
                                    linewidth=(3 if highlighted else 1.2) * points_per_px * 1.5))
        for k, line in enumerate(node.lines):
            ax.text(x + w / 2, y + PAD_Y + (k + 0.5) * LINE_HEIGHT, line, ha="center", va="center",
                    family="monospace", fontsize=FONT_SIZE * points_per_px,
                    fontweight="bold" if k == 0 else "normal")
    fig.savefig(path, dpi=dpi, format="png")
