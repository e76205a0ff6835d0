"""The recorded graph, drawn (mc.autograd.draw_graph), and backward stepped through (trace_backward).

* the drawing's nodes and edges are the recorded graph: the tensors of
  ``topological_order``, in that order, named by Function class or parameter
  name, one edge per input that requires grad;
* it renders with no Graphviz: valid SVG (parsed), a PNG (its magic bytes),
  with ``dot`` nowhere on the PATH;
* the traced backward's gradients are the engine's: added up step by step,
  they equal what ``backward`` leaves in ``.grad``, bit for bit;
* bad input gets one clear error.
"""
from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import minicnn as mc
import minicnn.functional as F
from minicnn import models, nn
from minicnn.autograd import draw_graph, record_modules, topological_order, trace_backward

pytestmark = pytest.mark.tutorial01

SVG = "{http://www.w3.org/2000/svg}"


def small_expression():
    """f = tanh(a·b + b²)·a: a is used twice, b twice (tutorial 01's example)."""
    a = mc.tensor(0.5, requires_grad=True, dtype="float64")
    b = mc.tensor(-1.5, requires_grad=True, dtype="float64")
    return F.tanh(a * b + b ** 2) * a, {"a": a, "b": b}


def model_loss(name, batch=2, **kwargs):
    mc.manual_seed(0)
    model = models.get_model(name, **kwargs).double().eval()     # eval: no dropout, BN's running stats
    x = mc.tensor(np.random.default_rng(0).standard_normal((batch, 1, 28, 28)), dtype="float64")
    loss = F.cross_entropy(model(x), mc.tensor(np.arange(batch) % 10))
    return loss, dict(model.named_parameters())


