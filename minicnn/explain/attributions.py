"""Attributions: which input pixels (or which regions) a prediction depends on.

The definitions are Captum's, so numbers agree with what practitioners use:

* :func:`saliency` — ``|∂y_t/∂x|`` (Simonyan et al., 2014): the gradient of the
  target's logit with respect to the input.
* :func:`smoothgrad` — the mean saliency over noisy copies ``x + N(0, σ²)``,
  σ = ``noise`` · (max(x) − min(x)) (Smilkov et al., 2017).
* :func:`integrated_gradients` — ``(x − x′) · (1/m) Σ_k ∂y_t/∂x (x′ + (k − ½)/m · (x − x′))``
  (Sundararajan et al., 2017; midpoint rule with m = ``steps``), and the
  *completeness gap* ``Σ attributions − (y_t(x) − y_t(x′))`` — Captum's
  convergence delta: zero for the exact integral, so it shows whether
  ``steps`` is enough.
* :func:`grad_cam` — ``ReLU(Σ_k α_k A_k)``, ``α_k`` = the spatial mean of
  ``∂y_t/∂A_k``, at a conv layer's output ``A`` (Selvaraju et al., 2017); by
  default the **last** conv layer: the deepest one that still has a spatial
  map, so the most class-specific. :func:`upsample` scales the map to the
  image (bilinear) for an overlay.
* :func:`occlusion` — slide a window over the image, replace it by a
  baseline, and record the drop of the target's logit; each pixel gets the
  mean drop over the windows that cover it (Zeiler & Fergus, 2014).

``y_t`` is always the target class's **logit** (the model's output), as in
Captum. The model is run in eval mode and left as it was found (mode,
``requires_grad`` flags, ``.grad``). Inputs are (N, C, H, W) in the model's
input units — pixel units [0, 1] when the model carries its ``nn.Normalize``
(``models.with_normalize``), which is what baselines such as "black image = 0"
assume. ``target``: an int (every image) or one class per image.
Attributions come back as Tensors shaped like ``x`` (Grad-CAM: (N, h, w)).

:func:`rank_correlation` (Spearman's ρ) is the measure of the model
randomisation sanity check (Adebayo et al., 2018): a method whose maps for a
trained model and for the same network with random weights are highly
correlated explains the architecture, not what was learned.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..nn.utils.freeze import frozen
from ..io import to_numpy
from ..backend import current, to_device, to_host
from ..autograd.tensor import Tensor, no_grad

__all__ = ["saliency", "smoothgrad", "integrated_gradients", "grad_cam", "upsample", "occlusion",
           "last_conv_layer", "rank_correlation"]


# -----------------------------------------------------------------------------
# Checks
# -----------------------------------------------------------------------------
def _images(x, who):
    t = x if isinstance(x, Tensor) else Tensor(x)
    if t.ndim != 4:
        raise ValueError(f"{who}: expected images (N, C, H, W), got shape {t.shape}")
    if t.dtype.kind != "f":
        raise TypeError(f"{who}: expected floating-point images, got dtype {t.dtype}")
    return t


def _logits(model, x, who, shape=None):
    """Forward pass with a clear error when the model cannot take images of this size."""
    try:
        return model(x)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"{who}: the model cannot take images of shape {tuple(shape or x.shape)} "
                         f"({str(e).splitlines()[0]})") from e


def _targets(target, n, num_classes, who):
    t = to_numpy(target)
    if t.dtype.kind not in "iu" or t.ndim > 1:
        raise TypeError(f"{who}: target must be a class index or one per image, got {target!r}")
    t = np.broadcast_to(t.astype(np.int64).reshape(-1), (n,)) if t.size == 1 else t.astype(np.int64)
    if t.shape != (n,):
        raise ValueError(f"{who}: expected one target per image ({n}), got {t.size}")
    if t.min() < 0 or t.max() >= num_classes:
        raise ValueError(f"{who}: target class must be in [0, {num_classes - 1}], got "
                         f"{t.min() if t.min() < 0 else t.max()}")
    return t


def _one_hot(t, k, dtype):
    m = np.zeros((len(t), k), dtype=dtype)
    m[np.arange(len(t)), t] = 1
    return to_device(m)


def _target_gradient(model, x_data, t, who):
    """(∂ Σ_i y_{t_i}(x_i) / ∂x, logits) as backend arrays: one backward gives every image its own gradient."""
    xt = Tensor(x_data, requires_grad=True, dtype=x_data.dtype)
    out = _logits(model, xt, who)
    (out * Tensor(_one_hot(t, out.shape[1], out.dtype), dtype=out.dtype)).sum().backward()
    return xt.grad.array, out.array


def _prepare(model, x, target, who):
    x = _images(x, who)
    with no_grad():
        k = _logits(model, Tensor(x.array[:1], dtype=x.dtype), who, x.shape).shape[1]
    return x, _targets(target, x.shape[0], k, who)


# -----------------------------------------------------------------------------
# Gradient methods
# -----------------------------------------------------------------------------
def saliency(model, x, target, abs=True):
    """∂y_target/∂x, shape of ``x``; its absolute value with ``abs=True`` (Captum's default)."""
    with frozen(model):
        x, t = _prepare(model, x, target, "saliency")
        g, _ = _target_gradient(model, x.array, t, "saliency")
    g = current.xp.abs(g) if abs else g
    return Tensor(g, dtype=x.dtype)


def smoothgrad(model, x, target, noise=0.15, samples=25, seed=None, abs=True):
    """Mean saliency over ``samples`` copies ``x + N(0, σ²)``, σ = ``noise`` · (max x − min x) per image.

    Noise is drawn with ``np.random.default_rng(seed)`` (``None``: the framework's generator).
    """
    if not isinstance(samples, numbers.Integral) or samples < 1:
        raise ValueError(f"smoothgrad: samples must be an int >= 1, got {samples!r}")
    if not noise >= 0:
        raise ValueError(f"smoothgrad: noise must be >= 0 (a fraction of the input range), got {noise}")
    from .. import rng as _rng
    gen = np.random.default_rng(seed) if seed is not None else _rng.generator()
    xp = current.xp
    with frozen(model):
        x, t = _prepare(model, x, target, "smoothgrad")
        host = to_host(x.array)
        span = (host.max(axis=(1, 2, 3)) - host.min(axis=(1, 2, 3))).reshape(-1, 1, 1, 1)
        total = xp.zeros_like(x.array)
        for _ in range(int(samples)):
            eps = to_device((gen.standard_normal(host.shape) * (noise * span)).astype(host.dtype))
            g, _ = _target_gradient(model, x.array + eps, t, "smoothgrad")
            total = total + (xp.abs(g) if abs else g)
    return Tensor(total / samples, dtype=x.dtype)


def integrated_gradients(model, x, target, baseline=None, steps=50, internal_batch_size=64):
    """``(attributions, completeness_gap)``.

    attributions = ``(x − x′) · mean_k ∂y_t/∂x at x′ + (k − ½)/steps · (x − x′)``,
    k = 1..steps (the midpoint rule for the path integral); ``baseline`` x′ is
    zeros (a black image in pixel units) by default, or a number or an array
    shaped like ``x``. completeness_gap (a host array, one per image) =
    ``Σ attributions − (y_t(x) − y_t(x′))``: it tends to 0 as ``steps`` grows.
    The path points go through the model ``internal_batch_size`` images at a
    time (Captum's name), which changes the speed, not the result.
    """
    if not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"integrated_gradients: steps must be an int >= 1, got {steps!r}")
    xp = current.xp
    with frozen(model):
        x, t = _prepare(model, x, target, "integrated_gradients")
        if baseline is None:
            base = xp.zeros_like(x.array)
        else:
            b = baseline.array if isinstance(baseline, Tensor) else baseline
            base = xp.broadcast_to(to_device(np.asarray(to_host(b), dtype=x.dtype)), x.shape).astype(x.dtype)
        diff = x.array - base
        total = xp.zeros_like(x.array)
        n = x.shape[0]
        per_pass = max(1, internal_batch_size // n)          # path points evaluated in one batch
        for k0 in range(0, int(steps), per_pass):
            alphas = [(k + 0.5) / steps for k in range(k0, min(int(steps), k0 + per_pass))]
            points = xp.concatenate([base + a * diff for a in alphas]).astype(x.dtype)
            g, _ = _target_gradient(model, points, np.tile(t, len(alphas)), "integrated_gradients")
            total = total + g.reshape(len(alphas), *x.shape).sum(axis=0)
        attributions = diff * (total / steps)
        with no_grad():
            rows = np.arange(len(t))
            fx = to_host(model(x).array)[rows, t]
            fb = to_host(model(Tensor(base, dtype=x.dtype)).array)[rows, t]
    gap = to_host(attributions.reshape(len(t), -1).sum(axis=1)).astype(np.float64) - (fx - fb)
    return Tensor(attributions, dtype=x.dtype), gap


# -----------------------------------------------------------------------------
# Grad-CAM
# -----------------------------------------------------------------------------
def last_conv_layer(model):
    """(name, module) of the last ``nn.Conv2d`` in ``model.named_modules()`` order."""
    from ..nn import Conv2d
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, Conv2d)]
    if not convs:
        raise ValueError(f"grad_cam: {type(model).__name__} has no Conv2d layer; pass layer=")
    return convs[-1]


