"""Plots: every function writes a real PNG, atomically, and nothing else."""
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

import minicnn as mc
import minicnn.train.metrics as M
import minicnn.nn as nn
import minicnn.train.viz as V

pytestmark = pytest.mark.tutorial08        # what tutorials/08_*.ipynb teaches (tests/README.md)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_side=100):
    """``path`` is a readable PNG of a sensible size; returns (height, width)."""
    assert os.path.isfile(path)
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    height, width = pixels.shape[:2]
    assert height >= min_side and width >= min_side
    assert pixels.std() > 0                          # not a blank canvas
    return height, width


def assert_only(folder, names):
    """The folder holds exactly these files: no temporary files left behind."""
    assert sorted(os.listdir(folder)) == sorted(names)


HISTORY = {
    "train_loss": [2.3, 1.1, 0.7, 0.5, 0.4],
    "val_loss": [2.0, 1.2, 0.9, 0.8, 0.85],
    "train_acc": [0.2, 0.6, 0.8, 0.85, 0.9],
    "val_acc": [0.25, 0.55, 0.7, 0.75, 0.74],
    "lr": [0.1, 0.1, 0.05, 0.05, 0.025],
}


@pytest.fixture
def images(rng):
    return rng.random((12, 1, 10, 10)).astype(np.float32)


# ----------------------------------------------------------------------------
# Each function writes a PNG and returns its path
# ----------------------------------------------------------------------------
def test_plot_history(tmp_path):
    path = str(tmp_path / "history.png")
    assert V.plot_history(HISTORY, path, title="run 1") == path
    h, w = assert_png(path)
    assert w > 2 * h                                   # three panels side by side
    # only losses, with a missing validation epoch (None): one panel
    only_loss = {"train_loss": [1.0, 0.5, 0.3], "val_loss": [1.1, None, 0.6]}
    _, w1 = assert_png(V.plot_history(only_loss, tmp_path / "loss.png"))
    assert w1 < w
    assert_only(tmp_path, ["history.png", "loss.png"])


def test_plot_history_errors(tmp_path):
    with pytest.raises(ValueError, match="no non-empty curve.*'train_loss'"):
        V.plot_history({"epochs": [1, 2]}, tmp_path / "h.png")
    with pytest.raises(TypeError, match="dict of lists"):
        V.plot_history([0.5, 0.4], tmp_path / "h.png")
    with pytest.raises(TypeError, match=r"history\['val_loss'\] must be a list of numbers"):
        V.plot_history({"val_loss": ["a", "b"]}, tmp_path / "h.png")
    assert_only(tmp_path, [])


def test_plot_confusion_matrix(tmp_path, rng):
    target = rng.integers(0, 4, 60)
    pred = np.where(rng.random(60) < 0.7, target, rng.integers(0, 4, 60))
    cm = M.confusion_matrix(pred, target, 4)
    names = ["cat", "dog", "bird", "fish"]
    assert_png(V.plot_confusion_matrix(cm, names, tmp_path / "cm.png"))
    assert_png(V.plot_confusion_matrix(cm, names, tmp_path / "cm_norm.png", normalize=True))
    # a class with no samples (an all-zero row) normalises to 0, not NaN
    cm[3] = 0
    assert_png(V.plot_confusion_matrix(cm, None, tmp_path / "cm_empty_row.png", normalize=True))
    with pytest.raises(ValueError, match=r"3 names but cm is 4x4"):
        V.plot_confusion_matrix(cm, names[:3], tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"square \(K, K\).*\(2, 3\)"):
        V.plot_confusion_matrix(np.zeros((2, 3)), None, tmp_path / "bad.png")
    assert_only(tmp_path, ["cm.png", "cm_norm.png", "cm_empty_row.png"])


