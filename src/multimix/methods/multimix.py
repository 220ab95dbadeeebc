"""MultiMix and Dense MultiMix as training methods over a model."""

from __future__ import annotations

from typing import Tuple

from torch import Tensor

from .. import distributed as D
from ..embedding import DenseMultiMix, MultiMix
from .base import Method

__all__ = ["MultiMixMethod", "DenseMultiMixMethod", "MIX_SCOPES"]

MIX_SCOPES = ("local", "global")

_MIX_KEYS = ("n", "alpha", "concentration", "tuple_size", "clean_weight", "affine", "rows_per_draw")


def _split(kwargs: dict, extra=()) -> tuple:
    mix = {k: kwargs.pop(k) for k in _MIX_KEYS + tuple(extra) if k in kwargs}
    return mix, kwargs


def _check_scope(mix_scope: str) -> str:
    if mix_scope not in MIX_SCOPES:
        raise ValueError(f"mix_scope must be one of {', '.join(MIX_SCOPES)}, got {mix_scope!r}")
    return mix_scope


class MultiMixMethod(Method):
    """MultiMix at the embedding: ``loss = MultiMix(...)(model.pool(model.encode(x)), Y, model.head)``.

    Keyword arguments ``n``, ``alpha`` or ``concentration``, ``tuple_size``, ``clean_weight`` and
    ``affine`` go to :class:`multimix.MultiMix`; the rest to :class:`Method`.

    ``mix_scope``: ``"local"`` (default) mixes each process's own mini-batch;
    ``"global"``, under ``torch.distributed`` with W processes, gathers the
    embeddings (with gradient) and the targets of all ranks, so Λ has shape
    (n, m·W) — drawn from this rank's generator — and every interpolated
    example is a convex combination over the global batch. The loss is the
    mean over this rank's n rows; with DDP averaging the gradients this equals
    one process with the concatenated batch and the ranks' Λ stacked (see
    :mod:`multimix.distributed`). For a single process both scopes are the same.
    """

    mixes_at = "embedding"
    _mix_class = MultiMix
    _mix_extra_keys: Tuple[str, ...] = ()

    def __init__(self, *, mix_scope: str = "local", **kwargs):
        mix, rest = _split(kwargs, extra=self._mix_extra_keys)
        super().__init__(**rest)
        self.mix_scope = _check_scope(mix_scope)
        self.mix = self._mix_class(num_classes=self.num_classes, generator=self.generator, **mix)

    def __repr__(self) -> str:
        scope = ", mix_scope='global'" if self.mix_scope == "global" else ""
        return f"{type(self).__name__}({self.mix!r}, distill={self.distill!r}{scope})"

    def _scoped(self, z: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
        """(z, targets) of the global batch when ``mix_scope == "global"`` (rank order), else as given."""
        if self.mix_scope == "global" and D.is_distributed():
            z = D.all_gather_with_grad(z)
            targets = D.all_gather_with_grad(targets) if targets.requires_grad else D.all_gather(targets)
        return z, targets

    def __call__(self, model, x: Tensor, y: Tensor) -> Tensor:
        targets = self.targets(model, x, y)
        z, targets = self._scoped(model.pool(model.encode(x)), targets)
        return self.mix(z, targets, model.head)


class DenseMultiMixMethod(MultiMixMethod):
    """Dense MultiMix over the model's dense features (m, d, *spatial).

    Takes the :class:`MultiMixMethod` arguments plus ``attention`` and
    ``attention_grad``, ``position_weighting`` and ``pooled_weight`` of :class:`multimix.DenseMultiMix`. With
    self-distillation the teacher predicts a target per position. With
    ``mix_scope="global"`` the dense features (m, d, *spatial) are gathered,
    r times more bytes than pooled embeddings.
    """

    _mix_class = DenseMultiMix
    _mix_extra_keys = ("attention", "attention_grad", "position_weighting", "pooled_weight")

    def __call__(self, model, x: Tensor, y: Tensor) -> Tensor:
        targets = self.targets(model, x, y, dense=True)
        z, targets = self._scoped(model.encode(x), targets)
        return self.mix(z, targets, model.head)
