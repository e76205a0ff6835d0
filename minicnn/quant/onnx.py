"""Export to ONNX, so a trained minicnn model runs in any ONNX runtime (and opens in Netron).

How: **trace one forward pass.** Every operation in minicnn is a
``Function`` subclass called through ``Function.apply`` (tensor.py). While
:func:`export` runs the model once on a dummy input, an operation observer
(observer.py) records each call — the Function's type, its input tensors, its
options, its output — and forward hooks record which module each call
happened in. Each
Function type then maps to one or a few ONNX nodes (``_EMIT``): ``Conv2dFn`` ->
Conv, ``LinearFn`` -> Gemm, ``BatchNormFn`` -> BatchNormalization, ``AddFn`` -> Add,
and so on. Nothing depends on how a model is written: Sequentials, residual
blocks, any custom ``forward`` built from minicnn operations export the same
way, and a new layer made of existing Functions needs no exporter code at all.
Tensors that no recorded operation produced become initializers: a model's
parameters and buffers under their state_dict names, anything else (a
constant like the 0.5 in ``x * 0.5``) as ``const_<n>``.

The batch axis stays dynamic (``N``): a Reshape that keeps the batch axis
writes 0 ("copy this axis") there. A Function with no mapping is an error
naming it and the layer it ran in. Dropout is the identity in eval mode and
never appears.

The int8 :class:`~minicnn.quant.QuantizedModel` exports as **QDQ**: each
layer reads ``DequantizeLinear(int8 weight, per-channel scale)``, its input
is ``QuantizeLinear -> DequantizeLinear`` with the observer's (scale, zero
point), and its output the same — the standard way to ship a quantized
network in ONNX; runtimes fuse the pattern into integer kernels.

``onnx`` and ``onnxruntime`` are optional (``pip install 'minicnn[export]'``),
imported only when used.
"""
from __future__ import annotations

import contextlib
import numbers
import os

import numpy as np

from ..backend import to_host
from ..io import write_bytes
from ..autograd.observer import OperationObserver, observe
from ..autograd.tensor import Tensor, no_grad

OPSET = 17


class ExportError(ValueError):
    """The model (or one operation in it) cannot be written as ONNX; the message names it."""


def _require_onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper  # noqa: F401
    except ImportError as e:
        raise ImportError("ONNX export needs the onnx package: pip install 'minicnn[export]' "
                          f"(or pip install onnx onnxruntime) — {e}") from None
    return onnx


# -----------------------------------------------------------------------------
# Tracing
# -----------------------------------------------------------------------------
class _Call:
    __slots__ = ("fn", "inputs", "options", "output", "module")

    def __init__(self, fn, inputs, options, output, module):
        self.fn, self.inputs, self.options, self.output, self.module = fn, inputs, options, output, module


@contextlib.contextmanager
def trace(model):
    """Record every ``Function.apply`` inside ``with trace(model) as calls: model(x)``."""
    calls, stack, handles = [], [], []
    for name, m in model.named_modules():
        label = name or type(model).__name__
        handles.append(m.register_forward_pre_hook(lambda mod, inp, label=label: stack.append(label) and None))
        handles.append(m.register_forward_hook(lambda mod, inp, out: stack.pop() and None))
    try:
        with observe(_Recorder(calls, stack)):
            yield calls
    finally:
        for h in handles:
            h.remove()


class _Recorder(OperationObserver):
    """The observer (observer.py) behind :func:`trace`: one ``_Call`` per forward."""

    def __init__(self, calls, modules):
        self.calls, self.modules = calls, modules        # modules: the layers running now, innermost last

    def on_forward(self, fn, inputs, options, output):
        self.calls.append(_Call(type(fn), inputs, options, output, self.modules[-1] if self.modules else ""))


