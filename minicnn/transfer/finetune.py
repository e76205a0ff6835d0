"""Transfer learning: start from a trained network, replace its head, freeze some of it.

Three ways to reuse a network trained on task A (say MNIST) for task B
(Fashion-MNIST) with few labels:

* **linear probe** — freeze everything but the last layer (the *head*) and
  train only the head: the pretrained features are used as they are;
* **full fine-tune** — start from the pretrained weights and train all of them;
* **discriminative learning rates** — train all of them, the backbone with a
  smaller learning rate than the new head, so the features move slowly while
  the randomly initialised head catches up.

The pieces, used by ``minicnn train --init-from/--freeze/--head-lr/--backbone-lr``
(:mod:`minicnn.transfer.cli`) and usable from Python::

    from minicnn import transfer, train
    from minicnn.models import get_model
    model = get_model("reference", num_classes=10)
    transfer.load_pretrained(model, train.load_checkpoint("mnist/best.ckpt")["model"], reset_head=True)
    transfer.freeze_layers(model, transfer.backbone_names(model))      # a linear probe
    opt = optim.Adam(transfer.param_groups(model, head_lr=1e-3, backbone_lr=1e-4))
"""
from __future__ import annotations

from .. import nn

__all__ = ["head_name", "load_pretrained", "resolve_layers", "backbone_names", "freeze_layers",
           "param_groups"]


def head_name(model) -> str:
    """The dotted name of the classifier head: the last ``nn.Linear`` in the model."""
    heads = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to act as its head")
    return heads[-1]


def _keys_under(names, prefix):
    return [k for k in names if k == prefix or k.startswith(prefix + ".")]


def load_pretrained(model, state_dict, reset_head=False) -> dict:
    """Copy every matching tensor of ``state_dict`` into ``model``; returns a report.

    The head (:func:`head_name`) is taken from ``state_dict`` only when its
    shapes match and ``reset_head`` is False; with another class count (or
    ``reset_head=True``) the model keeps its freshly initialised head — a *new
    head*. Any other difference — a key on one side only, or a shape
    mismatch outside the head — is a ``ValueError`` that names the keys:
    loading "whatever happens to fit" would hide a wrong architecture.

    Report: ``{"loaded": [keys], "new_head": bool, "head": name}``.
    """
    own = model.state_dict()
    head = head_name(model)
    head_keys = set(_keys_under(own, head))
    given = {k: v for k, v in state_dict.items()}
    mismatched = [k for k in own if k in given and k not in head_keys
                  and tuple(given[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in given and k not in head_keys]
    unexpected = [k for k in given if k not in own]
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(
            f"{k} is {tuple(given[k].shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
            for k in mismatched))
    if missing:
        problems.append("not in the checkpoint: " + ", ".join(missing))
    if unexpected:
        problems.append("not in the model: " + ", ".join(unexpected))
    if problems:
        raise ValueError("cannot initialise " + type(model).__name__ + " from these weights ("
                         + " | ".join(problems) + "); was it trained with the same --model and --width?")
    head_fits = all(k in given and tuple(given[k].shape) == tuple(own[k].shape) for k in head_keys)
    new_head = reset_head or not head_fits
    take = {k: v for k, v in given.items() if not (new_head and k in head_keys)}
    model.load_state_dict(take, strict=False)
    return {"loaded": list(take), "new_head": new_head, "head": head}


def _expand(item):
    """'0-5' -> ['0', ..., '5']; anything else as it is."""
    a, sep, b = item.partition("-")
    if sep and a.isdigit() and b.isdigit():
        return [str(i) for i in range(int(a), int(b) + 1)]
    return [item]


def backbone_names(model) -> list:
    """The shallowest module names that together hold every layer except the head."""
    head = head_name(model)
    out, module, prefix = [], model, ""
    while True:
        nxt = None
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if full == head:
                continue
            if head.startswith(full + "."):
                nxt = (child, full)                 # the head is inside: descend into it
            else:
                out.append(full)
        if nxt is None:
            return out
        module, prefix = nxt


def resolve_layers(model, spec) -> list:
    """Module names from a ``--freeze`` value: ``"0,3"``, ``"0-5"``, ``"stem,stages.0"``
    (dotted names, as ``mc.summary`` prints them), or ``"backbone"`` (all but the head)."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ValueError("no layer names given to freeze")
    modules = dict(model.named_modules())
    names = []
    for item in items:
        for name in (backbone_names(model) if item == "backbone" else _expand(item)):
            if name not in modules or name == "":
                top = ", ".join(n for n, _ in model.named_children())
                raise ValueError(f"no layer named {name!r} to freeze; top-level layers: {top} "
                                 "(or a dotted name from mc.summary, or 'backbone')")
            if name not in names:
                names.append(name)
    return names


def freeze_layers(model, names, bn_eval=True) -> dict:
    """``nn.utils.freeze`` each named module; returns ``{"params": frozen count, "batchnorms": [names]}``."""
    modules = dict(model.named_modules())
    frozen, bns = 0, []
    for name in names:
        m = modules[name]
        frozen += sum(p.numel() for p in m.parameters() if p.requires_grad)
        nn.utils.freeze(m, bn_eval=bn_eval)
        bns += [f"{name}.{n}" if n else name for n, b in m.named_modules()
                if isinstance(b, (nn.BatchNorm1d, nn.BatchNorm2d))]
    return {"params": frozen, "batchnorms": bns}


def param_groups(model, head_lr, backbone_lr) -> list:
    """Two optimizer groups: the head's trainable parameters at ``head_lr``, the
    rest at ``backbone_lr`` (an empty group is left out; frozen parameters too)."""
    head = dict(model.named_modules())[head_name(model)]
    head_ids = {id(p) for p in head.parameters()}
    head_params = [p for p in head.parameters() if p.requires_grad]
    rest = [p for p in model.parameters() if id(p) not in head_ids and p.requires_grad]
    groups = []
    if rest:
        groups.append({"params": rest, "lr": backbone_lr})
    if head_params:
        groups.append({"params": head_params, "lr": head_lr})
    if not groups:
        raise ValueError("every parameter is frozen: nothing to train")
    return groups
