"""The model contract every training method relies on.

A classifier is an encoder f made of ``stages`` (run in order, giving dense
features (m, d, *spatial)), an explicit ``pool`` to (m, d) embeddings, and a
classifier ``head`` g mapping (..., d) → (..., c)::

    logits = model.head(model.pool(model.encode(x)))

``encode(x, start, end)`` runs ``stages[start:end]``, so hidden layer k (0 =
input, ``len(stages)`` = final dense features) is where manifold mixup mixes.
``positions(features)`` gives the (m, d, r) positions that the dense methods
mix and classify one by one: every spatial position by default; a model whose
features hold tokens other than positions (a ViT's class token) leaves them out.
:class:`MixableClassifier` implements it; :mod:`multimix.models.adapters`
wraps torchvision ResNets and timm models into it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

from torch import Tensor, nn

__all__ = ["MixableClassifier", "check_mixable", "num_classes_of", "eval_mode", "dense_positions", "pools_by_mean"]


class MixableClassifier(nn.Module):
    """Base class: ``stages`` → ``pool`` → ``head``.

    Args:
        stages: encoder pieces, applied in order; their composition maps an
            input batch to dense features (m, d, *spatial).
        head: classifier g, (..., d) → (..., c); usually ``nn.Linear``.
    """

    def __init__(self, stages: Sequence[nn.Module], head: nn.Module):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.head = head

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def encode(self, x: Tensor, start: int = 0, end: Optional[int] = None) -> Tensor:
        """Run ``stages[start:end]`` on x; with the defaults, input → dense features (m, d, *spatial)."""
        for stage in self.stages[start:end]:
            x = stage(x)
        return x

    def pool(self, features: Tensor) -> Tensor:
        """Global average over the spatial dims: (m, d, *spatial) → (m, d)."""
        return features.flatten(2).mean(dim=2) if features.dim() > 2 else features

    def positions(self, features: Tensor) -> Tensor:
        """The positions of dense features (m, d, *spatial) as (m, d, r): every spatial position."""
        return features.flatten(2)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (m, c)."""
        return self.head(self.pool(self.encode(x)))


def dense_positions(model, features: Tensor) -> Tensor:
    """(m, d, r): ``model.positions(features)`` when the model defines it, else every spatial position."""
    positions = getattr(model, "positions", None)
    return positions(features) if callable(positions) else features.flatten(2)


def pools_by_mean(model) -> bool:
    """Whether ``model.pool`` is the contract's mean over every spatial position (so that, for an affine head,
    the pooled logits are the mean of the per-position logits)."""
    pool = getattr(type(model), "pool", None)
    positions = getattr(type(model), "positions", MixableClassifier.positions)
    return pool is MixableClassifier.pool and positions is MixableClassifier.positions


def check_mixable(model, *, need_stages: bool = False) -> None:
    """Raise ``TypeError`` unless ``model`` exposes ``encode``, ``pool`` and ``head``."""
    missing = [name for name in ("encode", "pool", "head") if not hasattr(model, name)]
    if need_stages and not hasattr(model, "num_stages"):
        missing.append("num_stages")
    if missing:
        raise TypeError(
            f"model must follow the multimix model contract (encode, pool, head); {type(model).__name__} lacks "
            f"{', '.join(missing)}. Subclass multimix.contract.MixableClassifier or wrap it with "
            "multimix.models.adapt(model) (torchvision ResNets, timm models)."
        )


def num_classes_of(model) -> Optional[int]:
    """c read from the model's head when it is ``nn.Linear`` (else ``None``)."""
    head = getattr(model, "head", None)
    return head.out_features if isinstance(head, nn.Linear) else None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
