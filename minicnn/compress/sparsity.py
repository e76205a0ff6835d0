"""Model compression around pruning: shrink, schedules, sensitivity, sparse files.

* :func:`shrink` turns *structured* sparsity into a smaller dense model. A conv
  filter whose weights are all zero (``prune.ln_structured(conv, "weight",
  amount, n=1, dim=0)``) outputs a constant map (its bias) — so it can be
  deleted, with the matching channel of the BatchNorm after it and the matching
  input channel of the next conv (or the matching columns of the first Linear
  after a Flatten). The constant it fed forward is folded into the next layer
  (its bias, or the running mean of the BatchNorm that follows it), so the
  shrunk model computes *exactly* the same function. Unstructured zeros stay
  zeros: a dense kernel still multiplies them, which is why only structured
  pruning makes inference faster.
* :func:`prune_to`, :func:`gradual_schedule`, :func:`iterative_prune` — one-shot
  pruning to a sparsity, and the gradual schedule of Zhu & Gupta (2017),
  ``s_t = s_f + (s_i - s_f) (1 - t/n)^3``, with fine-tuning between steps.
* :func:`sensitivity_analysis` / :func:`plot_sensitivity` — prune one layer at
  a time at increasing sparsity and measure validation accuracy (Distiller's
  sensitivity analysis): which layers can lose most of their weights.
* :func:`save_sparse` / :func:`load_sparse` — a pruned model on disk as a
  bitmask of the non-zeros plus their values (safetensors, no pickle).
* :func:`architecture` / :func:`model_from_architecture` — a Sequential model's
  layers as a JSON-able list of specs, so a shrunk model (non-standard channel
  counts) can be rebuilt from a checkpoint.
"""
from __future__ import annotations

import copy
import json

import numpy as np

from .. import nn
from ..backend import to_device, to_host
from . import prune
from ..autograd.tensor import Tensor, no_grad

__all__ = ["shrink", "ShrinkError", "prunable_layers", "prune_to", "gradual_schedule", "iterative_prune",
           "sensitivity_analysis", "plot_sensitivity", "save_sparse", "load_sparse", "architecture", "make_permanent", "dense_bytes",
           "model_from_architecture", "macs"]

METHODS = ("global-l1", "l1", "ln-structured")


class ShrinkError(ValueError):
    """The model's graph is not one :func:`shrink` can rewrite (the message names the layer)."""


# -----------------------------------------------------------------------------
# Architecture specs (JSON-able) for Sequential models
# -----------------------------------------------------------------------------
_SPEC_FIELDS = {
    "Conv2d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"),
    "Linear": ("in_features", "out_features"),
    "BatchNorm1d": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    "BatchNorm2d": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    "MaxPool2d": ("kernel_size", "stride", "padding"),
    "AvgPool2d": ("kernel_size", "stride", "padding", "count_include_pad"),
    "AdaptiveAvgPool2d": ("output_size",),
    "Dropout": ("p",),
    "Flatten": ("start_dim", "end_dim"),
    "LeakyReLU": ("negative_slope",),
    "GELU": ("approximate",),
    "ReLU": (), "Tanh": (), "Sigmoid": (), "SiLU": (), "Mish": (), "Identity": (),
}


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def architecture(model):
    """A Sequential model as a list of ``{"type": ..., **constructor arguments}`` dicts."""
    if not isinstance(model, nn.Sequential):
        raise ShrinkError(f"architecture: expected an nn.Sequential, got {type(model).__name__}")
    specs = []
    for name, layer in model.named_children():
        kind = type(layer).__name__
        if kind not in _SPEC_FIELDS or type(layer) is not getattr(nn, kind, None):
            raise ShrinkError(f"architecture: layer {name} ({kind}) is not a built-in layer that can be "
                              f"described; supported: {', '.join(sorted(_SPEC_FIELDS))}")
        spec = {"type": kind, **{f: _jsonable(getattr(layer, f)) for f in _SPEC_FIELDS[kind]}}
        if kind in ("Conv2d", "Linear"):
            spec["bias"] = layer._parameters.get("bias") is not None
        specs.append(spec)
    return specs


