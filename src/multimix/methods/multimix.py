"""MultiMix and Dense MultiMix as training methods over a model, returning their loss terms.

The terms are those of :class:`multimix.MultiMix` and
:class:`multimix.DenseMultiMix` (same draws, same arithmetic; tested equal):
``"mixed"`` (the n interpolated examples, or their n·r positions), ``"clean"``
(``clean_weight``) and, for Dense MultiMix, ``"pooled"`` (``pooled_weight``).
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Literal, Optional, Tuple, get_args

import torch
from torch import Tensor

from .. import distributed as D
from .. import functional as MF
from ..checks import check_choice
from ..contract import dense_positions, pools_by_mean
from ..embedding import DenseMultiMix, MultiMix, replaced
from .base import Method
from .settings import Setting, settings_of
from .terms import LossTerm

__all__ = ["MultiMixMethod", "DenseMultiMixMethod", "MIX_SCOPES"]

MixScope = Literal["local", "global"]
MIX_SCOPES = get_args(MixScope)


class MultiMixMethod(Method):
    """MultiMix at the embedding: the terms of ``MultiMix(...)(model.pool(model.encode(x)), Y, model.head)``.

    Keyword arguments of :class:`multimix.MultiMix` (``n``, ``alpha`` or ``concentration``,
    ``tuple_size``, ``clean_weight``, ``affine``, ``rows_per_draw``) go to it; the rest to :class:`Method`.
    The method's ``generator`` is the one the mix draws Λ from (one generator).

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
    free_on_resume = frozenset({"mix_scope"})  # a run may resume on another number of processes

    @classmethod
    def settings(cls) -> Dict[str, Setting]:
        return settings_of(cls, cls.mix_class)

    def __init__(self, *, mix_scope: MixScope = "local", **kwargs):
        # Method's own settings (label_smoothing) stay with Method; the mix class takes the rest.
        mix_keys = set(settings_of(self.mix_class)) - set(Method.settings())
        mix = {k: kwargs.pop(k) for k in list(kwargs) if k in mix_keys}
        generator = kwargs.pop("generator", None)
        super().__init__(**kwargs)
        self.mix_scope = check_choice(mix_scope, "mix_scope", MIX_SCOPES)
        self.mix = self.mix_class(num_classes=self.num_classes, generator=generator, **mix)

    @property
    def generator(self) -> Optional[torch.Generator]:
        """The generator of Λ (held by the mix: one generator, no copy)."""
        mix = self.__dict__.get("mix")
        return mix.generator if mix is not None else None

    @generator.setter
    def generator(self, generator: Optional[torch.Generator]) -> None:
        Method.generator.fset(self, generator)  # checks it
        self.mix.generator = generator

    @property
    def global_mixing(self) -> bool:
        return self.mix_scope == "global"

    def __repr__(self) -> str:
        scope = ", mix_scope='global'" if self.mix_scope == "global" else ""
        return f"{type(self).__name__}({self.mix!r}, distill={self.distill!r}{scope})"

    def _scoped(self, z: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
        """(z, targets) of the global batch when ``mix_scope == "global"`` (rank order), else as given."""
        if self.mix_scope == "global" and D.is_distributed():
            z = D.all_gather_with_grad(z)
            targets = D.all_gather_with_grad(targets) if targets.requires_grad else D.all_gather(targets)
        return z, targets

    def one_pass(self, head, m: int) -> bool:
        """Whether the mixed term may take the mix's one pass (:meth:`MultiMix.one_pass`): also the default
        criterion, and :meth:`sample_lam` not replaced."""
        return (self.objective.soft_cross_entropy and self.mix.one_pass(head, m)
                and not replaced(self, "sample_lam", MultiMixMethod))

    def sample_lam(self, m: int, device) -> Tensor:
        """Λ (n, m) from the method's generator, on ``device``."""
        self.draws(device)
        return self.mix.sample_lam(m, device=device).to(device)

    def terms(self, model, x: Tensor, y: Tensor) -> List[LossTerm]:
        targets = self.targets(model, x, y)
        z, targets = self._scoped(model.pool(model.encode(x)), targets)
        if z.dim() != 2:
            raise ValueError(f"model.pool must give embeddings (m, d), got {tuple(z.shape)}")
        head = model.head
        one_pass = self.one_pass(head, z.shape[0])
        logits = head(z) if self.mix.clean_weight > 0 or one_pass else None
        if one_pass and targets.shape == logits.shape:  # not the teacher's (hard, teacher) 2c columns
            self.draws(z.device)
            terms = [LossTerm("mixed", value=self.mix.mixed_loss(logits, targets))]
        else:
            lam = self.sample_lam(z.shape[0], z.device)
            mixed_logits, mixed_targets, logits = self.mix.mixed(z, targets, head, lam, logits)
            terms = self.terms_of("mixed", mixed_logits, mixed_targets)
        if self.mix.clean_weight > 0:
            terms += self.terms_of("clean", logits, targets, self.mix.clean_weight)
        return terms


class DenseMultiMixMethod(MultiMixMethod):
    """Dense MultiMix over the model's dense features (m, d, *spatial).

    Takes the :class:`MultiMixMethod` arguments plus ``attention`` and
    ``attention_grad``, ``position_weighting`` and ``pooled_weight`` of :class:`multimix.DenseMultiMix`. With
    self-distillation the teacher predicts a target per position. With
    ``mix_scope="global"`` the dense features (m, d, *spatial) are gathered,
    r times more bytes than pooled embeddings.

    The positions are the model's (``model.positions``: a ViT's patch tokens,
    not its class token) and the pooled term uses the model's own pooling, so
    that it trains the prediction the model makes. A model with a single
    position at this input size is warned about: Dense MultiMix is then
    MultiMix.
    """

    mix_class = DenseMultiMix
    uses_dense_features = True
    needs_positions = True

    def terms(self, model, x: Tensor, y: Tensor) -> List[LossTerm]:
        mix, head = self.mix, model.head
        targets = self.targets(model, x, y, dense=True)
        features, targets = self._scoped(model.encode(x), targets)
        if features.dim() < 3:
            raise ValueError(f"Dense MultiMix needs dense features (m, d, *spatial) from model.encode, got "
                             f"{tuple(features.shape)}; use MultiMix for pooled embeddings")
        zf = dense_positions(model, features)  # (m, d, r)
        m, r = zf.shape[0], zf.shape[2]
        self.warn_single_position(r, x)
        if targets.dim() > 2:
            targets = targets.flatten(2)  # (m, c, r)
            if targets.shape[2] != r:
                raise ValueError(f"per-position soft targets must have {r} positions, got {tuple(targets.shape)}")
        attention = mix.attention_map(zf, self.blend(targets), head)  # (m, r)
        losses = logits = None
        # the one pass (DenseMultiMix.position_losses) pools by the mean
        if self.one_pass(head, m) and (mix.pooled_weight == 0 or pools_by_mean(model)):
            logits = MF.apply_per_position(head, zf)  # (m, c, r)
            if targets.shape[1] == logits.shape[1]:  # not the teacher's (hard, teacher) 2c columns
                self.draws(zf.device)
                losses = mix.position_losses(logits, targets, attention)
        if losses is not None:
            dense, pooled = losses
            terms = [LossTerm("mixed", value=dense)]
        else:
            lam = self.sample_lam(m, zf.device)
            mixed_logits, mixed_targets, logits, weights = mix.mixed_positions(zf, targets, head, lam, attention,
                                                                               logits)
            c = mixed_logits.shape[-1]
            row_weights = None if weights is None else (weights / lam.shape[0]).reshape(-1)  # the mean over n tuples
            width = mixed_targets.shape[-1]  # c, or 2c under the teacher's separate_term
            terms = self.terms_of("mixed", mixed_logits.reshape(-1, c), mixed_targets.reshape(-1, width),
                                  row_weights=row_weights)
        if mix.clean_weight > 0:
            c, width = logits.shape[1], targets.shape[1]  # width: c, or 2c under the teacher's separate_term
            clean_targets = targets.unsqueeze(2).expand(-1, -1, r) if targets.dim() == 2 else targets
            terms += self.terms_of("clean", logits.transpose(1, 2).reshape(-1, c),
                                   clean_targets.transpose(1, 2).reshape(-1, width), mix.clean_weight)
        if mix.pooled_weight > 0 and losses is not None:
            terms.append(LossTerm("pooled", value=pooled, weight=mix.pooled_weight))
        elif mix.pooled_weight > 0:
            pooled_targets = targets if targets.dim() == 2 else targets.mean(dim=2)
            if pools_by_mean(model):
                # An affine head commutes with the mean over positions: g(mean_j z_j) = mean_j g(z_j).
                z, pooled_logits = zf.mean(dim=2), logits.mean(dim=2) if logits is not None else None
            else:
                z = model.pool(features)  # the model's own pooling (a ViT's class token)
                pooled_logits = head(z) if mix.is_affine(head) else None
            mixed_logits, mixed_targets, _ = mix.mixed(z, pooled_targets, head, lam, pooled_logits)
            terms += [term.scaled(mix.pooled_weight) for term in self.terms_of("pooled", mixed_logits, mixed_targets)]
        return terms

    def gathered_sizes(self, features: Tensor) -> Dict[str, Any]:
        return {"positions": features.shape[2:].numel(), "dense_targets": self.distill is not None}

    def warn_single_position(self, positions: int, x: Tensor) -> None:
        """Warn once when the dense features have a single position (Dense MultiMix is then MultiMix)."""
        if positions == 1 and not self.__dict__.get("_warned_single_position"):
            self.__dict__["_warned_single_position"] = True
            warnings.warn(f"Dense MultiMix: the model's dense features have a single position for inputs of shape "
                          f"{tuple(x.shape[1:])}, so dense mixing is plain MultiMix; use larger inputs or a "
                          "backbone that keeps a spatial map (less downsampling)", stacklevel=3)