def test_plot_images_and_misclassified(tmp_path, images, rng):
    labels = rng.integers(0, 3, len(images))
    assert_png(V.plot_images(images, labels, tmp_path / "grid.png", class_names=["a", "b", "c"]))
    assert_png(V.plot_images(mc.tensor(images[:, 0]), None, tmp_path / "no_labels.png"))   # (N, H, W)
    colour = rng.normal(size=(5, 3, 8, 8))             # normalised colour images, not in [0, 1]
    assert_png(V.plot_images(colour, np.arange(5), tmp_path / "colour.png"))

    pred = labels.copy()
    pred[[1, 4, 7]] = (pred[[1, 4, 7]] + 1) % 3
    probs = rng.dirichlet(np.ones(3), len(images))
    assert_png(V.plot_misclassified(images, labels, pred, tmp_path / "wrong.png", probs=probs))
    assert_png(V.plot_misclassified(mc.tensor(images), mc.tensor(labels), pred,
                                    tmp_path / "wrong2.png", max_images=2))
    # nothing wrong: still a figure, which says so
    assert_png(V.plot_misclassified(images, labels, labels, tmp_path / "none.png"))

    with pytest.raises(ValueError, match=r"expected shape \(12,\), got shape \(11,\)"):
        V.plot_misclassified(images, labels[:11], pred, tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"probs must be \(N, K\) with N = 12"):
        V.plot_misclassified(images, labels, pred, tmp_path / "bad.png", probs=probs[:5])
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\), \(N, 3, H, W\) or \(N, H, W\).*\(12, 2, 10, 10\)"):
        V.plot_images(np.zeros((12, 2, 10, 10)), labels, tmp_path / "bad.png")
    assert_only(tmp_path, ["grid.png", "no_labels.png", "colour.png", "wrong.png", "wrong2.png",
                           "none.png"])


def test_plot_filters(tmp_path, rng):
    conv = nn.Conv2d(1, 6, 3)
    assert_png(V.plot_filters(conv, tmp_path / "from_layer.png"))                  # a layer
    assert_png(V.plot_filters(conv.weight, tmp_path / "from_weight.png"))          # a Parameter
    assert_png(V.plot_filters(rng.normal(size=(8, 3, 5, 5)), tmp_path / "rgb.png"))  # colour filters
    assert_png(V.plot_filters(rng.normal(size=(3, 4, 3, 3)), tmp_path / "deep.png"))  # Cin = 4
    const = np.zeros((2, 1, 3, 3))                                                  # constant filters
    assert_png(V.plot_filters(const, tmp_path / "const.png"), min_side=50)
    with pytest.raises(ValueError, match=r"\(Cout, Cin, kh, kw\), got shape \(6, 9\)"):
        V.plot_filters(np.zeros((6, 9)), tmp_path / "bad.png")


def test_plot_roc_curves(tmp_path, rng):
    target = rng.integers(0, 3, 80)
    probs = rng.dirichlet(np.ones(3), 80) + np.eye(3)[target]
    curves = M.roc_curves_ovr(probs, target)
    assert_png(V.plot_roc_curves(curves, tmp_path / "roc.png", class_names=["a", "b", "c"]))
    two_tuples = {c: (fpr, tpr) for c, (fpr, tpr, _) in curves.items()}
    assert_png(V.plot_roc_curves(two_tuples, tmp_path / "roc2.png"))
    with pytest.raises(ValueError, match="non-empty dict"):
        V.plot_roc_curves({}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"\(fpr, tpr\) or \(fpr, tpr, thresholds\)"):
        V.plot_roc_curves({0: np.zeros(3)}, tmp_path / "bad.png")


# ----------------------------------------------------------------------------
# Feature maps on a real (tiny) minicnn model
# ----------------------------------------------------------------------------
def tiny_model():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2))


def test_plot_feature_maps_tiny_model(tmp_path, rng):
    model = tiny_model()
    image = rng.random((1, 1, 12, 12)).astype(np.float32)
    path = V.plot_feature_maps(model, image, tmp_path / "fm.png")
    h_all, _ = assert_png(path)
    # a (C, H, W) image and a Tensor work too; choosing one layer gives a shorter figure
    h_one, _ = assert_png(V.plot_feature_maps(model, mc.tensor(image[0]), tmp_path / "fm1.png",
                                              layers=["0"]))
    assert h_one < h_all
    assert mc.is_grad_enabled()                          # no_grad was left again
    assert all(p.grad is None for p in model.parameters())


