"""Shared pieces of the pruning / distillation benchmarks: data, fresh copies, evaluation, JSON."""
from __future__ import annotations

import json
import os


def loaders(data_dir, seed=0, val_split=0.1, batch_size=64, limit_train=None):
    """MNIST (train minus a stratified validation split, validation, test) from ``data_dir``."""
    from minicnn.cli import build_loaders
    train, val, test, source, _ = build_loaders("mnist", batch_size, data_dir=data_dir, download=False,
                                                val_split=val_split, seed=seed, limit_train=limit_train)
    return train, val, test, source


def accuracy(model, loader):
    from minicnn.train import evaluate
    return evaluate(model, loader)["accuracy"]


def write_json(path, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)