# -----------------------------------------------------------------------------
# Graph building
# -----------------------------------------------------------------------------
class _Graph:
    def __init__(self):
        from onnx import helper
        self.helper = helper
        self.nodes, self.initializers, self.names = [], [], {}
        self._count = 0

    def fresh(self, base):
        self._count += 1
        return f"{base}_{self._count}"

    def const(self, array, name=None):
        from onnx import numpy_helper
        name = name or self.fresh("const")
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C", copy=True), name))
        return name

    def node(self, op, inputs, outputs=None, name=None, **attrs):
        outputs = outputs or [self.fresh(op.lower())]
        self.nodes.append(self.helper.make_node(op, inputs, outputs, name=name or self.fresh(op), **attrs))
        return outputs[0]


def _pair(v):
    return (v, v) if isinstance(v, numbers.Integral) else tuple(v)


def _conv(g, c, x, w, b):
    o = c.options
    (ph, pw), (sh, sw), (dh, dw) = _pair(o["padding"]), _pair(o["stride"]), _pair(o["dilation"])
    kh, kw = c.inputs[1].shape[2:]
    ins = [x, w] + ([b] if b else [])
    return g.node("Conv", ins, kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw],
                  dilations=[dh, dw], group=int(o["groups"]))


def _linear(g, c, x, w, b):
    if c.inputs[0].ndim == 2:
        return g.node("Gemm", [x, w] + ([b] if b else []), transB=1)
    y = g.node("MatMul", [x, g.node("Transpose", [w], perm=[1, 0])])
    return g.node("Add", [y, b]) if b else y


def _batch_norm(g, c, x, w, b):
    o = c.options
    if o["training"]:
        raise ExportError("BatchNorm in training mode cannot be exported: call model.eval() first")
    C = c.inputs[0].shape[1]
    dtype = c.inputs[0].dtype
    w = w or g.const(np.ones(C, dtype))
    b = b or g.const(np.zeros(C, dtype))
    mean = g.buffer_name(o["running_mean"]) or g.const(to_host(o["running_mean"]))
    var = g.buffer_name(o["running_var"]) or g.const(to_host(o["running_var"]))
    return g.node("BatchNormalization", [x, w, b, mean, var], epsilon=float(o["eps"]))


def _pool(op):
    def emit(g, c, x):
        o = c.options
        (kh, kw), (sh, sw), (ph, pw) = _pair(o["kernel_size"]), _pair(o["stride"]), _pair(o["padding"])
        attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw])
        if op == "AveragePool":
            attrs["count_include_pad"] = int(o["count_include_pad"])
        return g.node(op, [x], **attrs)
    return emit