def test_plot_feature_maps_restores_modes_and_walks_nested_models(tmp_path, rng):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                                          nn.ReLU(), nn.Dropout(0.5), nn.MaxPool2d(2))
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 10))

        def forward(self, x):
            return self.classifier(self.features(x))

    model = Net().train()
    model.classifier.eval()                                  # a mixed state to restore
    image = rng.normal(size=(3, 8, 8))
    assert_png(V.plot_feature_maps(model, image, tmp_path / "net.png", max_channels=4))
    assert model.training and model.features.training and model.features[3].training
    assert not model.classifier.training and not model.classifier[1].training
    assert_png(V.plot_feature_maps(model, image, tmp_path / "net_named.png",
                                   layers=["features.0", "features.4"]))

    with pytest.raises(ValueError, match=r"unknown layer name.*'features\.9'.*features\.0"):
        V.plot_feature_maps(model, image, tmp_path / "bad.png", layers=["features.9"])
    with pytest.raises(ValueError, match=r"\['classifier\.1'\] come after classifier\.0 \(Flatten\), "
                                         r"whose output \(1, 128\) is no longer an image"):
        V.plot_feature_maps(model, image, tmp_path / "bad.png", layers=["classifier.1"])
    with pytest.raises(ValueError, match=r"classifier\.0 \(Flatten\) outputs shape \(1, 128\), "
                                         r"not an image"):
        V.plot_feature_maps(model, image, tmp_path / "bad.png", layers=["classifier.0"])
    with pytest.raises(ValueError, match=r"one image \(1, C, H, W\).*\(2, 3, 8, 8\)"):
        V.plot_feature_maps(model, np.zeros((2, 3, 8, 8)), tmp_path / "bad.png")
    assert model.training                                    # restored after an error too
    assert_only(tmp_path, ["net.png", "net_named.png"])


# ----------------------------------------------------------------------------
# Atomic writes: failures leave nothing behind
# ----------------------------------------------------------------------------
def test_missing_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_folder" / "h.png"
    with pytest.raises(FileNotFoundError, match=r"folder .*no_such_folder.* does not exist"):
        V.plot_history(HISTORY, missing)
    (tmp_path / "a_file").write_text("x")                    # a file where a folder should be
    with pytest.raises(FileNotFoundError, match="does not exist"):
        V.plot_history(HISTORY, tmp_path / "a_file" / "h.png")
    assert_only(tmp_path, ["a_file"])


def test_path_must_be_png(tmp_path):
    with pytest.raises(ValueError, match=r"ending in \.png, got .*h\.jpg"):
        V.plot_history(HISTORY, tmp_path / "h.jpg")
    assert_only(tmp_path, [])


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root can write into a read-only folder")
def test_unwritable_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="cannot save plot to"):
            V.plot_history(HISTORY, folder / "h.png")
        assert os.listdir(folder) == []
    finally:
        folder.chmod(0o700)


def test_failure_while_writing_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "h.png"
    path.write_bytes(b"the previous plot")

    def broken_savefig(self, f, **kwargs):
        f.write(b"\x89PNG half a file")                      # part written, then it fails
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk on fire"):
        V.plot_history(HISTORY, path)
    assert path.read_bytes() == b"the previous plot"          # untouched
    assert_only(tmp_path, ["h.png"])                          # no temporary file


def test_failure_to_rename_is_reported_with_the_path(tmp_path, monkeypatch):
    # what an unwritable destination looks like, simulated so it works as root too
    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(V.os, "replace", refuse)
    with pytest.raises(PermissionError, match=r"cannot save plot to .*h\.png.*Permission denied"):
        V.plot_history(HISTORY, tmp_path / "h.png")
    assert_only(tmp_path, [])


def test_overwrites_an_existing_plot(tmp_path):
    path = tmp_path / "h.png"
    path.write_bytes(b"old")
    assert_png(V.plot_history(HISTORY, path))
    assert_only(tmp_path, ["h.png"])


def test_viz_leaves_pyplot_alone(tmp_path):
    # minicnn.train.viz draws with the Agg canvas directly: neither importing it nor
    # drawing may import pyplot, so a notebook's pyplot backend is never switched.
    code = ("import sys, minicnn.train.viz as V; "
            f"V.plot_history({{'train_loss': [1.0, 0.5]}}, {str(tmp_path / 'h.png')!r}); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert_png(tmp_path / "h.png")


def test_feature_maps_default_stops_where_images_end(tmp_path):
    """Default layers on a CNN with a classifier head: conv/pool maps only, no error."""
    from minicnn.models import ReferenceCNN
    path = V.plot_feature_maps(ReferenceCNN(), np.random.default_rng(0).random((1, 1, 28, 28)),
                             tmp_path / "fm.png")
    assert os.path.getsize(path) > 1000
