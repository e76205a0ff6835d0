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
import os

import numpy as np

from ..backend import to_host
from ..io import write_bytes

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
    from safetensors.numpy import load_file
    from .quantized import QuantizedLayer, QuantizedModel, QuantizeInput
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    meta = _metadata(path)
    arrays = load_file(path)
    config = meta.get("config", {})
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


__all__ = ["save_quantized", "save_fp16", "load_quantized", "is_quantized_checkpoint", "half_weights"]
