"""MultiMix and Dense MultiMix as training methods over a model."""

from __future__ import annotations

from typing import Dict, Literal, Tuple, get_args

from torch import Tensor

from .. import distributed as D
from ..checks import check_choice
from ..embedding import DenseMultiMix, MultiMix
from .base import Method
from .settings import Setting, settings_of

__all__ = ["MultiMixMethod", "DenseMultiMixMethod", "MIX_SCOPES"]

MixScope = Literal["local", "global"]
MIX_SCOPES = get_args(MixScope)


class MultiMixMethod(Method):
    """MultiMix at the embedding: ``loss = MultiMix(...)(model.pool(model.encode(x)), Y, model.head)``.

    Keyword arguments of :class:`multimix.MultiMix` (``n``, ``alpha`` or ``concentration``,
    ``tuple_size``, ``clean_weight``, ``affine``, ``rows_per_draw``) go to it; the rest to :class:`Method`.

    Args:
        mix_scope: ``"local"`` (default) mixes each process's own mini-batch; ``"global"`` the global batch.

    ``mix_scope="global"``, under ``torch.distributed`` with W processes, gathers the
    embeddings (with gradient) and the targets of all ranks, so Λ has shape
    (n, m·W) — drawn from this rank's generator — and every interpolated
    example is a convex combination over the global batch. The loss is the
    mean over this rank's n rows; with DDP averaging the gradients this equals
    one process with the concatenated batch and the ranks' Λ stacked (see
    :mod:`multimix.distributed`). For a single process both scopes are the same.
    """

    mixes_at = "embedding"
    mix_class = MultiMix  # the embedding-level operation this method applies

    @classmethod
    def settings(cls) -> Dict[str, Setting]:
        return settings_of(cls, cls.mix_class)

    def __init__(self, *, mix_scope: MixScope = "local", **kwargs):
        # Method's own settings (label_smoothing) stay with Method; the mix class takes the rest.
        mix_keys = set(settings_of(self.mix_class)) - set(Method.settings())
        mix = {k: kwargs.pop(k) for k in list(kwargs) if k in mix_keys}
        super().__init__(**kwargs)
        self.mix_scope = check_choice(mix_scope, "mix_scope", MIX_SCOPES)
        self.mix = self.mix_class(num_classes=self.num_classes, generator=self.generator, **mix)

    def __repr__(self) -> str:
        scope = ", mix_scope='global'" if self.mix_scope == "global" else ""
        return f"{type(self).__name__}({self.mix!r}, distill={self.distill!r}{scope})"

    def _scoped(self, z: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
        """(z, targets) of the global batch when ``mix_scope == "global"`` (rank order), else as given."""
        if self.mix_scope == "global" and D.is_distributed():
            z = D.all_gather_with_grad(z)
            targets = D.all_gather_with_grad(targets) if targets.requires_grad else D.all_gather(targets)
        return z, targets

    def loss(self, model, x: Tensor, y: Tensor) -> Tensor:
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

    mix_class = DenseMultiMix
    uses_dense_features = True
    needs_positions = True

    def loss(self, model, x: Tensor, y: Tensor) -> Tensor:
        targets = self.targets(model, x, y, dense=True)
        z, targets = self._scoped(model.encode(x), targets)
        return self.mix(z, targets, model.head)