def find_layer(model, layer):
    if layer is None:
        return last_conv_layer(model)
    named = list(model.named_modules())
    if isinstance(layer, str):
        for n, m in named:
            if n == layer:
                return n, m
        convs = [n for n, m in named if type(m).__name__ == "Conv2d"]
        raise ValueError(f"grad_cam: no layer named {layer!r} in the model; its conv layers are: "
                         f"{', '.join(convs) or '(none)'}")
    for n, m in named:
        if m is layer:
            return n, m
    raise ValueError(f"grad_cam: the layer {type(layer).__name__} given is not part of the model")


def grad_cam(model, x, target, layer=None):
    """Grad-CAM maps ``ReLU(Σ_k α_k A_k)`` at ``layer``'s output A (N, K, h, w): a Tensor (N, h, w).

    ``α_k = mean_{i,j} ∂y_t/∂A_k[i, j]``. ``layer``: a module of ``model``, its
    dotted name from ``named_modules()`` (e.g. ``"3"`` or ``"1.3"``), or None for
    the last conv layer. The map has the layer's resolution; :func:`upsample`
    brings it to the image's. Captured with a forward hook (removed after).
    """
    name, module = find_layer(model, layer)
    xp = current.xp
    captured = {}

    def hook(mod, inputs, output):
        if output.ndim != 4:
            raise ValueError(f"grad_cam: layer {name!r} ({type(mod).__name__}) outputs shape "
                             f"{output.shape}; Grad-CAM needs a spatial map (N, K, h, w)")
        output.retain_grad()
        captured["A"] = output

    with frozen(model):
        x, t = _prepare(model, x, target, "grad_cam")
        handle = module.register_forward_hook(hook)
        try:
            xt = Tensor(x.array, requires_grad=True, dtype=x.dtype)
            out = _logits(model, xt, "grad_cam")
        finally:
            handle.remove()
        if "A" not in captured:
            raise ValueError(f"grad_cam: layer {name!r} was not called in the forward pass")
        (out * Tensor(_one_hot(t, out.shape[1], out.dtype), dtype=out.dtype)).sum().backward()
        a = captured["A"]
        dA = a.grad.array if a.grad is not None else xp.zeros_like(a.array)
        alpha = dA.mean(axis=(2, 3), keepdims=True)                 # (N, K, 1, 1)
        cam = xp.maximum((alpha * a.array).sum(axis=1), 0)           # (N, h, w)
    return Tensor(cam.astype(x.dtype), dtype=x.dtype)


