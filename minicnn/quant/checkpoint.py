"""Quantized and half-precision checkpoints on disk (safetensors: arrays + JSON metadata).

* int8 (``format = "minicnn-int8"``): per layer ``steps.{i}.weight_q`` (int8),
  ``steps.{i}.weight_scale`` (float32, one per output channel) and
  ``steps.{i}.bias_q`` (int32); the metadata holds the layer list, every
  activation scale and zero point, and the training config. About 4x smaller
  than float32: a weight is one byte instead of four.
* FP16 (``format = "minicnn-fp16"``): the float model's state_dict with every
  float array stored as float16 (half the bytes). Loaded, the weights are
  upcast to float32 and the model computes in float32 — the accuracy change is
  the rounding of each weight to the nearest float16 (11 significant bits).

Nothing is pickled: a safetensors file is a JSON header and raw array bytes,
and loading one cannot run code. Files are written atomically (temp + rename).
Both load in ``minicnn evaluate`` / ``predict`` like a float checkpoint.
"""
from __future__ import annotations

import copy
import json
import math
import os

import numpy as np

from ..backend import to_host
from ..io import load_file, write_bytes
from .fuse import QuantError

INT8 = "minicnn-int8"
FP16 = "minicnn-fp16"


def _atomic_save(tensors, path, metadata):
    from safetensors.numpy import save
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return write_bytes(path, save({k: np.array(v, order="C", copy=True) for k, v in tensors.items()},  # 0-d stays 0-d
                                  metadata={k: json.dumps(v) for k, v in metadata.items()}))


def _metadata(path):
    from safetensors import safe_open
    with safe_open(os.fspath(path), framework="np") as f:
        meta = f.metadata() or {}
    return {k: json.loads(v) for k, v in meta.items()}


def is_quantized_checkpoint(path):
    """True for a file written by :func:`save_quantized` or :func:`save_fp16`."""
    try:
        return _metadata(path).get("format") in (INT8, FP16)
    except Exception:           # not a safetensors file at all (e.g. a float checkpoint)
        return False


def save_quantized(path, qmodel, config=None):
    """Write a :class:`~minicnn.quant.QuantizedModel` (int8 weights, scales, zero points)."""
    from .quantized import QuantizedLayer, QuantizeInput
    tensors, steps = {}, []
    for i, s in enumerate(qmodel.steps):
        if isinstance(s, QuantizeInput):
            steps.append({"op": "quantize", "scale": float(s.scale), "zero_point": s.zero_point})
        elif isinstance(s, QuantizedLayer):
            tensors[f"steps.{i}.weight_q"] = s.weight_q
            tensors[f"steps.{i}.weight_scale"] = s.weight_scale
            tensors[f"steps.{i}.bias_q"] = s.bias_q
            steps.append({"op": s.kind, "name": s.name, "relu": s.relu,
                          "in": [float(s.in_scale), s.in_zero_point],
                          "out": [float(s.out_scale), s.out_zero_point],
                          "conv_args": {k: list(v) if isinstance(v, tuple) else v
                                        for k, v in s.conv_args.items()}})
        else:
            steps.append({"op": s[0], "args": list(s[1:])})
    return _atomic_save(tensors, path, {"format": INT8, "steps": steps, "config": config or {}})


def save_fp16(path, model, config=None):
    """Write ``model``'s state_dict with float arrays in float16."""
    tensors = {}
    for k, v in model.state_dict().items():
        a = to_host(v.array if hasattr(v, "array") else v)
        tensors[k] = a.astype(np.float16) if a.dtype.kind == "f" else a
    return _atomic_save(tensors, path, {"format": FP16, "config": config or {}})


def half_weights(model):
    """A copy of ``model`` whose float parameters and buffers are rounded to float16 (kept as float32)."""
    m = copy.deepcopy(model)
    state = {k: to_host(v.array).astype(np.float16).astype(v.array.dtype) if v.array.dtype.kind == "f" else
             to_host(v.array) for k, v in m.state_dict().items()}
    m.load_state_dict(state)
    return m


def load_quantized(path):
    """Read a file from :func:`save_quantized` / :func:`save_fp16`.

    Returns ``{"module": model, "config": config, "format": ...}``; the
    module is in eval mode (the int8 one is a QuantizedModel).
    """
    from .quantized import QuantizedLayer, QuantizedModel, QuantizeInput
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    arrays, _ = load_file(path, allow_plain=True)     # CheckpointError unless a sound safetensors file
    try:
        meta = _metadata(path)
    except (ValueError, RecursionError) as e:          # a metadata entry that is not JSON
        raise QuantError(f"{path}: unreadable quantized-checkpoint metadata ({e})") from None
    config = meta.get("config", {})
    if not isinstance(config, dict):
        raise QuantError(f"{path}: the config must be a JSON object, got {type(config).__name__}")
    if meta.get("format") == FP16:
        from ..models import get_model
        if "model_name" not in config:
            raise ValueError(f"{path}: an FP16 checkpoint without a model configuration")
        model = get_model(config["model_name"], num_classes=config.get("num_classes", 10))
        model.load_state_dict({k: (v.astype(np.float32) if v.dtype == np.float16 else v)
                               for k, v in arrays.items()})
        model.eval()
        return {"module": model, "config": config, "format": FP16}
    if meta.get("format") != INT8:
        raise ValueError(f"{path} is not a minicnn quantized checkpoint (format {meta.get('format')!r})")
    check_int8_steps(meta.get("steps"), arrays, path)
    steps = []
    for i, s in enumerate(meta["steps"]):
        if s["op"] == "quantize":
            steps.append(QuantizeInput(s["scale"], s["zero_point"]))
        elif s["op"] in ("conv", "linear"):
            args = {k: tuple(v) if isinstance(v, list) else v for k, v in s["conv_args"].items()}
            steps.append(QuantizedLayer(s["op"], arrays[f"steps.{i}.weight_q"], arrays[f"steps.{i}.weight_scale"],
                                        arrays[f"steps.{i}.bias_q"], s["in"], s["out"], s["relu"], args,
                                        name=s["name"]))
        else:
            steps.append((s["op"], *s["args"]))
    return {"module": QuantizedModel(steps), "config": config, "format": INT8}


