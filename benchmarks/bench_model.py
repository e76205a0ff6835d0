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


# -----------------------------------------------------------------------------
# Every built-in model, and its twin in PyTorch
# -----------------------------------------------------------------------------
#: The models the speed table covers (``minicnn.models.MODELS``' names), all on
#: 28×28 single-channel images with 10 classes.
BENCH_MODELS = ("reference", "reference-bn", "lenet5", "tiny", "resnet-8", "resnet-20", "mobilenet")


def minicnn_named(name, fuse=True):
    """``minicnn.models.get_model(name)``, through ``mc.fuse`` as ``fit`` runs it."""
    import minicnn as mc
    from minicnn.models import get_model
    model = get_model(name)
    return mc.fuse(model) if fuse else model


def torch_twin(model):
    """The same network in PyTorch, built module by module from a minicnn ``model``
    (unfused), with its parameters and buffers copied — so the twin can be checked:
    the same input gives the same logits (see ``check_twin``).

    Covers the layers of ``minicnn.models``: Sequential, Conv2d (groups, stride,
    padding), BatchNorm1d/2d, Linear, ReLU, Tanh, Max/Avg/AdaptiveAvgPool2d,
    Flatten, Dropout, Identity, DepthwiseSeparableConv2d, BasicBlock, PlainBlock
    and SmallResNet.
    """
    import torch
    import torch.nn as tnn
    import minicnn.nn as nn
    from minicnn import models

    class Block(tnn.Module):                       # models.BasicBlock / PlainBlock
        def __init__(self, conv1, bn1, conv2, bn2, shortcut):
            super().__init__()
            self.conv1, self.bn1, self.conv2, self.bn2, self.shortcut = conv1, bn1, conv2, bn2, shortcut

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + self.shortcut(x)) if self.shortcut is not None else torch.relu(out)

    class ResNet(tnn.Module):                      # models.SmallResNet
        def __init__(self, stem, stages, pool, flatten, fc):
            super().__init__()
            self.stem, self.stages, self.pool, self.flatten, self.fc = stem, stages, pool, flatten, fc

        def forward(self, x):
            return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))

    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    def convert(m):
        if isinstance(m, nn.Sequential):
            return tnn.Sequential(*[convert(c) for c in m])
        if isinstance(m, nn.Conv2d):
            return tnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                              dilation=m.dilation, groups=m.groups, bias=m.bias is not None)
        if isinstance(m, nn.BatchNorm2d):
            return tnn.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum)
        if isinstance(m, nn.BatchNorm1d):
            return tnn.BatchNorm1d(m.num_features, eps=m.eps, momentum=m.momentum)
        if isinstance(m, nn.Linear):
            return tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        if isinstance(m, nn.ReLU):
            return tnn.ReLU()
        if isinstance(m, nn.Tanh):
            return tnn.Tanh()
        if isinstance(m, nn.MaxPool2d):
            return tnn.MaxPool2d(m.kernel_size, m.stride, m.padding)
        if isinstance(m, nn.AvgPool2d):
            return tnn.AvgPool2d(m.kernel_size, m.stride, m.padding)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return tnn.AdaptiveAvgPool2d(m.output_size)
        if isinstance(m, nn.Flatten):
            return tnn.Flatten()
        if isinstance(m, nn.Dropout):
            return tnn.Dropout(m.p)
        if isinstance(m, nn.Identity):
            return tnn.Identity()
        if isinstance(m, nn.DepthwiseSeparableConv2d):
            return tnn.Sequential(convert(m.depthwise), convert(m.pointwise))
        if isinstance(m, models.BasicBlock):
            shortcut = convert(m.shortcut)
            return Block(convert(m.conv1), convert(m.bn1), convert(m.conv2), convert(m.bn2), shortcut)
        if isinstance(m, models.PlainBlock):
            return Block(convert(m.conv1), convert(m.bn1), convert(m.conv2), convert(m.bn2), None)
        if isinstance(m, models.SmallResNet):
            return ResNet(convert(m.stem), convert(m.stages), convert(m.pool), convert(m.flatten), convert(m.fc))
        raise TypeError(f"torch_twin: no PyTorch counterpart for {type(m).__name__}")

    twin = convert(model)
    ours = model.state_dict()
    theirs = twin.state_dict()
    # the same modules in the same order: minicnn's Sequential-of-two for DepthwiseSeparableConv2d
    # is named depthwise/pointwise, PyTorch's 0/1; the BasicBlock's Identity shortcut has no state.
    rename = {".depthwise.": ".0.", ".pointwise.": ".1."}
    copied = {}
    for key, value in ours.items():
        tkey = key
        for a, b in rename.items():
            tkey = tkey.replace(a, b)
        if tkey not in theirs:
            raise KeyError(f"torch_twin: {key} has no counterpart (PyTorch's keys: {sorted(theirs)[:8]}...)")
        copied[tkey] = torch.from_numpy(value.numpy().copy()).to(theirs[tkey].dtype).reshape(theirs[tkey].shape)
    missing = sorted(set(theirs) - set(copied))
    if missing:
        raise KeyError(f"torch_twin: nothing copied into {missing}")
    twin.load_state_dict(copied)
    return twin


def check_twin(name, batch=8, atol=1e-4):
    """The twin of model ``name`` gives the same logits as the minicnn model (eval mode), and
    the same loss gradient of the first layer's weight (train mode): the benchmark compares
    the same network."""
    import torch
    import minicnn as mc
    import minicnn.functional as F
    from minicnn.models import get_model
    mc.manual_seed(0)
    model = get_model(name)
    twin = torch_twin(model)
    x, y = random_batch(batch)
    model.eval(), twin.eval()
    ours = model(mc.tensor(x)).numpy()
    theirs = twin(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(ours, theirs, atol=atol, rtol=1e-3, err_msg=f"{name}: logits differ")
    # train mode (batch statistics) in float64, dropout off in both: the same arithmetic to ~1e-12
    model.double().train(), twin.double().train()
    for m in model.modules():
        if type(m).__name__ == "Dropout":
            m.eval()
    for m in twin.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    x64 = x.astype(np.float64)
    loss = F.cross_entropy(model(mc.tensor(x64, dtype="float64")), mc.tensor(y))
    loss.backward()
    tloss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x64)), torch.from_numpy(y))
    tloss.backward()
    first = next(iter(model.parameters()))
    tfirst = next(iter(twin.parameters()))
    np.testing.assert_allclose(first.grad.numpy(), tfirst.grad.numpy(), atol=atol, rtol=1e-2,
                               err_msg=f"{name}: the first layer's gradient differs")
    model.float()
    return float(abs(ours - theirs).max())