def upsample(maps, size):
    """Bilinear resize of (N, h, w) or (h, w) maps to ``size`` = (H, W); PyTorch's
    ``F.interpolate(mode="bilinear", align_corners=False)``. A host NumPy array."""
    a = np.asarray(to_numpy(maps), dtype=np.float64)
    squeeze = a.ndim == 2
    a = a[None] if squeeze else a
    if a.ndim != 3:
        raise ValueError(f"upsample: expected maps (N, h, w) or (h, w), got shape {a.shape}")
    H, W = size
    h, w = a.shape[1:]

    def coords(n_out, n_in):
        c = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5        # align_corners=False
        c = np.clip(c, 0, n_in - 1)
        i0 = np.floor(c).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, c - i0

    r0, r1, fr = coords(H, h)
    c0, c1, fc = coords(W, w)
    top = a[:, r0][:, :, c0] * (1 - fc) + a[:, r0][:, :, c1] * fc
    bottom = a[:, r1][:, :, c0] * (1 - fc) + a[:, r1][:, :, c1] * fc
    out = top * (1 - fr)[:, None] + bottom * fr[:, None]
    return out[0] if squeeze else out


# -----------------------------------------------------------------------------
# Occlusion
# -----------------------------------------------------------------------------
def occlusion(model, x, target, window=(4, 4), stride=2, baseline=0.0):
    """The drop ``y_t(x) − y_t(x with the window set to baseline)``, averaged per pixel over covering windows.

    ``window`` (h, w) and ``stride`` (an int or a pair) are in pixels; the
    window covers every channel. Windows start at 0, stride, 2·stride, ... and
    the last one is placed to end at the border, so every pixel is covered.
    """
    def pair(v, what):
        v = (v, v) if isinstance(v, numbers.Integral) else tuple(v)
        if len(v) != 2 or any((not isinstance(i, numbers.Integral)) or i < 1 for i in v):
            raise ValueError(f"occlusion: {what} must be a positive int or a pair, got {v!r}")
        return v

    (wh, ww), (sh, sw) = pair(window, "window"), pair(stride, "stride")
    with frozen(model):
        x, t = _prepare(model, x, target, "occlusion")
        n, _, H, W = x.shape
        if wh > H or ww > W:
            raise ValueError(f"occlusion: window {wh}x{ww} is larger than the image {H}x{W}")
        rows = np.arange(n)
        with no_grad():
            base_score = to_host(model(x).array)[rows, t]
            total = np.zeros((n, H, W))
            count = np.zeros((H, W))

            def starts(size, win, step):
                s = list(range(0, size - win + 1, step))
                return s if s[-1] == size - win else s + [size - win]

            for i in starts(H, wh, sh):
                for j in starts(W, ww, sw):
                    xo = x.array.copy()
                    xo[:, :, i:i + wh, j:j + ww] = baseline
                    drop = base_score - to_host(model(Tensor(xo, dtype=x.dtype)).array)[rows, t]
                    total[:, i:i + wh, j:j + ww] += drop[:, None, None]
                    count[i:i + wh, j:j + ww] += 1
        att = np.broadcast_to((total / count)[:, None], x.shape).astype(x.dtype)
    return Tensor(np.ascontiguousarray(att), dtype=x.dtype)     # to the active backend


# -----------------------------------------------------------------------------
# Sanity check measure
# -----------------------------------------------------------------------------
def rank_correlation(a, b):
    """Spearman's rank correlation of two maps (flattened; ties get their mean rank)."""
    def ranks(v):
        v = np.asarray(to_numpy(v), dtype=np.float64).ravel()
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=r)
        return (sums / counts)[inv]
    ra, rb = ranks(a), ranks(b)
    if ra.shape != rb.shape:
        raise ValueError(f"rank_correlation: maps of different sizes ({ra.size} and {rb.size})")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0
