import pytest
import torch
from torch import nn

from multimix.contract import MixableClassifier


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class TinyCNN(MixableClassifier):
    """3 stages over 1-D inputs (m, 2, 12) → dense (m, 6, 3); linear head to 4 classes."""

    def __init__(self, num_classes=4):
        super().__init__([
            nn.Sequential(nn.Conv1d(2, 6, 3, padding=1), nn.BatchNorm1d(6), nn.ReLU()),
            nn.Sequential(nn.Conv1d(6, 6, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv1d(6, 6, 3, stride=2, padding=1), nn.ReLU()),
        ], nn.Linear(6, num_classes))


@pytest.fixture
def tiny_model():
    return TinyCNN()


@pytest.fixture
def tiny_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 2, 12, generator=g)
    y = torch.randint(0, 4, (8,), generator=g)
    return x, y