def model_from_architecture(specs):
    """Rebuild an ``nn.Sequential`` from :func:`architecture`'s list (fresh weights)."""
    layers = []
    for i, spec in enumerate(specs):
        spec = dict(spec)
        kind = spec.pop("type", None)
        if kind not in _SPEC_FIELDS:
            raise ValueError(f"architecture entry {i}: unknown layer type {kind!r}")
        for k, v in spec.items():
            if isinstance(v, list):
                spec[k] = tuple(v)
        layers.append(getattr(nn, kind)(**spec))
    return nn.Sequential(*layers)


# -----------------------------------------------------------------------------
# shrink
# -----------------------------------------------------------------------------
_PASS_THROUGH = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.SiLU, nn.Mish, nn.GELU, nn.Dropout,
                 nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def _effective(layer, name):
    """Host copy of a parameter as the forward pass uses it (orig * mask when pruned)."""
    p = layer._parameters.get(name + "_orig")
    if p is not None and name + "_mask" in layer._buffers:
        return np.asarray(to_host(p.array) * to_host(layer._buffers[name + "_mask"].array))
    p = layer._parameters.get(name)
    return None if p is None else np.array(to_host(p.array))


def _set(t, arr):
    t.array = to_device(np.ascontiguousarray(arr), dtype=arr.dtype)


def _new_like(layer, **changes):
    """A fresh layer of the same type and settings, with some sizes changed."""
    kind = type(layer).__name__
    args = {f: getattr(layer, f) for f in _SPEC_FIELDS[kind]}
    if kind in ("Conv2d", "Linear"):
        args["bias"] = layer._parameters.get("bias") is not None
    args.update(changes)
    return type(layer)(**args)


def _check_shrinkable(model):
    if not isinstance(model, nn.Sequential):
        names = [f"{n} ({type(m).__name__})" for n, m in model.named_children()]
        raise ShrinkError(
            f"shrink: {type(model).__name__} is not an nn.Sequential, so the order in which its "
            f"layers feed each other is not known (children: {', '.join(names) or 'none'}); shrink "
            "handles sequential models such as reference, reference-bn and lenet5")
    for name, layer in model.named_children():
        if isinstance(layer, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten)) \
                or type(layer) in _PASS_THROUGH:
            continue
        extra = " (its forward adds a residual shortcut: the filters of the two branches would " \
                "have to be removed together)" if hasattr(layer, "shortcut") else ""
        raise ShrinkError(f"shrink: cannot shrink through layer {name} ({type(layer).__name__}){extra}; "
                          "supported: Conv2d, Linear, BatchNorm, Flatten, pooling, activations, Dropout")


def _dead_outputs(layer):
    """Output channels / neurons whose effective weights are all zero."""
    w = _effective(layer, "weight")
    return np.flatnonzero(np.abs(w.reshape(w.shape[0], -1)).sum(axis=1) == 0)


