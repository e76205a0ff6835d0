"""Ready-made networks for 28×28 single-channel images (MNIST, Fashion-MNIST), and other sizes.

``in_channels`` and ``input_size`` (the side of a square input, default 28)
adapt them: ``get_model("reference", in_channels=3, input_size=32)`` is the
reference CNN for CIFAR-10. Only the first conv and the first linear layer
change shape; the names in the state dict stay the same. ResNet and MobileNet
end in global average pooling, so they take any size as they are.

* :class:`ReferenceCNN` — the course's reference network: two 3×3 conv blocks
  and a small classifier (≈225k parameters). ≥ 99 % on MNIST in 3 epochs.
* :class:`ReferenceCNNBN` — the same with batch norm after every conv/linear.
* :class:`LeNet5` — LeCun et al. (1998): 5×5 convs, tanh, average pooling.
* :class:`TinyCNN` — a 14k-parameter reference (quarter width): a distillation student.
* :class:`SmallResNet` — three stages of residual BasicBlocks (He et al., 2016);
  ``resnet-8`` / ``resnet-20`` are its CIFAR-style depths 6n+2, and
  ``plain-8`` / ``plain-20`` the same networks without the shortcuts (the pair
  that shows the degradation problem).
* :class:`MobileNet` — depthwise-separable blocks with batch norm (Howard et
  al., 2017), sized for 28×28 inputs.

The reference CNNs and MobileNet take a ``width`` multiplier (every layer's
channel count times ``width``; ``width=1`` is the network exactly as above).
All are ordinary ``nn.Module``s; ``get_model(name, **kwargs)`` builds one by name.
"""
from __future__ import annotations

from . import functional as F
from . import nn


