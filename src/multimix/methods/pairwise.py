"""Pairwise mixing baselines: input mixup, CutMix, manifold mixup.

All three draw one λ ~ Beta(α, α) per batch and pair each example i with
π(i) for a random permutation π; they differ only in where the pair is mixed.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from .. import functional as MF
from ..contract import check_mixable
from .base import Method
from .terms import LossTerm

__all__ = ["PairwiseMix", "InputMixup", "CutMix", "ManifoldMixup"]


class PairwiseMix(Method):
    """Base of the pairwise methods: one ``"mixed"`` term, (mixed logits, λ Y + (1 − λ) Y[π]).

    Args:
        alpha: α of Beta(α, α).
        **kwargs: see :class:`Method`.
    """

    def __init__(self, alpha: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.alpha = MF.check_alpha(alpha)

    def mixed_logits(self, model, x: Tensor, lam: Tensor, perm: Tensor) -> Tuple[Tensor, Tensor]:
        """Logits (m, c) of the mixed batch and the λ (0-d) that weighs the original example, given λ (0-d)."""
        raise NotImplementedError

    def terms_and_targets(self, model, x: Tensor, y: Tensor) -> Tuple[List[LossTerm], Tensor]:
        """The mixing terms and the un-mixed soft targets (m, c) they used."""
        targets = self.targets(model, x, y)
        generator = self.draws(x.device)
        lam = MF.sample_beta(self.alpha, generator=generator).to(x.device)  # 0-d: never read back to the host
        perm = MF.random_permutation(x.shape[0], generator=generator, device=x.device)
        logits, lam = self.mixed_logits(model, x, lam, perm)
        mixed_targets = torch.lerp(targets[perm], targets, lam.to(targets.dtype))
        return self.terms_of("mixed", logits, mixed_targets), targets

    def terms(self, model, x: Tensor, y: Tensor) -> List[LossTerm]:
        return self.terms_and_targets(model, x, y)[0]


class InputMixup(PairwiseMix):
    """Input mixup (Zhang et al., 2018): x̃ = λ x + (1 − λ) x[π].

    The mixed inputs are the model's layer 0, ``model.encode(x, 0, 0)``: x itself
    for every model except those whose examples are not values (a graph
    model's node indices become the nodes' feature rows).
    """

    mixes_at = "input"

    def mixed_logits(self, model, x, lam, perm):
        x = model.encode(x, 0, 0)
        return model(torch.lerp(x[perm], x, lam.to(x.dtype))), lam


class CutMix(PairwiseMix):
    """CutMix (Yun et al., 2019) on 1-D (m, C, L) or 2-D (m, C, H, W) inputs.

    A box of about 1 − λ of the grid is pasted from x[π]; λ is then corrected
    to the share of the grid left to the original example.
    """

    mixes_at = "input"
    needs_positions = True

    def mixed_logits(self, model, x, lam, perm):
        if x.dim() not in (3, 4):
            raise ValueError(f"CutMix needs inputs of shape (m, C, L) or (m, C, H, W), got {tuple(x.shape)}")
        box, lam = MF.cutmix_mask(x.shape[2:], lam, generator=self.draws(x.device), device=x.device)
        return model(torch.where(box, x[perm], x)), lam


class ManifoldMixup(PairwiseMix):
    """Manifold mixup (Verma et al., 2019): mix hidden states at a random layer.

    Layer k in ``layers`` is drawn uniformly per batch (on the host:
    :meth:`Method.host_uniform`); k = 0 mixes the input,
    k = ``model.num_stages`` the final dense features (the embedding).

    The paper uses α = 2.0 on CIFAR.

    Args:
        alpha: α of Beta(α, α).
        layers: candidate layers (default (0, 1, 2)).
    """

    mixes_at = "hidden"

    def __init__(self, alpha: float = 2.0, layers: Sequence[int] = (0, 1, 2), **kwargs):
        super().__init__(alpha, **kwargs)
        layers = tuple(layers)
        if not layers or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in layers):
            raise ValueError(f"layers must be a non-empty sequence of integers >= 0, got {layers!r}")
        self.layers = layers

    def mixed_logits(self, model, x, lam, perm):
        check_mixable(model, need_stages=True)
        if max(self.layers) > model.num_stages:
            raise ValueError(f"layers must lie in [0, {model.num_stages}] for this model "
                             f"({model.num_stages} stages), got {self.layers}")
        k = self.layers[int(self.host_uniform(x.device) * len(self.layers))]  # steers the code: drawn on the host
        hidden = model.encode(x, 0, k)
        hidden = torch.lerp(hidden[perm], hidden, lam.to(hidden.dtype))
        return model.head(model.pool(model.encode(hidden, k))), lam