def check_int8_steps(steps, arrays, path):
    """Refuse an int8 file whose steps could not run, or would run wrong, with a QuantError
    naming the step — before any layer is built.

    What :func:`save_quantized` writes: a non-empty list that starts with the
    input's quantization and holds at least one int8 layer; every scale a
    positive finite number and every zero point an int in [0, 255] (uint8
    codes); each layer's ``weight_q`` an **int8** array (float weights in an
    "int8" file would be silently cast), ``weight_scale`` positive finite
    float32, one per output channel (or one for all), ``bias_q`` int32, one per
    output channel; convolution arguments and max-pool windows >= 1 (stride 0
    divides by zero), padding >= 0.
    """
    def fail(where, what):
        raise QuantError(f"{path}: {where}: {what}")

    def check_qparams(where, pair):
        if (not isinstance(pair, list) or len(pair) != 2 or not is_number(pair[0])
                or not (math.isfinite(pair[0]) and pair[0] > 0)):
            fail(where, f"expected [scale, zero_point] with a positive finite scale, got {pair!r}")
        if type(pair[1]) is not int or not 0 <= pair[1] <= 255:
            fail(where, f"the zero point must be an int in [0, 255], got {pair[1]!r}")

    def check_array(name, dtype, ndims):
        if name not in arrays:
            fail(name, "missing from the file")
        a = arrays[name]
        if a.dtype != dtype:
            fail(name, f"expected {np.dtype(dtype).name}, got {a.dtype.name}")
        if a.ndim not in ndims:
            fail(name, f"expected {' or '.join(map(str, ndims))} dimensions, got shape {a.shape}")
        return a

    if not isinstance(steps, list) or not steps:
        fail("steps", f"expected a non-empty list of steps, got {steps!r}")
    if not isinstance(steps[0], dict) or steps[0].get("op") != "quantize":
        fail("step 0", "the first step must quantize the input ('op': 'quantize')")
    layers = 0
    for i, step in enumerate(steps):
        where = f"step {i}"
        if not isinstance(step, dict) or not isinstance(step.get("op"), str):
            fail(where, f"expected an object with an 'op', got {step!r}")
        op = step["op"]
        if op == "quantize":
            check_qparams(where, [step.get("scale"), step.get("zero_point")])
        elif op in ("conv", "linear"):
            layers += 1
            weight = check_array(f"steps.{i}.weight_q", np.int8, (4,) if op == "conv" else (2,))
            cout = weight.shape[0]
            scale = check_array(f"steps.{i}.weight_scale", np.float32, (0, 1))
            if scale.size not in (1, cout) or not (np.isfinite(scale).all() and (scale > 0).all()):
                fail(where, f"weight_scale must hold 1 or {cout} positive finite scales, got {scale}")
            bias = check_array(f"steps.{i}.bias_q", np.int32, (1,))
            if bias.shape != (cout,):
                fail(where, f"bias_q must have shape ({cout},), got {bias.shape}")
            check_qparams(f"{where} 'in'", step.get("in"))
            check_qparams(f"{where} 'out'", step.get("out"))
            if not isinstance(step.get("relu"), bool) or not isinstance(step.get("name"), str):
                fail(where, "expected 'relu' (true/false) and 'name' (a string)")
            args = step.get("conv_args")
            if op == "conv":
                check_conv_args(where, args, weight.shape, fail)
        elif op == "maxpool":
            args = step.get("args")
            if (not isinstance(args, list) or len(args) != 3 or any(type(v) is not int for v in args)
                    or args[0] < 1 or args[1] < 1 or not 0 <= args[2] <= args[0] // 2):
                fail(where, f"maxpool takes [kernel >= 1, stride >= 1, 0 <= padding <= kernel/2], got {args!r}")
        elif op == "flatten":
            if step.get("args") not in ([], None):
                fail(where, f"flatten takes no arguments, got {step.get('args')!r}")
        else:
            fail(where, f"unknown op {op!r} (expected quantize, conv, linear, maxpool or flatten)")
    if layers == 0:
        fail("steps", "no int8 layer (conv or linear) in the model")


def check_conv_args(where, args, weight_shape, fail):
    """stride, dilation >= 1, padding >= 0 (pairs), groups >= 1 dividing the output channels."""
    if not isinstance(args, dict) or set(args) != {"stride", "padding", "dilation", "groups"}:
        fail(where, f"conv_args must hold stride, padding, dilation and groups, got {args!r}")
    for name, least in (("stride", 1), ("padding", 0), ("dilation", 1)):
        v = args[name]
        if not isinstance(v, list) or len(v) != 2 or any(type(x) is not int or x < least for x in v):
            fail(where, f"conv_args {name} must be two ints >= {least}, got {v!r}")
    groups = args["groups"]
    if type(groups) is not int or groups < 1 or weight_shape[0] % groups:
        fail(where, f"conv_args groups must be an int >= 1 dividing {weight_shape[0]}, got {groups!r}")


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


__all__ = ["save_quantized", "save_fp16", "load_quantized", "is_quantized_checkpoint", "half_weights"]
