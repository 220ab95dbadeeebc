"""A 1-D CNN for MNIST-1D (sequences of length 40)."""

from __future__ import annotations

from torch import nn

from ..contract import MixableClassifier

__all__ = ["CNN1D", "cnn1d"]


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm1d(cout), nn.ReLU())


class CNN1D(MixableClassifier):
    """Stem conv (kernel 5) and three conv-BN-ReLU stages of stride 2, then average pooling.

    Input (m, in_channels, L); dense features (m, channels, ⌈L/8⌉) — 5
    positions for MNIST-1D's L = 40.

    Args:
        num_classes: c.
        channels: width of every stage.
        in_channels: input channels (1 for MNIST-1D).
    """

    def __init__(self, num_classes: int = 10, channels: int = 32, in_channels: int = 1):
        if channels < 1 or num_classes < 1:
            raise ValueError(f"channels and num_classes must be >= 1, got channels={channels}, num_classes={num_classes}")
        stem = nn.Sequential(nn.Conv1d(in_channels, channels, 5, 1, 2, bias=False), nn.BatchNorm1d(channels), nn.ReLU())
        stages = [stem] + [_conv_bn_relu(channels, channels, 2) for _ in range(3)]
        super().__init__(stages, nn.Linear(channels, num_classes))


def cnn1d(num_classes: int = 10, channels: int = 32, in_channels: int = 1) -> CNN1D:
    return CNN1D(num_classes, channels, in_channels)
