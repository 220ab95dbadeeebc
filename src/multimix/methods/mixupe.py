"""MixupE (Zou et al., UAI 2023): mixup plus a directional-derivative term."""

from __future__ import annotations

from typing import Dict, List, Literal, Optional, Sequence, Union, get_args

import torch
from torch import Tensor

from .. import functional as MF
from ..checks import check_choice
from .base import Method
from .distill import SelfDistillation
from .pairwise import CutMix, InputMixup, ManifoldMixup, PairwiseMix
from .settings import Setting, settings_of
from .terms import LossTerm, Objective, sum_in_order

__all__ = ["MixupE", "BASES"]

BaseName = Literal["mixup", "cutmix", "manifold_mixup"]
BASES = dict(zip(get_args(BaseName), (InputMixup, CutMix, ManifoldMixup)))

_VERSION_DEFAULT = object()  # threshold: τ = 1.0 for version 3, none for version 4


class MixupE(Method):
    """MixupE over any pairwise base method (input mixup by default).

    With L_mix the base loss, f the logits of a second forward pass on the clean
    batch and s_i = f_iᵀ(y_i − softmax(f_i))::

        L = L_mix − η (1 − E[λ']) (1/m) Σ_{i: s_i < τ} s_i,   E[λ'] = (α + 1)/(2α + 1)

    then L is rescaled by |L_mix| / |L| (both detached) so that its magnitude
    matches mixup, as in the official code (``mixup.py``). Its terms are the
    base's (L_mix, under the base's criterion) and ``"mixupe"`` (the value
    of the extra term, weight −η (1 − E[λ'])); :meth:`reduce` applies the
    rescaling. Its teacher, generator and criterion are the base's.

    Args:
        base: the pairwise base method: a :class:`PairwiseMix` instance, or its name (mixup, cutmix,
            manifold_mixup), built from ``**kwargs``.
        eta: η, weight of the extra term. Default 0.001, the value of the official README's example
            command (the official code's argument default is 1.0).
        version: 3 (gradients flow through y − softmax(f), threshold τ = 1.0)
            or 4 (residual detached, no threshold), the official code's versions.
        threshold: τ; overrides the version's default (``None``: keep every example).
        **kwargs: to the base method (``alpha``, ``num_classes``, ...) when ``base`` is a name.
    """

    @classmethod
    def settings(cls) -> Dict[str, Setting]:
        return settings_of(cls, *BASES.values())

    def __init__(self, base: Union[BaseName, PairwiseMix] = "mixup", *, eta: float = 1e-3,
                 version: Literal[3, 4] = 4, threshold: Optional[float] = _VERSION_DEFAULT, **kwargs):
        if base is None or isinstance(base, str):
            base = BASES[check_choice(base or "mixup", "MixupE base", tuple(BASES))](**kwargs)
        elif kwargs:
            raise TypeError(f"pass {sorted(kwargs)} to the base method, not to MixupE, when base is given")
        if not isinstance(base, PairwiseMix):
            raise TypeError(f"base must be a pairwise method (InputMixup, CutMix, ManifoldMixup), got {type(base).__name__}")
        if version not in (3, 4):
            raise ValueError(f"version must be 3 or 4 (official MixupE code), got {version!r}")
        if not (isinstance(eta, (int, float)) and eta >= 0):
            raise ValueError(f"eta must be a number >= 0, got {eta!r}")
        if threshold is _VERSION_DEFAULT:
            threshold = 1.0 if version == 3 else None
        super().__init__(num_classes=base.num_classes, label_smoothing=base.label_smoothing)
        self.base = base  # a submodule: its teacher is saved (once) under base.distill
        self.eta = float(eta)
        self.version = version
        self.threshold = threshold

    @property
    def distill(self) -> Optional[SelfDistillation]:
        """The base's teacher."""
        return self.base.distill if "base" in self._modules else None

    @distill.setter
    def distill(self, distill) -> None:
        if distill is not None:
            raise TypeError("MixupE's teacher is its base method's: pass distill to the base")

    @property
    def objective(self) -> Objective:
        """The base's objective (its criterion)."""
        return self.base.objective

    @objective.setter
    def objective(self, objective) -> None:
        pass  # set by Method.__init__ before the base is attached; MixupE uses the base's

    @property
    def generator(self) -> Optional[torch.Generator]:
        """The base's generator (one generator)."""
        return self.base.generator if "base" in self._modules else None

    @generator.setter
    def generator(self, generator) -> None:
        self.base.generator = generator

    def draws(self, device) -> torch.Generator:
        return self.base.draws(device)

    def update(self, model) -> None:
        """Counts the step; the base advances its teacher (once)."""
        self.steps += 1
        self.base.update(model)

    @property
    def mixes_at(self) -> str:
        """Where the base method mixes."""
        return self.base.mixes_at

    @property
    def needs_positions(self) -> bool:
        return self.base.needs_positions

    def __repr__(self) -> str:
        return f"MixupE(base={self.base!r}, eta={self.eta}, version={self.version}, threshold={self.threshold})"

    def terms(self, model, x: Tensor, y: Tensor) -> List[LossTerm]:
        terms, targets = self.base.terms_and_targets(model, x, y)
        term = MF.mixupe_residual_term(model(x), self.base.blend(targets), threshold=self.threshold,
                                       detach_residual=self.version == 4)
        mean_lam = MF.beta_mean(self.base.alpha + 1.0, self.base.alpha)
        return [*terms, LossTerm("mixupe", value=term, weight=-(self.eta * (1.0 - mean_lam)))]

    def reduce(self, terms: Sequence[LossTerm]) -> Tensor:
        """L_mix + the ``"mixupe"`` term, rescaled by |L_mix| / |L|; other terms (consistency) added after."""
        values = self.objective.weighted(terms)
        mix = [v for t, v in zip(terms, values) if t.name not in ("mixupe", "consistency")]
        extra = [v for t, v in zip(terms, values) if t.name == "mixupe"]
        rest = [v for t, v in zip(terms, values) if t.name == "consistency"]
        if not mix:  # only unlabelled rows: nothing to rescale
            return sum_in_order(rest)
        loss_mix = sum_in_order(mix)
        loss = sum_in_order([loss_mix, *extra])
        loss = loss * (loss_mix.detach().abs() / loss.detach().abs())
        return sum_in_order([loss, *rest])
