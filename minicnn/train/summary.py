"""``mc.summary``: what a network costs — parameters, multiply-accumulates, memory::

    import minicnn as mc
    from minicnn.models import ReferenceCNN
    s = mc.summary(ReferenceCNN(), input_size=(1, 1, 28, 28))
    print(s)                 # one row per layer, then the totals
    s.total_params, s.trainable_params, s.total_macs, s.total_flops

It runs one forward pass (in eval mode, without autograd) with a forward hook
on every module, so it sees the real output shapes — also of custom
``forward`` methods such as a residual block — and then puts the model back in the
modes it was in.

What is counted, and how
------------------------
* **Parameters** of a row: the parameters *that module owns directly*
  (``module.named_parameters(recurse=False)``). A container (``Sequential``,
  a residual block) owns none, so its row shows ``--`` and nothing is counted
  twice: the column sums to ``total_params``, which equals
  ``sum(p.numel() for p in model.parameters())`` — a parameter shared by two
  layers is counted once, at the first layer that owns it (the other row says
  ``shared``). These are exactly PyTorch's counts for the same network.
* **MACs** (multiply-accumulates, ``a += w * x``) at the leaf layers only,
  never again for the containers around them:

  - ``Conv2d``: ``N · Cout · oh · ow · (Cin / groups) · kh · kw``
  - ``Linear``: ``rows · in_features · out_features`` (rows = N for a 2-D input)

  Pooling, activations, batch norm, dropout, flatten and the additions of a
  residual block count **0 MACs**: they are comparisons or one elementwise
  operation per value, a small fraction of the convolutions' work (they cost
  memory traffic, not arithmetic). Biases are not counted either.
  **FLOPs = 2 × MACs** (a multiply and an add); papers use both words, often
  loosely — this table says MACs and means MACs.
* **Parameter bytes**: parameters × their dtype's size; **buffer bytes**
  likewise for buffers (BatchNorm's running statistics).
* **Activation bytes**: the sum of every leaf layer's output for this input
  (batch size included) — roughly what the forward pass keeps for backward.

A layer called twice (the same module used at two places) shows one row with
its MACs summed over the calls and ``×2`` after its type.
"""
from __future__ import annotations

import numpy as np

__all__ = ["Summary", "summary", "layer_macs"]


def layer_macs(module, inputs, output) -> int:
    """Multiply-accumulates of one call of a leaf layer (0 for layers without a matrix product)."""
    from ..nn import Conv2d, Linear
    if isinstance(module, Conv2d):
        n, cout, oh, ow = output.shape
        kh, kw = module.kernel_size
        return int(n * cout * oh * ow * (module.in_channels // module.groups) * kh * kw)
    if isinstance(module, Linear):
        rows = int(np.prod(output.shape[:-1]))
        return rows * module.in_features * module.out_features
    return 0


def _fmt_int(n):
    return f"{n:,}"


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


class Summary:
    """The result of :func:`summary`. ``str()`` is the table; the numbers are attributes:

    ``rows`` (a list of dicts: name, type, output_shape, params, trainable, macs,
    calls, shared, leaf), ``total_params``, ``trainable_params``,
    ``non_trainable_params``, ``total_macs`` (for the whole ``input_size``,
    batch included), ``total_flops`` (= 2 × MACs), ``param_bytes``,
    ``buffer_bytes``, ``activation_bytes``, ``input_size``.
    """

    def __init__(self, rows, input_size, total_params, trainable_params, param_bytes, buffer_bytes,
                 activation_bytes, dtype):
        self.rows = rows
        self.input_size = tuple(input_size)
        self.total_params = total_params
        self.trainable_params = trainable_params
        self.non_trainable_params = total_params - trainable_params
        self.total_macs = sum(r["macs"] for r in rows)
        self.param_bytes = param_bytes
        self.buffer_bytes = buffer_bytes
        self.activation_bytes = activation_bytes
        self.dtype = dtype

    @property
    def total_flops(self):
        """2 × MACs: one multiply and one add each."""
        return 2 * self.total_macs

    @property
    def layer_names(self):
        """The dotted names of the rows (what ``--freeze`` accepts)."""
        return [r["name"] for r in self.rows]

    def __getitem__(self, name):
        for r in self.rows:
            if r["name"] == name:
                return r
        raise KeyError(f"no layer named {name!r}; layers: {', '.join(self.layer_names)}")

    def __str__(self):
        header = ("Layer (name)", "Type", "Output shape", "Params", "Trainable", "MACs")
        table = []
        for r in self.rows:
            depth = r["name"].count(".")
            name = "  " * depth + r["name"]
            kind = r["type"] + (f" ×{r['calls']}" if r["calls"] > 1 else "")
            shape = "(" + ", ".join(str(d) for d in r["output_shape"]) + ")" if r["output_shape"] else "--"
            if r["shared"]:
                params = trainable = "shared"
            elif r["params"] or r["leaf"]:
                params, trainable = _fmt_int(r["params"]), _fmt_int(r["trainable"])
            else:
                params = trainable = "--"
            macs = _fmt_int(r["macs"]) if r["leaf"] else "--"
            table.append((name, kind, shape, params, trainable, macs))
        widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h)
                  for i, h in enumerate(header)]
        align = ("<", "<", "<", ">", ">", ">")

        def line(cells):
            return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths))

        rule = "=" * len(line(header))
        out = [rule, line(header), rule] + [line(row) for row in table] + [rule]
        n = self.input_size[0] if self.input_size else 1
        out += [
            f"Total params: {_fmt_int(self.total_params)}",
            f"Trainable params: {_fmt_int(self.trainable_params)}",
            f"Non-trainable params: {_fmt_int(self.non_trainable_params)}",
            f"Total MACs (multiply-accumulates) for input {self.input_size}: {_fmt_int(self.total_macs)}"
            f" ({_fmt_int(self.total_macs // max(n, 1))} per image; FLOPs = 2 x MACs = {_fmt_int(self.total_flops)})",
            f"Parameter memory: {_fmt_bytes(self.param_bytes)} ({np.dtype(self.dtype).name}); "
            f"buffers: {_fmt_bytes(self.buffer_bytes)}",
            f"Activation memory (leaf-layer outputs for this input): {_fmt_bytes(self.activation_bytes)}",
            rule,
        ]
        return "\n".join(out)

    def __repr__(self):
        return (f"Summary(total_params={self.total_params}, trainable_params={self.trainable_params}, "
                f"total_macs={self.total_macs}, input_size={self.input_size})")

    def _repr_pretty_(self, p, cycle):          # IPython / Jupyter show the table
        p.text(str(self))