def _layer_inputs(model, x):
    """Record the input of every child of a Sequential for one forward pass (eval mode)."""
    seen, handles = {}, []
    for name, layer in model.named_children():
        handles.append(layer.register_forward_pre_hook(
            lambda m, inp, name=name: seen.__setitem__(name, to_host(inp[0].array))))
    was = model.training
    model.eval()
    try:
        with no_grad():
            model(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return seen


def shrink(model, input_size=(1, 1, 28, 28)):
    """A new, smaller model without the all-zero conv filters / hidden neurons of ``model``.

    ``model``: an ``nn.Sequential`` (reference, reference-bn, lenet5, their
    width variants), typically after ``prune.ln_structured(..., dim=0)``. The
    result is a plain ``nn.Sequential`` (no masks) computing the same outputs
    (exactly, up to rounding) in eval mode. ``input_size`` (one sample is enough)
    is used to read the constant each deleted channel feeds forward. Raises
    :class:`ShrinkError` naming the layer for graphs it cannot rewrite.
    """
    _check_shrinkable(model)
    names = [n for n, _ in model.named_children()]
    layers = [m for _, m in model.named_children()]
    dtype = next(iter(model.parameters())).dtype
    inputs = _layer_inputs(model, Tensor(np.zeros(input_size), dtype=dtype))
    new = [copy.deepcopy(m) if not isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d))
           else None for m in layers]
    for m in new:                                  # deep-copied layers: no hooks of the old model
        if m is not None:
            m._forward_pre_hooks.clear()
            m._forward_hooks.clear()

    fold_into_bn = {}                              # id(BatchNorm) -> constant to take off its mean
    keep_in = None                                 # channels of the current activation that survive
    flat_hw = None                                 # spatial size when a Flatten has been passed
    for i, layer in enumerate(layers):
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            w = _effective(layer, "weight")
            b = _effective(layer, "bias")
            extra_bias = np.zeros(w.shape[0], dtype=w.dtype)
            if keep_in is not None:
                w, extra_bias = _cut_inputs(model, names, layers, i, layer, w, keep_in, flat_hw, inputs)
            is_last = not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in layers[i + 1:])
            dead = np.array([], dtype=np.int64) if is_last else _dead_outputs(layer)
            if isinstance(layer, nn.Conv2d) and layer.groups != 1 and (len(dead) or keep_in is not None):
                raise ShrinkError(f"shrink: layer {names[i]} is a grouped convolution "
                                  f"(groups={layer.groups}); its channels cannot be cut independently")
            keep_out = np.setdiff1d(np.arange(w.shape[0]), dead)
            if len(keep_out) == 0:
                raise ShrinkError(f"shrink: every output of layer {names[i]} is pruned; the model "
                                  "would compute a constant")
            w = w[keep_out]
            fold = extra_bias[keep_out]
            b = None if b is None else b[keep_out]
            if np.any(fold != 0):
                nxt = _next_bn(layers, i)
                if b is None and nxt is not None:
                    fold_into_bn[id(nxt)] = fold   # into the BatchNorm's running mean
                else:
                    b = fold if b is None else b + fold
            if isinstance(layer, nn.Conv2d):
                m = _new_like(layer, in_channels=w.shape[1] * layer.groups, out_channels=w.shape[0],
                              bias=b is not None)
            else:
                m = _new_like(layer, in_features=w.shape[1], out_features=w.shape[0], bias=b is not None)
            _set(m.weight, w)
            if b is not None:
                _set(m.bias, b.astype(w.dtype))
            new[i] = m
            keep_in = keep_out if len(keep_out) < layer_out_size(layer) else None
            flat_hw = None
        elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            sel = slice(None) if keep_in is None else keep_in
            n = layer.num_features if keep_in is None else len(keep_in)
            m = _new_like(layer, num_features=n)
            for pname in ("weight", "bias"):
                if layer._parameters.get(pname) is not None:
                    _set(getattr(m, pname), _effective(layer, pname)[sel])
            if layer.running_mean is not None:
                mean = np.array(to_host(layer.running_mean.array))[sel]
                fold = fold_into_bn.pop(id(layer), None)
                if fold is not None:
                    mean = mean - fold.astype(mean.dtype)
                _set(m.running_mean, mean)
                _set(m.running_var, np.array(to_host(layer.running_var.array))[sel])
                m.num_batches_tracked.array = layer.num_batches_tracked.array.copy()
            new[i] = m
        elif isinstance(layer, nn.Flatten):
            shape = inputs[names[i]].shape
            if keep_in is not None:
                flat_hw = int(np.prod(shape[2:]))
        # pass-through layers: channels unchanged
    out = nn.Sequential(*new)
    out.to(dtype)
    out.train(model.training)
    return out


def layer_out_size(layer):
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def _next_bn(layers, i):
    """The BatchNorm directly after layer i (its running mean can absorb a constant), or None."""
    if i + 1 < len(layers) and isinstance(layers[i + 1], (nn.BatchNorm1d, nn.BatchNorm2d)) \
            and layers[i + 1].running_mean is not None:
        return layers[i + 1]
    return None


