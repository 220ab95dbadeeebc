"""PreActResNet (He et al., 2016), the CIFAR network of the mixup papers, with a width knob."""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..contract import MixableClassifier

__all__ = ["PreActBlock", "PreActResNet", "preact_resnet18", "preact_resnet_small"]


class PreActBlock(nn.Module):
    """BN-ReLU-conv ×2 with an identity (or 1×1 conv) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(MixableClassifier):
    """PreActResNet for 32×32 inputs.

    Stages: four groups of blocks (strides 1, 2, 2, 2) with width, 2·width,
    4·width, 8·width channels; the first starts with the stem convolution, the
    last ends with the final BN-ReLU. Dense features are (m, 8·width, H/8,
    W/8): 4×4 = 16 positions for 32×32 inputs.

    Hidden layer k (manifold mixup's numbering, :mod:`multimix.contract`) is
    the input for k = 0 and the output of group k otherwise, as in the
    official manifold mixup code (input, after group 1, after group 2 for the
    default layers (0, 1, 2)). The stem is not a layer of its own: it is a
    bias-free convolution, so mixing right after it is exactly input mixup.

    Args:
        blocks: number of blocks per group, e.g. (2, 2, 2, 2) for ResNet-18.
        num_classes: c.
        width: channels of the first group (64 in the papers).
        in_channels: input channels.
    """

    def __init__(self, blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10, width: int = 64,
                 in_channels: int = 3):
        if width < 1 or num_classes < 1:
            raise ValueError(f"width and num_classes must be >= 1, got width={width}, num_classes={num_classes}")
        stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        groups, planes = [], width
        for i, count in enumerate(blocks):
            out_planes = width * 2**i
            layers = []
            for j in range(count):
                layers.append(PreActBlock(planes, out_planes, stride=(1 if i == 0 or j > 0 else 2)))
                planes = out_planes
            groups.append(nn.Sequential(*layers))
        groups[-1].append(nn.BatchNorm2d(planes))
        groups[-1].append(nn.ReLU())
        groups[0] = nn.Sequential(stem, *groups[0])
        super().__init__(groups, nn.Linear(planes, num_classes))


def preact_resnet18(num_classes: int = 10, width: int = 64, in_channels: int = 3) -> PreActResNet:
    """PreActResNet-18: two blocks per group."""
    return PreActResNet((2, 2, 2, 2), num_classes, width, in_channels)


def preact_resnet_small(num_classes: int = 10, width: int = 16, in_channels: int = 3) -> PreActResNet:
    """A CPU-friendly PreActResNet: one block per group, width 16 by default."""
    return PreActResNet((1, 1, 1, 1), num_classes, width, in_channels)