def summary(model, input_size=(1, 1, 28, 28), dtype=None) -> Summary:
    """One forward pass of a zero input of shape ``input_size`` through ``model``;
    returns a :class:`Summary` (print it for the table).

    ``dtype``: the input's dtype (default: that of the model's first
    parameter, else float32). The model is run in eval mode under
    ``no_grad`` — so batch-norm statistics do not move — and every module's
    train/eval mode is restored afterwards. Only modules that are actually
    called appear as rows; MACs count at leaf layers only (see the module docstring).
    """
    import minicnn as mc
    params = list(model.parameters())
    if dtype is None:
        dtype = params[0].dtype if params else np.float32
    dtype = np.dtype(dtype)
    names = {id(m): name for name, m in model.named_modules()}
    leaf_model = not any(True for _ in model.children())
    if leaf_model:                                  # a single layer: it is its own only row
        names[id(model)] = type(model).__name__
    records, order = {}, []

    def pre_hook(module, inputs):              # call order: a container before its layers
        key = id(module)
        if key not in records:
            records[key] = {"module": module, "macs": 0, "calls": 0, "output_shape": None, "out_bytes": 0}
            order.append(key)

    def hook(module, inputs, output):
        r = records[id(module)]
        r["calls"] += 1
        r["macs"] += layer_macs(module, inputs, output) if not any(True for _ in module.children()) else 0
        if hasattr(output, "shape"):
            r["output_shape"] = tuple(output.shape)
            r["out_bytes"] += int(np.prod(output.shape)) * np.dtype(output.dtype).itemsize

    inner = [m for _, m in model.named_modules() if m is not model or leaf_model]
    handles = [m.register_forward_pre_hook(pre_hook) for m in inner] + \
              [m.register_forward_hook(hook) for m in inner]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with mc.no_grad():
            model(mc.tensor(np.zeros(input_size), dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            object.__setattr__(m, "training", mode)

    seen = set()
    rows = []
    activation_bytes = 0
    for key in order:
        r = records[key]
        m = r["module"]
        leaf = not any(True for _ in m.children())
        own = [p for _, p in m.named_parameters(recurse=False)]
        fresh = [p for p in own if id(p) not in seen]
        seen.update(id(p) for p in own)
        if leaf:
            activation_bytes += r["out_bytes"]
        rows.append({"name": names.get(key, "?"), "type": type(m).__name__, "output_shape": r["output_shape"],
                     "params": sum(p.numel() for p in fresh),
                     "trainable": sum(p.numel() for p in fresh if p.requires_grad),
                     "macs": r["macs"], "calls": r["calls"], "shared": bool(own) and not fresh, "leaf": leaf})
    buffers = list(model.buffers())
    params = list(model.parameters())       # again: lazy layers (nn.LazyLinear) create theirs in the forward
    return Summary(rows, input_size,
                   total_params=sum(p.numel() for p in params),
                   trainable_params=sum(p.numel() for p in params if p.requires_grad),
                   param_bytes=sum(p.numel() * np.dtype(p.dtype).itemsize for p in params),
                   buffer_bytes=sum(int(np.prod(b.shape)) * np.dtype(b.dtype).itemsize for b in buffers),
                   activation_bytes=activation_bytes, dtype=dtype)
