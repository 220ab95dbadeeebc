"""MultiMix and Dense MultiMix as training methods over a model."""

from __future__ import annotations

from torch import Tensor

from ..embedding import DenseMultiMix, MultiMix
from .base import Method

__all__ = ["MultiMixMethod", "DenseMultiMixMethod"]

_MIX_KEYS = ("n", "alpha", "tuple_size", "clean_weight", "affine")


def _split(kwargs: dict, extra=()) -> tuple:
    mix = {k: kwargs.pop(k) for k in _MIX_KEYS + tuple(extra) if k in kwargs}
    return mix, kwargs


class MultiMixMethod(Method):
    """MultiMix at the embedding: ``loss = MultiMix(...)(model.pool(model.encode(x)), Y, model.head)``.

    Keyword arguments ``n``, ``alpha``, ``tuple_size``, ``clean_weight`` and
    ``affine`` go to :class:`multimix.MultiMix`; the rest to :class:`Method`.
    """

    mixes_at = "embedding"

    def __init__(self, **kwargs):
        mix, rest = _split(kwargs)
        super().__init__(**rest)
        self.mix = MultiMix(num_classes=self.num_classes, generator=self.generator, **mix)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.mix!r}, distill={self.distill!r})"

    def __call__(self, model, x: Tensor, y: Tensor) -> Tensor:
        targets = self.targets(model, x, y)
        return self.mix(model.pool(model.encode(x)), targets, model.head)


class DenseMultiMixMethod(MultiMixMethod):
    """Dense MultiMix over the model's dense features (m, d, *spatial).

    Takes the :class:`MultiMixMethod` arguments plus ``attention`` and
    ``attention_grad`` of :class:`multimix.DenseMultiMix`. With
    self-distillation the teacher predicts a target per position.
    """

    def __init__(self, **kwargs):
        mix, rest = _split(kwargs, extra=("attention", "attention_grad"))
        Method.__init__(self, **rest)
        self.mix = DenseMultiMix(num_classes=self.num_classes, generator=self.generator, **mix)

    def __call__(self, model, x: Tensor, y: Tensor) -> Tensor:
        targets = self.targets(model, x, y, dense=True)
        return self.mix(model.encode(x), targets, model.head)
