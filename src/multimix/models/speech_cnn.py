"""A small 2-D CNN for log-mel spectrograms (FSDD) whose dense features keep the time axis."""

from __future__ import annotations

from torch import Tensor, nn

from ..contract import MixableClassifier

__all__ = ["SpeechCNN", "speech_cnn", "MeanOverFrequency"]


def _conv_bn_relu(cin: int, cout: int, stride) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class MeanOverFrequency(nn.Module):
    """(m, C, F, T) → (m, C, T): the mean over the frequency axis (dim 2)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=2)


class SpeechCNN(MixableClassifier):
    """Four conv-BN-ReLU stages (3×3 kernels) over (frequency, time), then the mean over frequency.

    Shapes for a log-mel input (m, in_channels, F, T), w = ``width``,
    ⌈·⌉ the ceiling (for FSDD's F = 40 mel bands and T = 101 frames in brackets)::

        stage 0  conv w,   stride 2      (m, w,  ⌈F/2⌉, ⌈T/2⌉)   [20 × 51]
        stage 1  conv 2w,  stride 2      (m, 2w, ⌈F/4⌉, ⌈T/4⌉)   [10 × 26]
        stage 2  conv 4w,  stride 2      (m, 4w, ⌈F/8⌉, ⌈T/8⌉)   [5 × 13]
        stage 3  conv 4w,  stride 1, mean over frequency → (m, 4w, ⌈T/8⌉)  [13 frames]

    ``encode`` returns these dense features (m, d = 4w, T'), one position per
    time frame (80 ms of signal apart, each seeing about 0.4 s), so Dense
    MultiMix mixes and applies its loss per time frame; ``pool`` is the mean
    over time (m, d); ``head`` is ``nn.Linear(d, num_classes)``. Input-level
    methods (CutMix) see the (m, C, F, T) spectrogram and cut
    frequency × time boxes.

    Args:
        num_classes: c (10 digits for FSDD).
        width: w, channels of the first stage (the others have 2w and 4w).
        in_channels: input channels (1 for a log-mel spectrogram).
    """

    def __init__(self, num_classes: int = 10, width: int = 32, in_channels: int = 1):
        if width < 1 or num_classes < 1 or in_channels < 1:
            raise ValueError(f"width, num_classes and in_channels must be >= 1, got width={width}, "
                             f"num_classes={num_classes}, in_channels={in_channels}")
        w = width
        stages = [
            _conv_bn_relu(in_channels, w, 2),
            _conv_bn_relu(w, 2 * w, 2),
            _conv_bn_relu(2 * w, 4 * w, 2),
            nn.Sequential(_conv_bn_relu(4 * w, 4 * w, 1), MeanOverFrequency()),
        ]
        super().__init__(stages, nn.Linear(4 * w, num_classes))


def speech_cnn(num_classes: int = 10, width: int = 32, in_channels: int = 1) -> SpeechCNN:
    """:class:`SpeechCNN` for (in_channels, F, T) log-mel inputs; dense features (m, 4·width, ⌈T/8⌉)."""
    return SpeechCNN(num_classes, width, in_channels)
