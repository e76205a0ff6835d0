"""Plots for training runs and trained networks, written to PNG files.

Every function draws one figure, writes it to ``path`` and returns ``path``:

* :func:`plot_history`            loss / accuracy (/ learning-rate) curves, train vs validation
* :func:`plot_confusion_matrix`   the confusion matrix as a heat map with the counts written in
* :func:`plot_misclassified`      a grid of the images the model got wrong
* :func:`plot_images`             a grid of images with their labels
* :func:`plot_filters`            the first conv layer's filters, one small image each
* :func:`plot_feature_maps`       what each conv / activation / pool layer makes of one image
* :func:`plot_roc_curves`         one-vs-rest ROC curves with their AUC
* :func:`plot_robust_accuracy`    accuracy vs the attack's ε (with the gradient-masking baselines)
* :func:`plot_adversarial_gallery` clean / perturbation / adversarial images with predictions
* :func:`plot_attributions`       attribution maps (saliency, IG, Grad-CAM, ...) overlaid on the image

Two choices worth knowing about:

* Figures are drawn with matplotlib's **Agg** renderer (``FigureCanvasAgg``)
  on a bare ``matplotlib.figure.Figure`` -- pyplot is never imported. So the
  module runs on machines with no display, never opens a window, never
  changes the pyplot backend of the program that imports it (a notebook's
  inline plots keep working), and leaves no figures open in pyplot's
  registry. To look at a result in a notebook: ``IPython.display.Image(path)``.
* Files are written **atomically**: the PNG goes to a temporary file in the
  target folder, which then replaces ``path`` in one ``os.replace``. A
  failure part way leaves neither a half-written PNG nor the temporary file,
  and an existing file at ``path`` is untouched.

Images are NCHW like everything else in minicnn: (N, C, H, W) with C = 1
(grey) or 3 (colour), or (N, H, W). Each image is rescaled to [0, 1] on its
own (min-max) for display, so normalised inputs show correctly.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import metrics as _metrics
from ..io import atomic_write, to_numpy
from ..autograd.tensor import Tensor, no_grad

__all__ = [
    "plot_history", "plot_confusion_matrix", "plot_misclassified", "plot_images",
    "plot_filters", "plot_feature_maps", "plot_roc_curves",
    "plot_robust_accuracy", "plot_adversarial_gallery", "plot_attributions",
]

# Layer types whose outputs plot_feature_maps shows by default (matched by
# class name so that this module needs nothing from minicnn.nn at import).
FEATURE_MAP_LAYERS = (
    "Conv2d",
    "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "SiLU", "Mish", "GELU",
    "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
)


# ----------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------
def save_figure(fig: Figure, path, dpi: int = 100) -> str:
    """Write ``fig`` to ``path`` as a PNG, atomically (``minicnn.io.atomic_write``); return ``path``."""
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        raise ValueError(f"plots are saved as PNG: expected a path ending in .png, got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save plot to {path!r}: the folder {folder!r} does not "
                                "exist (create it first, e.g. os.makedirs(folder, exist_ok=True))")
    FigureCanvasAgg(fig)                       # render with Agg (no display needed)
    try:
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
    except OSError as e:
        # same exception type (PermissionError, ...), with the path in the message
        raise type(e)(f"cannot save plot to {path!r}: {e.strerror or e}") from e
    return path


def _remove_quietly(filename):
    try:
        os.remove(filename)
    except FileNotFoundError:
        pass


# ----------------------------------------------------------------------------
# Small helpers: host arrays, images, grids
# ----------------------------------------------------------------------------
def _image_batch(images, name="images") -> np.ndarray:
    """(N, C, H, W) or (N, H, W) -> (N, C, H, W) float64 host array, C in {1, 3}."""
    a = to_numpy(images)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or a.shape[1] not in (1, 3):
        raise ValueError(f"{name} must be (N, 1, H, W), (N, 3, H, W) or (N, H, W), got shape {a.shape}")
    return a.astype(np.float64)


def _rescale(x: np.ndarray) -> np.ndarray:
    """Min-max rescale to [0, 1]; a constant array becomes 0.5 (mid grey)."""
    lo, hi = np.nanmin(x), np.nanmax(x)
    if not np.isfinite(lo) or not np.isfinite(hi) or hi == lo:
        return np.full(x.shape, 0.5)
    return (x - lo) / (hi - lo)


def _show_image(ax, chw: np.ndarray):
    """Draw one (C, H, W) image (C = 1 or 3) rescaled to [0, 1], without axes."""
    img = _rescale(chw)
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")   # (H, W, 3)
    ax.set_xticks([])
    ax.set_yticks([])


def _grid(fig_or_subfig, n: int, ncols: int | None = None):
    """A grid of at least ``n`` axes, row-major; the unused ones are hidden."""
    ncols = ncols or max(1, math.ceil(math.sqrt(n)))
    ncols = min(ncols, max(n, 1))
    nrows = max(1, math.ceil(n / ncols))
    axes = np.atleast_1d(fig_or_subfig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_axis_off()
    return axes[:n]


def _grid_figure(n: int, ncols: int | None = None, cell: float = 1.6, title_space: float = 0.6):
    ncols = ncols or max(1, math.ceil(math.sqrt(n)))
    ncols = min(ncols, max(n, 1))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(max(3.0, cell * ncols), cell * nrows + title_space), layout="constrained")
    return fig, _grid(fig, n, ncols)


def _class_name(class_names, c) -> str:
    return str(c) if class_names is None else str(class_names[int(c)])


def _label_vector(x, name, n) -> np.ndarray:
    """Check that ``x`` is a vector of n labels (one per image) and return it."""
    a = to_numpy(x)
    if a.ndim != 1 or len(a) != n:
        raise ValueError(f"{name} must be a vector of one label per image: expected shape ({n},), "
                         f"got shape {a.shape}")
    return a


# ----------------------------------------------------------------------------
# Training curves
# ----------------------------------------------------------------------------
def _curve_values(values, key) -> np.ndarray:
    """A list of numbers (None for a missing epoch) -> float array with NaN gaps."""
    try:
        return np.array([np.nan if v is None else float(to_numpy(v)) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"history[{key!r}] must be a list of numbers, got {values!r:.80}") from e


def plot_history(history: Mapping, path, title: str | None = None) -> str:
    """Learning curves from a dict of per-epoch lists; one panel per quantity.

    Keys ending in ``loss`` go in the loss panel, keys ending in ``acc`` or
    ``accuracy`` in the accuracy panel, and ``lr`` in a learning-rate panel
    (log scale), e.g. ``{"train_loss": [...], "val_loss": [...],
    "train_acc": [...], "val_acc": [...], "lr": [...]}``. Epochs are numbered
    from 1. Training curves are solid, validation (``val_...``) dashed, and the
    best validation epoch (lowest loss, highest accuracy) is marked: a gap
    between the train and val curves that grows is overfitting.
    """
    if not isinstance(history, Mapping):
        raise TypeError(f"history must be a dict of lists, got {type(history).__name__}")
    panels = {"loss": [], "accuracy": [], "learning rate": []}
    for key, values in history.items():
        k = str(key).lower()
        if k.endswith("loss"):
            panels["loss"].append(key)
        elif k.endswith("acc") or k.endswith("accuracy"):
            panels["accuracy"].append(key)
        elif k == "lr" or k.endswith("_lr") or k == "learning_rate":
            panels["learning rate"].append(key)
    panels = {name: [k for k in keys if len(history[k])] for name, keys in panels.items()}
    panels = {name: keys for name, keys in panels.items() if keys}
    if not panels:
        raise ValueError("history has no non-empty curve to plot: expected keys such as "
                         f"'train_loss', 'val_loss', 'train_acc', 'val_acc', 'lr'; got {list(history)}")

    fig = Figure(figsize=(4.6 * len(panels), 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, keys) in zip(axes, panels.items()):
        for key in keys:
            y = _curve_values(history[key], key)
            epochs = np.arange(1, len(y) + 1)
            is_val = str(key).lower().startswith(("val", "valid", "test"))
            line, = ax.plot(epochs, y, "--" if is_val else "-", marker="." if len(y) <= 30 else None,
                            label=str(key))
            if is_val and panel != "learning rate" and np.isfinite(y).any():
                best = int(np.nanargmin(y) if panel == "loss" else np.nanargmax(y))
                ax.plot(epochs[best], y[best], "o", color=line.get_color(), markersize=8,
                        markerfacecolor="none", label=f"best {key}: {y[best]:.4g} (epoch {best + 1})")
        ax.set_title(panel)
        ax.set_xlabel("epoch")
        ax.set_ylabel(panel)
        if panel == "learning rate":
            positive = [v for k in keys for v in _curve_values(history[k], k) if v > 0]
            if positive:
                ax.set_yscale("log")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------
# Confusion matrix
# ----------------------------------------------------------------------------
def plot_confusion_matrix(cm, class_names, path, normalize: bool = False,
                          title: str | None = None) -> str:
    """Heat map of a confusion matrix (rows = true class, columns = predicted).

    ``cm`` is a (K, K) count matrix (see :func:`minicnn.train.metrics.confusion_matrix`);
    ``class_names`` a list of K names, or None for 0..K-1. With ``normalize=True``
    every row is divided by its sum, so the diagonal shows each class's recall
    (a row with no samples stays 0); each cell then shows the fraction with
    the count below it. Counts are written in every cell up to K = 30
    (an empty cell shows a light grey 0).
    """
    counts = to_numpy(cm)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ValueError(f"cm must be a square (K, K) matrix, got shape {counts.shape}")
    k = counts.shape[0]
    if class_names is None:
        class_names = [str(i) for i in range(k)]
    class_names = [str(c) for c in class_names]
    if len(class_names) != k:
        raise ValueError(f"class_names has {len(class_names)} names but cm is {k}x{k}")
    counts = counts.astype(np.float64)
    shown = counts
    if normalize:
        row_sums = counts.sum(axis=1, keepdims=True)
        shown = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums != 0)

    side = min(max(4.5, 0.6 * k + 2.5), 16)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(shown.max(), 1))
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of true class" if normalize else "count")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    if max(map(len, class_names)) > 3:       # long names: slant them so they do not overlap
        ax.set_xticklabels(class_names, rotation=45, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticklabels(class_names)
    ax.set_yticklabels(class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 30:
        threshold = (1.0 if normalize else max(shown.max(), 1)) / 2
        fontsize = 10 if k <= 10 else 7 if k <= 20 else 5
        for i in range(k):
            for j in range(k):
                if counts[i, j] == 0:            # empty cells: a quiet 0, less clutter
                    text, color = "0", "lightgrey"
                else:
                    text = (f"{shown[i, j]:.2f}\n({int(counts[i, j])})" if normalize
                            else f"{int(counts[i, j])}")
                    color = "white" if shown[i, j] > threshold else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=color)
    total = counts.sum()
    acc = np.trace(counts) / total if total else 0.0
    ax.set_title(title or f"confusion matrix ({'row-normalised, ' if normalize else ''}"
                          f"accuracy {acc:.2%}, N = {int(total)})")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------
# Image grids
# ----------------------------------------------------------------------------
def plot_images(images, labels, path, class_names=None, max_images: int = 25,
                ncols: int | None = None, title: str | None = None) -> str:
    """A grid of the first ``max_images`` images, each titled with its label.

    ``images`` is (N, C, H, W) or (N, H, W); ``labels`` (N,) class indices, or
    None for no titles; ``class_names`` maps an index to a name.
    """
    imgs = _image_batch(images)
    n = min(len(imgs), max_images)
    if n == 0:
        raise ValueError("images is empty: nothing to plot")
    labels = None if labels is None else _label_vector(labels, "labels", len(imgs))
    fig, axes = _grid_figure(n, ncols)
    for i, ax in enumerate(axes):
        _show_image(ax, imgs[i])
        if labels is not None:
            ax.set_title(_class_name(class_names, labels[i]), fontsize=9)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_misclassified(images, true, pred, path, max_images: int = 25, probs=None,
                       class_names=None, title: str | None = None) -> str:
    """A grid of (up to ``max_images`` of) the images whose prediction is wrong.

    ``images`` (N, C, H, W) or (N, H, W), ``true`` and ``pred`` (N,) class
    indices for the same N images -- typically a whole test set. Each image is
    titled "true -> pred"; with ``probs`` (N, K) (softmax outputs) the
    probability the model gave its wrong answer is added: a confident mistake
    is worth a closer look (a mislabelled example, or a real blind spot).
    When nothing is misclassified the figure says so.
    """
    imgs = _image_batch(images)
    true = _label_vector(true, "true", len(imgs)).astype(np.int64)
    pred = _label_vector(pred, "pred", len(imgs)).astype(np.int64)
    if probs is not None:
        probs = to_numpy(probs)
        if probs.ndim != 2 or len(probs) != len(imgs):
            raise ValueError(f"probs must be (N, K) with N = {len(imgs)} images, got shape {probs.shape}")
        if pred.size and pred.max() >= probs.shape[1]:
            raise ValueError(f"pred has class {pred.max()} but probs has only {probs.shape[1]} columns")
    wrong = np.flatnonzero(true != pred)
    header = f"misclassified: {len(wrong)} of {len(imgs)}"
    if len(wrong) == 0:
        fig = Figure(figsize=(4, 2), layout="constrained")
        ax = fig.subplots()
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"no misclassified images\n(all {len(imgs)} correct)",
                ha="center", va="center", fontsize=12)
        return save_figure(fig, path)
    shown = wrong[:max_images]
    fig, axes = _grid_figure(len(shown), title_space=0.8)
    for ax, i in zip(axes, shown):
        _show_image(ax, imgs[i])
        text = f"{_class_name(class_names, true[i])} \u2192 {_class_name(class_names, pred[i])}"
        if probs is not None:
            text += f" ({probs[i, pred[i]]:.2f})"
        ax.set_title(text, fontsize=8, color="darkred")
    fig.suptitle(title or f"{header} (true \u2192 predicted"
                          f"{', p(predicted)' if probs is not None else ''})", fontsize=10)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------
# What the network learned
# ----------------------------------------------------------------------------
def plot_filters(weight, path, max_filters: int = 64, title: str | None = None) -> str:
    """The filters of a conv layer, one small image each, each rescaled on its own.

    ``weight`` is a (Cout, Cin, kh, kw) array or Tensor, or a Conv2d layer
    (its ``.weight`` is used). With Cin = 1 each filter is a grey image, with
    Cin = 3 a colour image; for other Cin (deeper layers) every (filter,
    input channel) slice gets its own grey tile, titled ``out.in``. Each tile
    is min-max rescaled, so it shows the filter's *pattern*, not its scale:
    first-layer filters of a trained network look like edge and blob
    detectors; random ones look like noise.
    """
    w = getattr(weight, "weight", weight)          # a Conv2d layer, or the weight itself
    w = to_numpy(w).astype(np.float64)
    if w.ndim != 4:
        raise ValueError(f"weight must be a conv weight (Cout, Cin, kh, kw), got shape {w.shape}")
    cout, cin, kh, kw = w.shape
    if cin in (1, 3):
        tiles = [(str(o), w[o]) for o in range(cout)]
    else:
        tiles = [(f"{o}.{i}", w[o, i:i + 1]) for o in range(cout) for i in range(cin)]
    n = min(len(tiles), max_filters)
    fig, axes = _grid_figure(n, ncols=cin if cin not in (1, 3) and cin <= 16 else None, cell=1.0)
    for ax, (name, tile) in zip(axes, tiles[:n]):
        _show_image(ax, tile)
        ax.set_title(name, fontsize=7)
    shown = f" (first {n} of {len(tiles)})" if n < len(tiles) else ""
    fig.suptitle(title or f"conv filters {cout}\u00d7{cin}\u00d7{kh}\u00d7{kw}{shown}", fontsize=10)
    return save_figure(fig, path)


def _leaf_layers(model, prefix=""):
    """(dotted name, layer) in order, looking inside nested Sequential / ModuleList."""
    from ..nn.containers import ModuleList, Sequential
    for name, child in model.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, (Sequential, ModuleList)):
            yield from _leaf_layers(child, full)
        else:
            yield full, child


def plot_feature_maps(model, image, path, layers=None, max_channels: int = 16,
                      title: str | None = None) -> str:
    """Run one image through ``model`` and show each layer's output channels.

    ``image`` is (1, C, H, W) or (C, H, W). The model is walked child by child
    (``model.named_children()``, entering nested Sequentials), feeding each
    layer's output to the next -- so it must be Sequential-like: its forward
    calls its children in the order they were assigned. The walk stops after
    the last requested layer or when an output is no longer an image
    (N, C, H, W), e.g. at Flatten.

    ``layers``: dotted names of the layers to show (``["0", "features.2"]``);
    default: every Conv2d, activation and pooling layer up to the first layer
    whose output is not an image (e.g. Flatten). Each shown layer gets
    one row block with up to ``max_channels`` channels, each coloured on its
    own scale (yellow = strongest response). Runs under ``no_grad`` and in
    eval mode (dropout off, batch norm's running statistics); each module's
    train/eval mode is restored afterwards.
    """
    x = to_numpy(image)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"image must be one image (1, C, H, W) or (C, H, W), got shape {x.shape}")
    leaves = list(_leaf_layers(model))
    if not leaves:
        raise ValueError(f"{type(model).__name__} has no child layers to walk through "
                         "(expected an nn.Sequential-like model)")
    names = [name for name, _ in leaves]
    if layers is not None:
        wanted = [str(name) for name in ([layers] if isinstance(layers, (str, int)) else layers)]
        unknown = [name for name in wanted if name not in names]
        if unknown:
            raise ValueError(f"unknown layer name(s) {unknown}; the model's layers are {names}")
    else:
        wanted = [name for name, layer in leaves if type(layer).__name__ in FEATURE_MAP_LAYERS]
        if not wanted:
            raise ValueError(f"no Conv2d, activation or pooling layer among {names}; pass layers=")
    wanted = set(wanted)

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    captured = []                            # (title, (C, H, W) host array)
    stopped_at = None                        # the layer whose output is no longer an image
    try:
        dtype = next(iter(model.parameters()), None)
        dtype = np.float32 if dtype is None else dtype.dtype
        out = Tensor(x, dtype=dtype)
        with no_grad():
            for name, layer in leaves:
                if not wanted:
                    break
                out = layer(out)
                if out.ndim != 4:
                    if name in wanted:
                        raise ValueError(f"layer {name} ({type(layer).__name__}) outputs shape "
                                         f"{tuple(out.shape)}, not an image (N, C, H, W)")
                    stopped_at = f"{name} ({type(layer).__name__}), whose output {tuple(out.shape)}"
                    break
                if name in wanted:
                    wanted.discard(name)
                    fmap = out.numpy()[0]
                    captured.append((f"{name}: {type(layer).__name__} \u2192 "
                                     f"{fmap.shape[0]}\u00d7{fmap.shape[1]}\u00d7{fmap.shape[2]}", fmap))
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
    if wanted and layers is not None:       # by default, simply stop where the images end
        raise ValueError(f"layer(s) {sorted(wanted)} come after {stopped_at} is no longer an "
                         "image (N, C, H, W); feature maps are shown up to that layer")

    # One block for the input and one per captured layer, each a grid of channels.
    blocks = [("input " + "\u00d7".join(map(str, x.shape[1:])), x[0])] + captured
    ncols = min(8, max_channels)
    rows = [max(1, math.ceil(min(len(fm), max_channels) / ncols)) if i else 1
            for i, (_, fm) in enumerate(blocks)]
    cell = 1.1
    fig = Figure(figsize=(cell * ncols, sum(r * cell + 0.45 for r in rows) + 0.4),
                 layout="constrained")
    subfigs = np.atleast_1d(fig.subfigures(len(blocks), 1, height_ratios=[r + 0.4 for r in rows]))
    for i, (sub, (name, fmap)) in enumerate(zip(subfigs, blocks)):
        if i == 0:                           # the input, as an image (grey or colour)
            ax = sub.subplots()
            if fmap.shape[0] in (1, 3):
                _show_image(ax, fmap)
            else:
                ax.imshow(fmap[0], cmap="gray")
                ax.set_axis_off()
        else:
            c = min(len(fmap), max_channels)
            axes = _grid(sub, c, ncols)
            for ch, ax in enumerate(axes):
                ax.imshow(fmap[ch], cmap="viridis", interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
            if c < len(fmap):
                name += f"  (first {c} of {len(fmap)} channels)"
        sub.suptitle(name, fontsize=9)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------
# ROC curves
# ----------------------------------------------------------------------------
def plot_roc_curves(fpr_tpr_by_class: Mapping, path, class_names=None,
                    title: str | None = None) -> str:
    """One ROC curve per class, with its area (AUC) in the legend.

    ``fpr_tpr_by_class`` maps a class to ``(fpr, tpr)`` or ``(fpr, tpr,
    thresholds)`` -- exactly what :func:`minicnn.train.metrics.roc_curves_ovr`
    returns. The dotted diagonal is a classifier that guesses (AUC 0.5); the
    closer a curve hugs the top-left corner, the better.
    """
    if not isinstance(fpr_tpr_by_class, Mapping) or not fpr_tpr_by_class:
        raise ValueError("fpr_tpr_by_class must be a non-empty dict {class: (fpr, tpr)}, "
                         f"got {type(fpr_tpr_by_class).__name__}")
    fig = Figure(figsize=(6.2, 5.2), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance (AUC = 0.5)")
    areas = []
    for c, curve in fpr_tpr_by_class.items():
        if not isinstance(curve, (tuple, list)) or len(curve) not in (2, 3):
            raise ValueError(f"fpr_tpr_by_class[{c!r}] must be (fpr, tpr) or (fpr, tpr, thresholds)")
        fpr, tpr = to_numpy(curve[0]), to_numpy(curve[1])
        area = _metrics.auc(fpr, tpr)
        areas.append(area)
        name = class_names[c] if class_names is not None else f"class {c}"
        ax.plot(fpr, tpr, label=f"{name} (AUC = {area:.3f})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (FP / negatives)")
    ax.set_ylabel("true positive rate (TP / positives)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small" if len(areas) <= 10 else "x-small")
    ax.set_title(title or f"ROC curves, one vs rest (macro AUC = {np.mean(areas):.3f})")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------
# Robustness and attributions (minicnn.attacks, minicnn.explain)
# ----------------------------------------------------------------------------
def plot_robust_accuracy(result, path, title: str | None = None) -> str:
    """Accuracy against the attack's ε (pixel units), one curve per result.

    ``result``: an ``attacks.RobustAccuracy`` (its FGSM and random-noise
    sanity baselines are drawn too, dashed), a dict ``{label: RobustAccuracy}``
    to compare models or attacks, or a dict with keys ``eps`` and ``accuracy``.
    """
    results = result if isinstance(result, Mapping) and "eps" not in result else {None: result}
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for label, r in results.items():
        get = (lambda k: r.get(k)) if isinstance(r, Mapping) else (lambda k: getattr(r, k, None))
        eps, acc = get("eps"), get("accuracy")
        if eps is None or acc is None or len(eps) != len(acc) or not len(eps):
            raise ValueError("plot_robust_accuracy: expected a RobustAccuracy or a dict with equally long "
                             "'eps' and 'accuracy'")
        name = get("name") or get("attack") or "attack"
        line, = ax.plot(eps, acc, "o-", label=f"{label}: {name}" if label else name)
        for key, style in (("fgsm", "s--"), ("noise", "^:")):
            base = get(key)
            if base is not None and name != key:
                ax.plot(eps, base, style, color=line.get_color(), alpha=0.6,
                        label=f"{label + ': ' if label else ''}{'FGSM' if key == 'fgsm' else 'random ±ε noise'}")
    ax.set_xlabel("ε (L∞ radius, pixel units: images in [0, 1])")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "robust accuracy vs ε")
    return save_figure(fig, path)


def plot_adversarial_gallery(clean, adversarial, true, pred_clean, pred_adv, path, class_names=None,
                             max_images: int = 8, title: str | None = None) -> str:
    """Rows of clean image / perturbation (×10 contrast, centred grey) / adversarial image with predictions.

    ``clean`` and ``adversarial`` (N, C, H, W) in pixel units; the labels (N,).
    The perturbation column shows ``adv − clean`` mapped so that 0 is mid grey.
    """
    c, a = _image_batch(clean, "clean"), _image_batch(adversarial, "adversarial")
    if c.shape != a.shape:
        raise ValueError(f"clean and adversarial images differ in shape: {c.shape} vs {a.shape}")
    n = min(len(c), max_images)
    true = _label_vector(true, "true", len(c)).astype(int)
    pc = _label_vector(pred_clean, "pred_clean", len(c)).astype(int)
    pa = _label_vector(pred_adv, "pred_adv", len(c)).astype(int)
    fig = Figure(figsize=(1.7 * n, 5.6), layout="constrained")
    axes = fig.subplots(3, n, squeeze=False)
    delta = a - c
    scale = max(float(np.abs(delta).max()), 1e-12)
    for j in range(n):
        for row, img in enumerate((c[j], 0.5 + 0.5 * delta[j] / scale, a[j])):
            ax = axes[row, j]
            shown = np.clip(img, 0, 1)
            ax.imshow(shown[0] if shown.shape[0] == 1 else shown.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, j].set_title(f"true {_class_name(class_names, true[j])}\npred {_class_name(class_names, pc[j])}",
                             fontsize=8)
        axes[1, j].set_title(f"‖δ‖∞ = {np.abs(delta[j]).max():.3f}", fontsize=8)
        axes[2, j].set_title(f"pred {_class_name(class_names, pa[j])}", fontsize=8,
                             color="darkred" if pa[j] != true[j] else "darkgreen")
    axes[0, 0].set_ylabel("clean")
    axes[1, 0].set_ylabel("perturbation")
    axes[2, 0].set_ylabel("adversarial")
    fig.suptitle(title or "adversarial examples", fontsize=10)
    return save_figure(fig, path)


def plot_attributions(image, maps, path, title: str | None = None, alpha: float = 0.55) -> str:
    """One image and its attribution maps side by side, each overlaid on the image.

    ``image`` (C, H, W) or (H, W); ``maps`` a dict ``{method: map}`` with maps
    (H, W), (C, H, W) (summed over channels) or a smaller (h, w) map such as
    Grad-CAM's (upsampled bilinearly). Each map is min-max scaled on its own.
    """
    img = to_numpy(image).astype(np.float64)
    img = img[None] if img.ndim == 2 else img
    if img.ndim != 3:
        raise ValueError(f"plot_attributions: image must be (C, H, W) or (H, W), got shape {img.shape}")
    if not isinstance(maps, Mapping) or not maps:
        raise ValueError("plot_attributions: maps must be a non-empty dict {method: map}")
    H, W = img.shape[1:]
    grey = _rescale(img.mean(axis=0))
    fig = Figure(figsize=(2.2 * (len(maps) + 1), 2.6), layout="constrained")
    axes = fig.subplots(1, len(maps) + 1, squeeze=False)[0]
    axes[0].imshow(grey, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("image", fontsize=9)
    for ax, (name, m) in zip(axes[1:], maps.items()):
        m = to_numpy(m).astype(np.float64)
        m = m.sum(axis=0) if m.ndim == 3 else m
        if m.ndim != 2:
            raise ValueError(f"plot_attributions: map {name!r} must be (H, W) or (C, H, W), got shape {m.shape}")
        if m.shape != (H, W):
            from ..explain.attributions import upsample
            m = upsample(m, (H, W))
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
        ax.imshow(_rescale(m), cmap="jet", alpha=alpha, vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
