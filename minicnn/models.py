"""Ready-made networks for 28×28 single-channel images (MNIST, Fashion-MNIST).

* :class:`ReferenceCNN` — the course's reference network: two 3×3 conv blocks
  and a small classifier (≈225k parameters). ≥ 99 % on MNIST in 3 epochs.
* :class:`ReferenceCNNBN` — the same with batch norm after every conv/linear.
* :class:`LeNet5` — LeCun et al. (1998): 5×5 convs, tanh, average pooling.
* :class:`TinyCNN` — a 14k-parameter reference (quarter width): a distillation student.
* :class:`SmallResNet` — three stages of residual BasicBlocks (He et al., 2016).

All are ordinary ``nn.Module``s; ``get_model(name)`` builds one by name.
"""
from __future__ import annotations

from . import functional as F
from . import nn


class ReferenceCNN(nn.Sequential):
    """Conv(1,32,3)-ReLU-MaxPool(2)-Conv(32,64,3)-ReLU-MaxPool(2)-Flatten-
    Linear(1600,128)-ReLU-Dropout(0.5)-Linear(128,10).

    Shapes for a 28×28 input: (N,1,28,28) -> conv (N,32,26,26) -> pool (N,32,13,13)
    -> conv (N,64,11,11) -> pool (N,64,5,5) -> flatten (N,1600) -> (N,128) -> (N,10).

    ``kernel_size`` (default 3) changes both convs; the spatial size
    after them is ((28 - k + 1) // 2 - k + 1) // 2 (5 for k=3, 4 for k=5).
    """

    def __init__(self, num_classes=10, in_channels=1, dropout=0.5, kernel_size=3):
        k = int(kernel_size)
        side = ((28 - k + 1) // 2 - k + 1) // 2
        if k < 1 or side < 1:
            raise ValueError(f"ReferenceCNN: kernel_size must be in 1..11 for 28x28 inputs, got {kernel_size}")
        super().__init__(
            nn.Conv2d(in_channels, 32, k), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, k), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * side * side, 128), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(128, num_classes))


class ReferenceCNNBN(nn.Sequential):
    """The reference CNN with BatchNorm after each conv and the hidden linear layer.

    A layer followed by batch norm needs no bias: BN subtracts the mean anyway,
    and its own beta plays the bias's role.
    """

    def __init__(self, num_classes=10, in_channels=1, dropout=0.3):
        super().__init__(
            nn.Conv2d(in_channels, 32, 3, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 5 * 5, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(128, num_classes))


class LeNet5(nn.Sequential):
    """LeNet-5 for 28×28 inputs (the first conv pads by 2, as if the input were 32×32).

    Conv(1,6,5,pad 2)-Tanh-AvgPool(2)-Conv(6,16,5)-Tanh-AvgPool(2)-Flatten-
    Linear(400,120)-Tanh-Linear(120,84)-Tanh-Linear(84,10).
    """

    def __init__(self, num_classes=10, in_channels=1):
        super().__init__(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),
            nn.Linear(84, num_classes))


class TinyCNN(nn.Sequential):
    """The reference CNN at a quarter of its width, with a 32-unit hidden layer: 14,410
    parameters (6.4 % of the reference's 225,034) — the student of knowledge distillation.

    Conv(1,8,3)-ReLU-MaxPool(2)-Conv(8,16,3)-ReLU-MaxPool(2)-Flatten-Linear(400,32)-ReLU-Linear(32,10).
    """

    def __init__(self, num_classes=10, in_channels=1):
        super().__init__(
            nn.Conv2d(in_channels, 8, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * 5 * 5, 32), nn.ReLU(), nn.Linear(32, num_classes))


class BasicBlock(nn.Module):
    """The residual block of ResNet-18/34:

        out = relu( bn2(conv2( relu(bn1(conv1(x))) )) + shortcut(x) )

    conv1 is 3×3 with the block's stride, conv2 is 3×3 with stride 1. When the
    shape changes (stride > 1 or more channels) the shortcut is a 1×1 conv + BN
    ("projection"); otherwise it is the identity — the gradient then flows
    through the addition untouched, which is what lets deep ResNets train.
    """

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """stem Conv(3×3,16)-BN-ReLU, then stages of BasicBlocks at 16, 32 and 64
    channels (the last two halve the resolution), global average pooling and a
    linear classifier. 28×28 -> 28×28 -> 14×14 -> 7×7 -> 1×1."""

    def __init__(self, num_classes=10, in_channels=1, blocks_per_stage=1, widths=(16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, c = [], widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks_per_stage):
                layers.append(BasicBlock(c, w, stride=2 if (i > 0 and b == 0) else 1))
                c = w
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))


MODELS = {
    "reference": ReferenceCNN,
    "reference-bn": ReferenceCNNBN,
    "lenet5": LeNet5,
    "resnet": SmallResNet,
    "tiny": TinyCNN,
}


def get_model(name, num_classes=10, in_channels=1, normalize=None, **kwargs) -> nn.Module:
    """Build a model by name: one of ``MODELS``; ``kwargs`` are its shape options (e.g. dropout).

    ``normalize=(mean, std)`` puts an :class:`nn.Normalize` in front (see
    :func:`with_normalize`), so the model takes pixel units [0, 1].
    """
    import inspect
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}") from None
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "num_classes", "in_channels"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"model {name!r} has no option {', '.join(unknown)} "
                         f"(it takes: {', '.join(sorted(accepted)) or 'none'})")
    model = cls(num_classes=num_classes, in_channels=in_channels, **kwargs)
    return model if normalize is None else with_normalize(model, *normalize)


def with_normalize(model, mean, std) -> nn.Sequential:
    """``nn.Sequential(nn.Normalize(mean, std), model)``: the same network, fed pixel units [0, 1].

    Attacks (``minicnn.attacks``) and attributions (``minicnn.explain``) want
    the model's input in pixel units, so that ε and baselines have one
    meaning. A model trained on normalised data (as ``minicnn train`` does,
    with ``config["normalization"]`` in its checkpoint) is wrapped like this
    after loading; its own state dict is unchanged (``wrapped[1]`` is it).
    """
    return nn.Sequential(nn.Normalize(mean, std), model)
