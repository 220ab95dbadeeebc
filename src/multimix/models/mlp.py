"""A multilayer perceptron for tabular data (rows of F features), following the model contract."""

from __future__ import annotations

from typing import Optional

from torch import nn

from ..checks import check_int, check_number
from ..contract import MixableClassifier

__all__ = ["MLP", "mlp"]


def _block(cin: int, cout: int, dropout: float) -> nn.Sequential:
    layers = [nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout), nn.ReLU()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class MLP(MixableClassifier):
    """``depth`` blocks Linear → BatchNorm1d → ReLU (→ Dropout), then a linear head.

    Shapes (m examples): input (m, num_features) → after block k (m, width)
    → dense features = embedding (m, width); there are no positions, so
    ``pool`` leaves them as they are; ``head``: (m, width) → (m, num_classes).
    Manifold mixup mixes at layer 0 (the input row), 1, …, ``depth`` (the
    embedding).

    Args:
        num_features: F, the length of one input row.
        num_classes: c.
        width: units of every block (and the embedding's size d).
        depth: number of blocks (stages), >= 1.
        dropout: dropout probability after each block's ReLU (0: none).
    """

    def __init__(self, num_features: int, num_classes: int = 2, width: int = 256, depth: int = 2,
                 dropout: float = 0.0):
        check_int(num_features, "num_features", 1)
        check_int(num_classes, "num_classes", 1)
        check_int(width, "width", 1)
        check_int(depth, "depth", 1)
        dropout = check_number(dropout, "dropout", minimum=0.0, maximum=1.0, maximum_exclusive=True)
        stages = [_block(num_features if k == 0 else width, width, dropout) for k in range(depth)]
        super().__init__(stages, nn.Linear(width, num_classes))
        self.num_features, self.width = num_features, width


def mlp(num_classes: int = 2, width: int = 256, num_features: Optional[int] = None, depth: int = 2,
        dropout: float = 0.0) -> MLP:
    """:class:`MLP` for rows of ``num_features`` features (required: ``input_shape[0]`` of tabular data)."""
    if num_features is None:
        raise ValueError("model 'mlp' needs num_features (F, the length of one input row)")
    return MLP(num_features, num_classes, width, depth, dropout)