def _cut_inputs(model, names, layers, i, layer, w, keep_in, flat_hw, inputs):
    """Drop the deleted input channels from ``w``; return (w, constant folded per output)."""
    x = inputs[names[i]]                                      # this layer's input (zero image)
    if isinstance(layer, nn.Conv2d):
        C = layer.in_channels
        dead = np.setdiff1d(np.arange(C), keep_in)
        # a deleted channel is a constant map: read its value in the middle of the image
        const = x[0, dead].reshape(len(dead), -1)
        if not np.allclose(const, const[:, :1], rtol=0, atol=1e-6 * (1 + np.abs(const).max())):
            raise ShrinkError(f"shrink: the channels feeding layer {names[i]} that were pruned are "
                              "not constant maps; cannot fold them")
        const = const[:, 0]
        if np.any(const != 0) and tuple(layer.padding) != (0, 0):
            raise ShrinkError(f"shrink: layer {names[i]} pads its input with zeros, so the constant "
                              "left by a pruned filter cannot be folded into its bias")
        fold = (w[:, dead].sum(axis=(2, 3)) * const[None, :]).sum(axis=1)
        return w[:, keep_in], fold.astype(w.dtype)
    # Linear: after a Flatten, channel c owns the columns c*hw .. (c+1)*hw - 1
    hw = flat_hw if flat_hw is not None else 1
    C = w.shape[1] // hw
    cols_keep = (keep_in[:, None] * hw + np.arange(hw)[None, :]).reshape(-1)
    dead = np.setdiff1d(np.arange(C), keep_in)
    cols_dead = (dead[:, None] * hw + np.arange(hw)[None, :]).reshape(-1)
    fold = w[:, cols_dead] @ x[0, cols_dead].astype(w.dtype)
    return w[:, cols_keep], fold.astype(w.dtype)


# -----------------------------------------------------------------------------
# Multiply-accumulates
# -----------------------------------------------------------------------------
def macs(model, input_size=(1, 1, 28, 28)):
    """Multiply-accumulates of the Conv2d and Linear layers for one sample (dense count:
    a zeroed weight is still multiplied) — ``mc.summary(model).total_macs``."""
    from ..train.summary import summary
    return summary(model, input_size).total_macs


# -----------------------------------------------------------------------------
# Pruning a whole model, one-shot or gradually
# -----------------------------------------------------------------------------
def prunable_layers(model, method="global-l1"):
    """``[(dotted name, module)]``: every Conv2d and Linear (only Conv2d for ln-structured)."""
    kinds = (nn.Conv2d,) if method == "ln-structured" else (nn.Conv2d, nn.Linear)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]


def _mask_zeros(m, dim=None):
    mask = getattr(m, "weight_mask", None)
    if mask is None:
        return 0
    a = to_host(mask.array)
    if dim is None:
        return int((a == 0).sum())
    return int((a.reshape(a.shape[0], -1).sum(axis=1) == 0).sum())


def prune_to(model, method, sparsity, layers=None):
    """Prune ``model`` (composing with earlier pruning) until the target ``sparsity`` is reached.

    * ``"global-l1"``: one magnitude threshold over all Conv2d + Linear weights;
      ``sparsity`` is the fraction of all those weights that are zero.
    * ``"l1"``: the same fraction of each layer's weights (layer-wise magnitude).
    * ``"ln-structured"``: that fraction of each conv layer's filters, by their
      L1 norm (Li et al. 2017).
    """
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; expected one of {', '.join(METHODS)}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be a fraction in [0, 1], got {sparsity!r}")
    layers = prunable_layers(model, method) if layers is None else layers
    if method == "global-l1":
        total = sum(m.weight_orig.numel() if hasattr(m, "weight_mask") else m.weight.numel() for _, m in layers)
        count = max(0, round(sparsity * total) - sum(_mask_zeros(m) for _, m in layers))
        prune.global_unstructured([(m, "weight") for _, m in layers], prune.L1Unstructured, amount=count)
    elif method == "l1":
        for _, m in layers:
            n = int(m.weight_orig.numel() if hasattr(m, "weight_mask") else m.weight.numel())
            prune.l1_unstructured(m, "weight", amount=max(0, round(sparsity * n) - _mask_zeros(m)))
    else:
        for _, m in layers:
            n = int(m.out_channels)
            prune.ln_structured(m, "weight", amount=max(0, round(sparsity * n) - _mask_zeros(m, dim=0)),
                                n=1, dim=0)
    return model