def _scaled(channels, width):
    """``channels * width`` rounded, at least 1: the width multiplier of MobileNet."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return max(1, int(round(channels * width)))


def _side_after_two_blocks(input_size, k, first_padding):
    """The side after conv(k, padding)-pool(2)-conv(k)-pool(2) on an ``input_size`` square."""
    side = ((int(input_size) + 2 * first_padding - k + 1) // 2 - k + 1) // 2
    if side < 1:
        raise ValueError(f"input_size {input_size} is too small for this network")
    return side


class ReferenceCNN(nn.Sequential):
    """Conv(1,32,3)-ReLU-MaxPool(2)-Conv(32,64,3)-ReLU-MaxPool(2)-Flatten-
    Linear(1600,128)-ReLU-Dropout(0.5)-Linear(128,10).

    Shapes for a 28×28 input: (N,1,28,28) -> conv (N,32,26,26) -> pool (N,32,13,13)
    -> conv (N,64,11,11) -> pool (N,64,5,5) -> flatten (N,1600) -> (N,128) -> (N,10).

    ``width`` multiplies the channel counts 32, 64 and the hidden 128 (so the
    parameters grow roughly as width²); the layer indices and names stay the same.
    ``kernel_size`` (default 3) changes both convs; the spatial size
    after them is ((S - k + 1) // 2 - k + 1) // 2 for an S×S input (``input_size``,
    default 28: 5 for k=3, 4 for k=5; S=32: 6 for k=3).
    """

    def __init__(self, num_classes=10, in_channels=1, dropout=0.5, width=1.0, kernel_size=3, input_size=28):
        k, s = int(kernel_size), int(input_size)
        side = ((s - k + 1) // 2 - k + 1) // 2
        if k < 1 or side < 1:
            largest = max([j for j in range(1, s + 1) if ((s - j + 1) // 2 - j + 1) // 2 >= 1], default=0)
            raise ValueError(f"ReferenceCNN: kernel_size must be in 1..{largest} for {s}x{s} inputs, "
                             f"got {kernel_size}")
        c1, c2, h = _scaled(32, width), _scaled(64, width), _scaled(128, width)
        super().__init__(
            nn.Conv2d(in_channels, c1, k), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, k), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * side * side, h), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(h, num_classes))


class ReferenceCNNBN(nn.Sequential):
    """The reference CNN with BatchNorm after each conv and the hidden linear layer.

    A layer followed by batch norm needs no bias: BN subtracts the mean anyway,
    and its own beta plays the bias's role.
    """

    def __init__(self, num_classes=10, in_channels=1, dropout=0.3, width=1.0, input_size=28):
        c1, c2, h = _scaled(32, width), _scaled(64, width), _scaled(128, width)
        side = _side_after_two_blocks(input_size, 3, 0)
        super().__init__(
            nn.Conv2d(in_channels, c1, 3, bias=False), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, bias=False), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * side * side, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(h, num_classes))


class LeNet5(nn.Sequential):
    """LeNet-5 for 28×28 inputs (the first conv pads by 2, as if the input were 32×32).

    Conv(1,6,5,pad 2)-Tanh-AvgPool(2)-Conv(6,16,5)-Tanh-AvgPool(2)-Flatten-
    Linear(400,120)-Tanh-Linear(120,84)-Tanh-Linear(84,10).
    """

    def __init__(self, num_classes=10, in_channels=1, input_size=28):
        side = _side_after_two_blocks(input_size, 5, 2)
        super().__init__(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(16 * side * side, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),
            nn.Linear(84, num_classes))


class TinyCNN(nn.Sequential):
    """The reference CNN at a quarter of its width, with a 32-unit hidden layer: 14,410
    parameters (6.4 % of the reference's 225,034) — the student of knowledge distillation.

    Conv(1,8,3)-ReLU-MaxPool(2)-Conv(8,16,3)-ReLU-MaxPool(2)-Flatten-Linear(400,32)-ReLU-Linear(32,10).
    """

    def __init__(self, num_classes=10, in_channels=1, input_size=28):
        side = _side_after_two_blocks(input_size, 3, 0)
        super().__init__(
            nn.Conv2d(in_channels, 8, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * side * side, 32), nn.ReLU(), nn.Linear(32, num_classes))


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


class PlainBlock(nn.Module):
    """A BasicBlock without its shortcut: ``out = relu(bn2(conv2(relu(bn1(conv1(x))))))``.

    Stacking these gives He et al.'s "plain" network: the same convolutions as
    the ResNet, so any difference in how well they train comes from the
    shortcuts alone.
    """

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class SmallResNet(nn.Module):
    """stem Conv(3×3,16)-BN-ReLU, then stages of BasicBlocks at 16, 32 and 64
    channels (the last two halve the resolution), global average pooling and a
    linear classifier. 28×28 -> 28×28 -> 14×14 -> 7×7 -> 1×1.

    Depth (counting conv and linear layers on the main path) is
    ``6 * blocks_per_stage + 2``: 1 block per stage is ResNet-8, 3 is ResNet-20.
    ``residual=False`` uses :class:`PlainBlock` (no shortcuts): the plain net
    of the same depth.
    """

    def __init__(self, num_classes=10, in_channels=1, blocks_per_stage=1, widths=(16, 32, 64),
                 residual=True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, c = [], widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks_per_stage):
                block = BasicBlock if residual else PlainBlock
                layers.append(block(c, w, stride=2 if (i > 0 and b == 0) else 1))
                c = w
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))


class MobileNet(nn.Sequential):
    """A small MobileNet (Howard et al., 2017) for 28×28 inputs::

        stem  Conv(Cin,16,3,pad 1)-BN-ReLU                      28×28
        DS(16,32)-BN-ReLU  DS(32,64,stride 2)-BN-ReLU           28×28 -> 14×14
        DS(64,64)-BN-ReLU  DS(64,128,stride 2)-BN-ReLU          14×14 -> 7×7
        DS(128,128)-BN-ReLU  AdaptiveAvgPool(1)-Flatten-Linear(128, classes)

    DS is :class:`nn.DepthwiseSeparableConv2d` (3×3 depthwise, then 1×1
    pointwise, no bias: BN follows). As in Xception, nothing sits between the
    depthwise and the pointwise conv; MobileNet v1 puts a BN-ReLU there too.
    ``width`` multiplies every channel count (MobileNet's alpha).
    """

    def __init__(self, num_classes=10, in_channels=1, width=1.0):
        chans = [_scaled(c, width) for c in (16, 32, 64, 64, 128, 128)]
        strides = (1, 2, 1, 2, 1)
        layers = [nn.Conv2d(in_channels, chans[0], 3, padding=1, bias=False), nn.BatchNorm2d(chans[0]), nn.ReLU()]
        for cin, cout, s in zip(chans[:-1], chans[1:], strides):
            layers += [nn.DepthwiseSeparableConv2d(cin, cout, 3, stride=s, padding=1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU()]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(chans[-1], num_classes)]
        super().__init__(*layers)


def _depth(blocks_per_stage, residual):
    def build(num_classes=10, in_channels=1, **kwargs):
        return SmallResNet(num_classes, in_channels, blocks_per_stage=blocks_per_stage,
                           residual=residual, **kwargs)
    kind = "ResNet" if residual else "plain net (no shortcuts)"
    build.__doc__ = f"{kind} of depth {6 * blocks_per_stage + 2}: SmallResNet with {blocks_per_stage} block(s) per stage."
    return build


MODELS = {
    "reference": ReferenceCNN,
    "reference-bn": ReferenceCNNBN,
    "lenet5": LeNet5,
    "resnet": SmallResNet,
    "tiny": TinyCNN,
    "resnet-8": _depth(1, True),
    "resnet-20": _depth(3, True),
    "plain-8": _depth(1, False),
    "plain-20": _depth(3, False),
    "mobilenet": MobileNet,
}


def get_model(name, num_classes=10, in_channels=1, normalize=None, input_size=None, **kwargs) -> nn.Module:
    """Build a model by name: one of ``MODELS``.

    ``kwargs`` go to the model's constructor (its shape options), e.g.
    ``get_model("reference", width=0.5)``; the CLI stores them in a checkpoint's
    ``config["model_kwargs"]`` so that the same model can be rebuilt from it.
    ``normalize=(mean, std)`` puts an :class:`nn.Normalize` in front (see
    :func:`with_normalize`), so the model takes pixel units [0, 1].
    ``input_size`` (side of the square input; None = 28) goes to the models
    whose layer sizes depend on it; those with global pooling ignore it.
    """
    import inspect
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}") from None
    params = inspect.signature(cls).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        accepted = set(params) - {"num_classes", "in_channels", "input_size"}
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise ValueError(f"model {name!r} has no option {', '.join(unknown)} "
                             f"(it takes: {', '.join(sorted(accepted)) or 'none'})")
    if input_size is not None and "input_size" in params:
        kwargs["input_size"] = int(input_size)
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