def _adaptive_avg(g, c, x):
    H, W = c.inputs[0].shape[2:]
    oh, ow = c.options["output_size"]
    if (oh, ow) == (1, 1):
        return g.node("GlobalAveragePool", [x])
    if H % oh or W % ow:
        raise ExportError(f"adaptive_avg_pool2d from {H}x{W} to {oh}x{ow}: the bins are unequal, which "
                          "ONNX's AveragePool cannot express")
    return g.node("AveragePool", [x], kernel_shape=[H // oh, W // ow], strides=[H // oh, W // ow])


def _reshape(g, c, x):
    shape = list(c.options["shape"])
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = list(shape[0])
    if shape and c.inputs[0].ndim and shape[0] == c.inputs[0].shape[0]:
        shape[0] = 0                      # keep the batch axis: dynamic in the exported model
    return g.node("Reshape", [x, g.const(np.array(shape, np.int64))])


def _transpose(g, c, x):
    axes = c.options.get("axes")
    return g.node("Transpose", [x], **({} if axes is None else {"perm": list(axes)}))


def _reduce(op):
    def emit(g, c, x):
        axis, keep = c.options.get("axis"), int(bool(c.options.get("keepdims", False)))
        axes = None if axis is None else ([axis] if isinstance(axis, numbers.Integral) else list(axis))
        if op == "ReduceSum":                         # opset 13+: axes is an input
            ins = [x] + ([g.const(np.array(axes, np.int64))] if axes is not None else [])
            return g.node(op, ins, keepdims=keep)
        return g.node(op, [x], keepdims=keep, **({} if axes is None else {"axes": axes}))
    return emit


def _softmax(op):
    return lambda g, c, x: g.node(op, [x], axis=int(c.options["dim"]))


def _scalar_const(g, c, value):
    return g.const(np.array(value, dtype=c.inputs[0].dtype))


def _gelu(g, c, x):
    if c.options.get("approximate", "none") != "none":
        raise ExportError("GELU with approximate='tanh' has no ONNX mapping here; use approximate='none'")
    inner = g.node("Erf", [g.node("Div", [x, _scalar_const(g, c, np.sqrt(2.0))])])
    one_plus = g.node("Add", [inner, _scalar_const(g, c, 1.0)])
    return g.node("Mul", [g.node("Mul", [x, one_plus]), _scalar_const(g, c, 0.5)])


def _fake_quant_per_tensor(g, c, x):
    o = c.options
    if (o["quant_min"], o["quant_max"]) not in ((0, 255), (-128, 127)):
        raise ExportError(f"fake quantization to [{o['quant_min']}, {o['quant_max']}] has no ONNX integer type")
    zdt = np.uint8 if o["quant_min"] == 0 else np.int8
    s, z = g.const(np.array(o["scale"], np.float32)), g.const(np.array(o["zero_point"], zdt))
    return g.node("DequantizeLinear", [g.node("QuantizeLinear", [x, s, z]), s, z])


def _fake_quant_per_channel(g, c, x):
    o = c.options
    zdt = np.uint8 if o["quant_min"] == 0 else np.int8
    s = g.const(to_host(o["scale"]).astype(np.float32))
    z = g.const(to_host(o["zero_point"]).astype(zdt))
    q = g.node("QuantizeLinear", [x, s, z], axis=int(o["axis"]))
    return g.node("DequantizeLinear", [q, s, z], axis=int(o["axis"]))


def _emitters():
    import importlib
    mod = lambda name: importlib.import_module(f"minicnn.functional.{name}")   # noqa: E731
    # (the package's names `linear`, `conv2d`, ... are the functions, so load the modules by path)
    A, M, conv, linear, norm, pool, quant, reductions, shape = (
        mod(n) for n in ("activation", "math", "conv", "linear", "norm", "pool", "quant", "reductions", "shape"))
    simple = lambda op: (lambda g, c, *xs: g.node(op, list(xs)))     # noqa: E731
    return {
        conv.Conv2dFn: _conv, linear.LinearFn: _linear, norm.BatchNormFn: _batch_norm,
        pool.MaxPool2dFn: _pool("MaxPool"), pool.AvgPool2dFn: _pool("AveragePool"),
        pool.AdaptiveAvgPool2dFn: _adaptive_avg,
        A.ReLUFn: simple("Relu"), A.SigmoidFn: simple("Sigmoid"), A.TanhFn: simple("Tanh"),
        A.SoftplusFn: simple("Softplus"),
        A.LeakyReLUFn: lambda g, c, x: g.node("LeakyRelu", [x], alpha=float(c.options["negative_slope"])),
        A.SiLUFn: lambda g, c, x: g.node("Mul", [x, g.node("Sigmoid", [x])]),
        A.MishFn: lambda g, c, x: g.node("Mul", [x, g.node("Tanh", [g.node("Softplus", [x])])]),
        A.GELUFn: _gelu, A.SoftmaxFn: _softmax("Softmax"), A.LogSoftmaxFn: _softmax("LogSoftmax"),
        M.AddFn: simple("Add"), M.SubFn: simple("Sub"), M.MulFn: simple("Mul"), M.DivFn: simple("Div"),
        M.NegFn: simple("Neg"), M.ExpFn: simple("Exp"), M.LogFn: simple("Log"), M.SqrtFn: simple("Sqrt"),
        M.AbsFn: simple("Abs"), M.MatMulFn: simple("MatMul"), M.MaximumFn: simple("Max"), M.PowFn: simple("Pow"),
        M.PowScalarFn: lambda g, c, x: g.node("Pow", [x, _scalar_const(g, c, c.options["exponent"])]),
        M.ClipFn: lambda g, c, x: g.node("Clip", [x,
                                                "" if c.options.get("low") is None else _scalar_const(g, c, c.options["low"]),
                                                "" if c.options.get("high") is None else _scalar_const(g, c, c.options["high"])]),
        shape.ReshapeFn: _reshape, shape.TransposeFn: _transpose,
        shape.ConcatenateFn: lambda g, c, *xs: g.node("Concat", list(xs), axis=int(c.options.get("axis", 0))),
        reductions.SumFn: _reduce("ReduceSum"), reductions.MeanFn: _reduce("ReduceMean"),
        reductions.MaxFn: _reduce("ReduceMax"),
        quant.FakeQuantizePerTensorAffineFn: _fake_quant_per_tensor,
        quant.FakeQuantizePerChannelAffineFn: _fake_quant_per_channel,
    }


def _model_proto(g, input_name, input_shape, output_name, dtype, doc, output_shape):
    from onnx import TensorProto, helper
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    inp = helper.make_tensor_value_info(input_name, elem, ["N"] + list(input_shape[1:]))
    out = helper.make_tensor_value_info(output_name, elem, ["N"] + list(output_shape[1:]))
    graph = helper.make_graph(g.nodes, "minicnn", [inp], [out], initializer=g.initializers, doc_string=doc)
    model = helper.make_model(graph, producer_name="minicnn", opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = min(model.ir_version, 8)        # readable by older onnxruntime releases too
    return model


def _save(model_proto, path):
    onnx = _require_onnx()
    onnx.checker.check_model(model_proto, full_check=True)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return write_bytes(path, model_proto.SerializeToString())


def to_onnx(model, input_shape, dtype=np.float32):
    """The ``onnx.ModelProto`` of ``model`` (eval mode) for inputs of ``input_shape`` (batch axis dynamic)."""
    _require_onnx()
    from .quantized import QuantizedModel
    if isinstance(model, QuantizedModel):
        return _quantized_to_onnx(model, input_shape)
    input_shape = tuple(int(s) for s in input_shape)
    was_training = model.training
    model.eval()
    x = Tensor(np.zeros(input_shape, dtype=dtype))
    try:
        with no_grad(), trace(model) as calls:
            y = model(x)
    finally:
        model.train(was_training)
    if not isinstance(y, Tensor):
        raise ExportError(f"the model returned a {type(y).__name__}; export needs one output tensor")
    g = _Graph()
    names = {id(x): "input"}
    arrays = {}
    for name, p in model.state_dict().items():
        arr = p.array if isinstance(p, Tensor) else p
        arrays[id(arr)] = name
    params = {id(t): n for n, t in _named_tensors(model)}
    emitted_consts = {}

    def buffer_name(array):
        n = arrays.get(id(array))
        if n is None:
            return None
        if n not in emitted_consts:
            emitted_consts[n] = g.const(to_host(array), n)
        return emitted_consts[n]

    g.buffer_name = buffer_name
    emit = _emitters()

    def value(t):
        if t is None:
            return ""
        key = id(t)
        if names.get(key):
            return names[key]
        if key in params:
            names[key] = buffer_name(t.array) or g.const(to_host(t.array), params[key])
            return names[key]
        names[key] = g.const(to_host(t.array))           # a constant made inside forward
        return names[key]

    for c in calls:
        f = emit.get(c.fn)
        if f is None:
            raise ExportError(f"ONNX export: no mapping for the operation {c.fn.__name__} "
                              f"(in layer {c.module!r}); add one to minicnn/quant/onnx.py's _emitters()")
        out = f(g, c, *[value(t) for t in c.inputs])
        names[id(c.output)] = out
    if id(y) == id(x):
        out_name = g.node("Identity", ["input"])
    else:
        out_name = names[id(y)]
    g.nodes.append(g.helper.make_node("Identity", [out_name], ["logits"], name="output"))
    return _model_proto(g, "input", input_shape, "logits", np.dtype(dtype).type,
                        f"minicnn {type(model).__name__}, traced on input {input_shape}", y.shape)


def _named_tensors(model):
    for n, p in model.named_parameters():
        yield n, p
    for n, b in model.named_buffers():
        if b is not None:
            yield n, b


def _quantized_to_onnx(qmodel, input_shape):
    """QDQ graph of a QuantizedModel: QuantizeLinear/DequantizeLinear around float Conv/Gemm nodes."""
    from .quantized import QuantizedLayer, QuantizeInput
    g = _Graph()
    cur = "input"

    def qdq(x, s, z):
        s, z = g.const(np.array(s, np.float32)), g.const(np.array(z, np.uint8))
        return g.node("DequantizeLinear", [g.node("QuantizeLinear", [x, s, z]), s, z])

    for i, s in enumerate(qmodel.steps):
        if isinstance(s, QuantizeInput):
            cur = qdq(cur, s.scale, s.zero_point)
        elif isinstance(s, QuantizedLayer):
            wq = g.const(s.weight_q, f"steps.{i}.weight_q")
            ws = g.const(s.weight_scale.astype(np.float32), f"steps.{i}.weight_scale")
            w = g.node("DequantizeLinear", [wq, ws, g.const(np.zeros(s.weight_q.shape[0], np.int8))], axis=0)
            bs = (np.float64(s.in_scale) * s.weight_scale.astype(np.float64)).astype(np.float32)
            b = g.node("DequantizeLinear", [g.const(s.bias_q, f"steps.{i}.bias_q"), g.const(bs),
                                            g.const(np.zeros(s.bias_q.shape[0], np.int32))], axis=0)
            if s.kind == "conv":
                a = s.conv_args
                (ph, pw), (sh, sw), (dh, dw) = a["padding"], a["stride"], a["dilation"]
                kh, kw = s.weight_q.shape[2:]
                y = g.node("Conv", [cur, w, b], kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw],
                           dilations=[dh, dw], group=int(a["groups"]))
            else:
                y = g.node("Gemm", [cur, w, b], transB=1)
            if s.relu:
                y = g.node("Relu", [y])
            cur = qdq(y, s.out_scale, s.out_zero_point)
        elif s[0] == "maxpool":
            _, k, st, p = s
            cur = g.node("MaxPool", [cur], kernel_shape=[k, k], strides=[st, st], pads=[p, p, p, p])
        elif s[0] == "flatten":
            cur = g.node("Flatten", [cur], axis=1)
    g.nodes.append(g.helper.make_node("Identity", [cur], ["logits"], name="output"))
    return _model_proto(g, "input", tuple(input_shape), "logits", np.float32,
                        "minicnn QuantizedModel as QDQ (int8 weights, uint8 activations)",
                        (1, qmodel.layers[-1].weight_q.shape[0]))


def export(model, input_shape, path):
    """Write ``model`` as an ONNX file (checked by ``onnx.checker``); returns the path.

    ``input_shape``: one input's shape with a batch axis, e.g. ``(1, 1, 28, 28)``;
    the exported batch axis is dynamic.
    """
    return _save(to_onnx(model, input_shape), path)


def run_onnxruntime(path, x, optimize=True):
    """Run an ONNX file with onnxruntime on CPU; returns the output array."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("running ONNX files needs onnxruntime: pip install 'minicnn[export]'") from e
    if isinstance(x, Tensor):
        x = x.numpy()
    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)})[0]