def gradual_schedule(final_sparsity, steps, initial_sparsity=0.0):
    """Zhu & Gupta (2017): ``s_t = s_f + (s_i - s_f) (1 - t/n)^3`` for t = 1..n.

    Prunes fast at first, when many weights are redundant, and slowly at the
    end, when each removed weight hurts more. Ends exactly at ``final_sparsity``.
    """
    if steps < 1:
        raise ValueError(f"gradual_schedule: steps must be >= 1, got {steps}")
    return [final_sparsity + (initial_sparsity - final_sparsity) * (1 - t / steps) ** 3
            for t in range(1, steps + 1)]


def iterative_prune(model, method, final_sparsity, steps, finetune=None, evaluate=None, log=None):
    """Prune along :func:`gradual_schedule`, calling ``finetune(model)`` after each step.

    Returns a list of ``{"step", "sparsity", ...evaluate(model)}`` records
    (``evaluate`` on validation data, optional).
    """
    records = []
    for t, s in enumerate(gradual_schedule(final_sparsity, steps), 1):
        prune_to(model, method, s)
        if finetune is not None:
            finetune(model)
        rec = {"step": t, "sparsity": s}
        if evaluate is not None:
            rec.update(evaluate(model))
        records.append(rec)
        if log is not None:
            log(f"gradual step {t}/{steps}: sparsity {s:.3f}" +
                (f", {rec}" if evaluate is not None else ""))
    return records


def make_permanent(model):
    """``prune.remove`` on every pruned tensor: plain Parameters with the zeros in place."""
    for _, m in model.named_modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(m, hook._tensor_name)
    return model


# -----------------------------------------------------------------------------
# Sensitivity analysis
# -----------------------------------------------------------------------------
def sensitivity_analysis(model, evaluate, sparsities=(0.25, 0.5, 0.75, 0.9, 0.95), method="l1"):
    """Prune each layer alone at each sparsity; ``evaluate(model)`` -> accuracy (validation).

    ``method``: ``"l1"`` (weights by magnitude) or ``"ln-structured"`` (filters
    by L1 norm). Returns ``{"sparsities": [...], "baseline": acc,
    "layers": {name: [acc at each sparsity]}}``. The model is left as it was.
    """
    if method not in ("l1", "ln-structured"):
        raise ValueError(f"sensitivity_analysis: method must be 'l1' or 'ln-structured', got {method!r}")
    if prune.is_pruned(model):
        raise ValueError("sensitivity_analysis: the model is already pruned; run it on the dense model")
    snapshot = {k: np.array(to_host(v.array)) for k, v in model.state_dict().items()}
    result = {"sparsities": list(sparsities), "baseline": float(evaluate(model)), "layers": {},
              "method": method}
    for name, layer in prunable_layers(model, method):
        accs = []
        for s in sparsities:
            prune_to(model, method, s, layers=[(name, layer)])
            accs.append(float(evaluate(model)))
            prune.remove(layer, "weight")
            model.load_state_dict(snapshot)
        result["layers"][name] = accs
    return result


