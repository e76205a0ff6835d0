"""The reference CNN of the benchmarks, built in minicnn and (optionally) in PyTorch.

    Conv2d(1, 32, 3) - ReLU - MaxPool(2) - Conv2d(32, 64, 3) - ReLU - MaxPool(2)
    - Flatten - Linear(1600, 128) - ReLU - Dropout(0.5) - Linear(128, 10)

on 28x28 single-channel images (MNIST-sized), trained with cross-entropy and
plain SGD (``p.data -= lr * p.grad.data``).
"""
from __future__ import annotations

import numpy as np

LR = 0.01


def minicnn_model(fuse=True):
    """The course's network, exactly as users train it: ``minicnn.models.ReferenceCNN``,
    through ``mc.fuse`` as ``fit`` and ``minicnn train`` run it (``fuse=False``: layer by layer)."""
    import minicnn as mc
    from minicnn.models import ReferenceCNN
    model = ReferenceCNN()
    return mc.fuse(model) if fuse else model


def torch_model():
    """The same layers in PyTorch (its own initialisation)."""
    import torch.nn as tnn
    return tnn.Sequential(
        tnn.Conv2d(1, 32, 3), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(32, 64, 3), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(1600, 128), tnn.ReLU(), tnn.Dropout(0.5), tnn.Linear(128, 10))


def random_batch(batch, seed=0):
    """float32 images (batch, 1, 28, 28) and int64 labels (batch,)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, 1, 28, 28)).astype(np.float32),
            rng.integers(0, 10, batch).astype(np.int64))


def minicnn_train_step(model, params, x, y):
    """One SGD step: forward, cross-entropy, backward, p -= lr * grad."""
    import minicnn as mc
    import minicnn.functional as F
    for p in params:
        p.grad = None
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    with mc.no_grad():
        for p in params:
            p.data -= LR * p.grad.data
    return loss


def flops_per_image():
    """Multiply-adds x 2 of the convolutions and linear layers, per image (forward).

    A convolution producing (Cout, oh, ow) from Cin*kh*kw inputs per output does
    2 * Cout * oh * ow * Cin * kh * kw FLOPs; a Linear(in, out) does 2 * in * out.
    The backward pass does twice the forward (dx and dW), except that nobody
    needs dx of the first layer — we count it anyway, as a plain 3x, the usual
    convention.
    """
    conv1 = 2 * 32 * 26 * 26 * (1 * 3 * 3)
    conv2 = 2 * 64 * 11 * 11 * (32 * 3 * 3)
    fc1 = 2 * 1600 * 128
    fc2 = 2 * 128 * 10
    return conv1 + conv2 + fc1 + fc2