CASES = {
    "expression": small_expression,
    "reference": lambda: model_loss("reference"),
    "lenet5": lambda: model_loss("lenet5"),
    "resnet": lambda: model_loss("resnet", widths=(4, 8, 8)),     # shortcuts: tensors used twice
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_drawn_nodes_and_edges_are_the_recorded_graph(case):
    loss, params = CASES[case]()
    graph = draw_graph(loss, params=params)
    order = topological_order(loss)
    assert len(graph.nodes) == len(order)
    names = {id(p): name for name, p in params.items()}
    expected = [type(t.grad_fn).__name__ if t.grad_fn is not None else names[id(t)] for t in order]
    assert [n.name for n in graph.nodes] == expected
    assert [n.position for n in graph.nodes] == list(range(len(order)))
    assert all(n.tensor is t and n.shape == t.shape for n, t in zip(graph.nodes, order))
    index = {id(t): i for i, t in enumerate(order)}
    expected_edges = sorted((index[id(p)], i, k) for i, t in enumerate(order) if t.grad_fn is not None
                            for k, p in enumerate(t.grad_fn.inputs) if p is not None and p.requires_grad)
    assert sorted(graph.edges) == expected_edges
    assert all(s < t for s, t, _ in graph.edges)                   # inputs come first
    # every parameter that reaches the loss is a named leaf
    assert {n.name for n in graph.nodes if n.kind == "leaf"} == set(params)


def test_the_expression_graph_by_hand():
    f, params = small_expression()
    graph = draw_graph(f, params=params, show_values=False)
    # f = tanh(a*b + b**2) * a, in the order topological_order gives
    assert [n.name for n in graph.nodes] == ["a", "b", "PowScalarFn", "MulFn", "AddFn", "TanhFn", "MulFn"]
    a, b, pow_, mul, add, tanh, out = range(7)
    assert sorted(graph.edges) == sorted([(b, pow_, 0), (a, mul, 0), (b, mul, 1), (mul, add, 0), (pow_, add, 1),
                                          (add, tanh, 0), (tanh, out, 0), (a, out, 1)])
    assert graph.nodes[-1].lines == ["MulFn", "()"]          # no values asked for, no backward yet
    f.backward()
    after = draw_graph(f, params=params, show_values=True)
    assert after.nodes[0].lines == ["a", "()", "value 0.5", f"grad  {a_grad(0.5, -1.5):.4g}"]


def a_grad(a, b):
    """df/da for f = tanh(ab + b²)·a, by hand: tanh(s) + a·(1 - tanh²(s))·b."""
    t = np.tanh(a * b + b * b)
    return t + a * (1 - t * t) * b


def test_it_renders_with_no_graphviz(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))              # nothing to run: no dot, no anything
    assert shutil.which("dot") is None
    loss, params = model_loss("reference")
    loss.backward()
    graph = draw_graph(loss, params=params)
    svg = graph.save(tmp_path / "g.svg")
    root = ET.parse(svg).getroot()
    assert root.tag == SVG + "svg"
    titles = [t.text for t in root.iter(SVG + "title")]
    assert len(titles) == len(graph.nodes) and titles[0].startswith(graph.nodes[0].name)
    texts = [t.text for t in root.iter(SVG + "text")]
    assert "0.weight" in texts and "CrossEntropyFn" in texts
    assert len([p for p in root.iter(SVG + "path") if p.get("marker-end")]) == len(graph.edges)
    assert graph._repr_svg_() == svg.read_text()
    png = graph.save(tmp_path / "g.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = graph.layout.size
    assert int.from_bytes(png[16:20], "big") == pytest.approx(width, abs=2)
    assert int.from_bytes(png[20:24], "big") == pytest.approx(height, abs=2)


def test_the_layout_keeps_boxes_apart_and_arrows_downward():
    loss, params = model_loss("resnet", widths=(4, 8, 8))
    layout = draw_graph(loss, params=params).layout
    boxes = layout.boxes
    for i, (x, y, w, h) in enumerate(boxes):
        for x2, y2, w2, h2 in boxes[i + 1:]:
            apart = x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y
            assert apart, "two boxes overlap"
    for (s, t), points in layout.routes.items():
        assert points[0][1] == boxes[s][1] + boxes[s][3] and points[-1][1] == boxes[t][1]
        assert all(p[1] < q[1] for p, q in zip(points, points[1:]))    # data flows down


def test_params_may_be_the_model():
    loss, params = model_loss("reference")
    model_named = draw_graph(loss, params=models.get_model("reference"))    # another model: no names
    assert {n.name for n in model_named.nodes if n.kind == "leaf"} == {"leaf"}
    mc.manual_seed(0)
    model = models.get_model("reference").double().eval()
    out = model(mc.tensor(np.ones((1, 1, 28, 28)), dtype="float64")).sum()
    assert ([n.name for n in draw_graph(out, params=model).nodes]
            == [n.name for n in draw_graph(out, params=dict(model.named_parameters())).nodes])


def test_collapse_draws_a_module_as_one_box():
    mc.manual_seed(0)
    model = models.get_model("reference").double().eval()
    x = mc.tensor(np.random.default_rng(0).standard_normal((2, 1, 28, 28)), dtype="float64")
    with record_modules(model) as modules:
        loss = F.cross_entropy(model(x), mc.tensor(np.array([3, 7])))
    recorded = len(modules.made_in)
    model(x).sum()                          # after the block: no hook pushes, no observer records
    assert modules.stack == [] and len(modules.made_in) == recorded
    graph = draw_graph(loss, modules=modules, collapse=(nn.Conv2d, nn.Linear))
    assert [n.name for n in graph.nodes] == ["0: Conv2d", "ReLUFn", "MaxPool2dFn", "3: Conv2d", "ReLUFn",
                                             "MaxPool2dFn", "ReshapeFn", "7: Linear", "ReLUFn", "10: Linear",
                                             "CrossEntropyFn"]                # (eval: no dropout)
    assert sorted((s, t) for s, t, _ in graph.edges) == [(i, i + 1) for i in range(10)]   # weights folded in
    conv = graph.nodes[0]
    assert conv.kind == "module" and conv.shape == (2, 32, 26, 26)
    full = topological_order(loss)
    assert sorted(type(full[p].grad_fn).__name__ if full[p].grad_fn else "leaf" for p in conv.members) == \
        ["Conv2dFn", "leaf", "leaf"]
    loss.backward()                         # the box then shows its parameters' gradients
    drawn = draw_graph(loss, modules=modules, collapse=nn.Conv2d, show_values=False)
    lines = next(n.lines for n in drawn.nodes if n.name == "0: Conv2d")
    grad = model[0].weight.grad.numpy()
    assert lines[:3] == ["0: Conv2d", "(2, 32, 26, 26)", "Conv2dFn"]
    assert f"weight.grad mean {grad.mean():.3g}, min {grad.min():.3g}, max {grad.max():.3g}" in lines
    assert any(line.startswith("bias.grad mean") for line in lines)
    # a whole block: its BatchNorm, ReLU and shortcut inside one box
    mc.manual_seed(0)
    resnet = models.get_model("resnet", widths=(4, 8, 8)).double().eval()
    with record_modules(resnet) as modules:
        out = resnet(x).sum()
    blocks = draw_graph(out, modules=modules, collapse=models.BasicBlock)
    assert [n.name for n in blocks.nodes if n.kind == "module"] == ["stages.0: BasicBlock", "stages.1: BasicBlock",
                                                                    "stages.2: BasicBlock"]
    assert len(blocks.nodes) < len(topological_order(out)) / 2


def test_trace_backward_by_hand():
    x = mc.tensor(2.0, requires_grad=True, dtype="float64")
    y = x * 3                               # used twice below
    z = y * y + y                           # dz/dy = 2y + 1 = 13
    steps = trace_backward(z, params={"x": x})
    assert [(s.step, s.name, s.position) for s in steps] == [(0, "AddFn", 3), (1, "MulFn", 2), (2, "MulFn", 1)]
    add, square, times3 = steps
    assert add.grad_output == 1 and [float(g) for g in add.input_grads] == [1.0, 1.0]
    assert add.accumulated == (False, False)
    assert [float(g) for g in square.input_grads] == [6.0, 6.0]     # d(y·y)/dy, one per input
    assert square.accumulated == (True, True)                       # y already had 1 from the AddFn
    assert square.input_names == ("MulFn #1", "MulFn #1")
    assert float(times3.grad_output) == 13.0 and float(times3.input_grads[0]) == 39.0
    assert times3.input_names == ("x", "constant") and times3.input_grads[1] is None
    assert x.grad.item() == 39.0
    assert "step 1: MulFn #2" in str(square) and "added to the gradient it already had" in str(square)


@pytest.mark.parametrize("case", sorted(CASES))
def test_traced_gradients_are_bitwise_those_of_backward(case):
    loss, params = CASES[case]()
    steps = trace_backward(loss, params=params)
    traced = {name: p.grad.numpy() for name, p in params.items()}
    # the steps' own gradients, added up in order, are what reached each leaf
    added = {}
    for step in steps:
        for parent, grad in zip(step.inputs, step.input_grads):
            if parent is not None and grad is not None and parent.grad_fn is None and parent.requires_grad:
                added[id(parent)] = grad if id(parent) not in added else added[id(parent)] + grad
    for name, p in params.items():
        np.testing.assert_array_equal(added[id(p)].astype(p.dtype), traced[name])
        p.zero_grad()
    loss.backward()                         # the plain backward, on the same graph
    for name, p in params.items():
        assert p.grad.numpy().tobytes() == traced[name].tobytes(), name
    # in reverse topological order, one step per Function, starting from dL/dL = 1
    order = topological_order(loss)
    assert [s.position for s in steps] == [i for i in reversed(range(len(order))) if order[i].grad_fn is not None]
    assert all(s.function is s.output.grad_fn for s in steps)
    np.testing.assert_array_equal(steps[0].grad_output, np.ones(()))


def test_drawing_a_trace_shows_backward_so_far():
    f, params = small_expression()
    steps = trace_backward(f, params=params)
    graph = draw_graph(f, params=params, show_values=False, trace=steps[:2])    # MulFn #6, then TanhFn
    lines = {n.position: n.lines for n in graph.nodes}
    assert graph.highlight == 5 and graph.nodes[5].name == "TanhFn"
    assert lines[6][-1] == "grad  1" and lines[5][-1].startswith("grad  ")
    assert lines[4] == ["AddFn", "()"]                                   # not reached yet
    assert lines[0][-1] == f"grad  {np.tanh(0.5 * -1.5 + 1.5 ** 2):.4g}"  # a: only what the last MulFn gave it


def test_bad_input_gets_a_clear_error(tmp_path):
    leaf = mc.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ValueError, match="no graph to draw"):
        draw_graph(leaf)
    with mc.no_grad():
        made = leaf * 2
    with pytest.raises(ValueError, match="no graph to draw"):
        draw_graph(made)
    with pytest.raises(TypeError, match="expected a Tensor, got ndarray"):
        draw_graph(np.ones(3))
    with pytest.raises(ValueError, match="no graph to step through"):
        trace_backward(leaf)
    out = (leaf * 2).sum()
    with pytest.raises(ValueError, match="record_modules"):
        draw_graph(out, collapse=nn.Conv2d)
    with pytest.raises(TypeError, match="name -> Tensor"):
        draw_graph(out, params={"w": np.ones(3)})
    with pytest.raises(TypeError, match="name -> Tensor.*got int"):
        draw_graph(out, params=3)
    with pytest.raises(ValueError, match=r"\.svg or \.png, got '.*g\.jpg'"):
        draw_graph(out).save(tmp_path / "g.jpg")


def test_a_module_called_twice_is_two_boxes():
    class Twice(nn.Module):                 # one ReLU applied at two places
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.act = nn.Linear(3, 4), nn.Linear(4, 2), nn.ReLU()

        def forward(self, x):
            return self.act(self.fc2(self.act(self.fc1(x))))

    model = Twice().double()
    with record_modules(model) as modules:
        out = model(mc.tensor(np.ones((2, 3)), dtype="float64")).sum()
    graph = draw_graph(out, modules=modules, collapse=(nn.Linear, nn.ReLU))
    assert [n.name for n in graph.nodes] == ["fc1: Linear", "act: ReLU (call 1)", "fc2: Linear",
                                             "act: ReLU (call 2)", "SumFn"]
    assert sorted((s, t) for s, t, _ in graph.edges) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_grad_fn_is_pytorchs():
    x = mc.tensor(np.ones(3), requires_grad=True)
    y = x * 2
    assert x.grad_fn is None and type(y.grad_fn).__name__ == "MulFn" and y.grad_fn.inputs[0] is x
    with mc.no_grad():
        assert (x * 2).grad_fn is None