def plot_sensitivity(result, path, title=None):
    """Accuracy vs sparsity, one line per layer; written atomically as a PNG."""
    from matplotlib.figure import Figure
    from ..train.viz import save_figure
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    xs = [100 * s for s in result["sparsities"]]
    for name, accs in result["layers"].items():
        ax.plot(xs, [100 * a for a in accs], marker="o", label=f"layer {name}")
    ax.axhline(100 * result["baseline"], color="grey", linestyle="--", label="dense")
    ax.set_xlabel("sparsity of that layer alone (%)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title or f"sensitivity per layer ({result.get('method', 'l1')})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


# -----------------------------------------------------------------------------
# Sparse storage
# -----------------------------------------------------------------------------
SPARSE_FORMAT = "minicnn-sparse-1"


def save_sparse(model, path, metadata=None):
    """Write the model's effective weights compressed: a bitmask + the non-zero values.

    A tensor is stored sparse when that is smaller than dense (``n/8 + 4 nnz``
    bytes against ``4 n``: from about 3 % zeros on); BatchNorm statistics and
    biases stay dense. safetensors file, written atomically; ``metadata``
    (e.g. the checkpoint config) is stored as JSON. Returns the bytes written.
    """
    from safetensors.numpy import save
    from ..io import atomic_write
    tensors, layout = {}, {}
    arrays = dict(prune.effective_parameters(model))
    for prefix, m in model.named_modules():                 # persistent buffers, masks excluded
        for name, b in m._buffers.items():
            if b is not None and name not in m._non_persistent and not name.endswith("_mask"):
                arrays[f"{prefix}.{name}" if prefix else name] = np.array(to_host(b.array))
    for key, a in arrays.items():
        a = np.array(a, order="C")              # (ascontiguousarray would make 0-d arrays 1-d)
        nz = a.reshape(-1) != 0
        sparse_bytes = (a.size + 7) // 8 + int(nz.sum()) * a.itemsize
        if a.dtype.kind == "f" and sparse_bytes < a.nbytes:
            tensors[key + ".bitmask"] = np.packbits(nz)
            tensors[key + ".values"] = a.reshape(-1)[nz]
            layout[key] = {"encoding": "bitmask", "shape": list(a.shape), "dtype": str(a.dtype)}
        else:
            tensors[key] = a.reshape(-1) if a.ndim == 0 else a
            layout[key] = {"encoding": "dense", "shape": list(a.shape)}
    meta = {"format": SPARSE_FORMAT, "layout": json.dumps(layout),
            "metadata": json.dumps(metadata or {}, default=_json_default)}
    blob = save(tensors, metadata=meta)
    with atomic_write(path) as f:
        f.write(blob)
    return len(blob)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def load_sparse(path):
    """Read :func:`save_sparse`'s file: ``(state_dict of dense host arrays, metadata dict)``."""
    from safetensors import safe_open
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
        if meta.get("format") != SPARSE_FORMAT:
            raise ValueError(f"{path} is not a minicnn sparse model file (format {meta.get('format')!r})")
        layout = json.loads(meta["layout"])
        state = {}
        for key, info in layout.items():
            if info["encoding"] == "dense":
                state[key] = f.get_tensor(key).reshape(tuple(info["shape"]))
            else:
                shape = tuple(info["shape"])
                n = int(np.prod(shape))
                nz = np.unpackbits(f.get_tensor(key + ".bitmask"), count=n).astype(bool)
                dense = np.zeros(n, dtype=info["dtype"])
                dense[nz] = f.get_tensor(key + ".values")
                state[key] = dense.reshape(shape)
    return state, json.loads(meta.get("metadata", "{}"))


def dense_bytes(model, metadata=None):
    """Bytes of the same tensors (and metadata) stored dense in a safetensors file, for comparison."""
    from safetensors.numpy import save
    arrays = {k: np.array(v, order="C").reshape(-1) if np.ndim(v) == 0 else np.array(v, order="C")
              for k, v in prune.effective_parameters(model)}
    for prefix, m in model.named_modules():
        for name, b in m._buffers.items():
            if b is not None and name not in m._non_persistent and not name.endswith("_mask"):
                arrays[f"{prefix}.{name}" if prefix else name] = np.array(to_host(b.array)).reshape(-1) \
                    if b.ndim == 0 else np.array(to_host(b.array))
    meta = {"metadata": json.dumps(metadata or {}, default=_json_default)}
    return len(save(arrays, metadata=meta))

