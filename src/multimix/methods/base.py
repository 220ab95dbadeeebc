"""The training-method interface: ``loss = method(model, x, y)``.

A method takes a model that follows :mod:`multimix.contract` (``encode``,
``pool``, ``head``), an input batch x (m, ...) and labels y (integer (m,) or
soft (m, c)), and returns a 0-d loss to back-propagate. An integer label
``UNLABELLED`` (−1) marks an unlabelled example (semi-supervised training):
its target is the self-distillation teacher's prediction, so such batches
need ``distill``; every method then mixes it like any other example, or,
with the teacher's ``consistency_weight`` > 0, applies its loss to the
labelled examples only and adds the teacher's consistency loss on the
unlabelled ones. Subclasses implement ``loss(model, x, y)``; calling the
method routes unlabelled examples and returns the total. Each method states
where it mixes (``mixes_at``: ``"none"``, ``"input"``, ``"hidden"`` or
``"embedding"``). After each optimiser step call ``method.update(model)``: it
advances the EMA teacher when self-distillation is on and is a no-op otherwise.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from .. import functional as MF
from ..checks import check_label_smoothing, check_positive_int
from ..contract import check_mixable, num_classes_of
from .distill import SelfDistillation
from .settings import Setting, settings_of

__all__ = ["Method", "ERM", "UNLABELLED", "unlabelled_rows"]

UNLABELLED = -1  # the integer label of an unlabelled example


def unlabelled_rows(y) -> Optional[Tensor]:
    """The (m,) bool mask of the examples labelled ``UNLABELLED`` in integer labels y (m,); None when there are
    none, or when y is soft (m, c) or not a tensor."""
    if not isinstance(y, Tensor) or y.is_floating_point() or y.dim() != 1:
        return None
    unlabelled = y == UNLABELLED
    return unlabelled if bool(unlabelled.any()) else None


class Method:
    """Base class of every training method.

    Args:
        num_classes: c; read from the model's ``nn.Linear`` head when omitted.
        label_smoothing: smoothing of the one-hot targets.
        distill: a :class:`SelfDistillation` whose EMA teacher blends soft
            targets into the hard ones; every method interpolates them exactly
            like hard targets.
        generator: torch generator for every random draw of the method.
    """

    mixes_at = "none"
    uses_dense_features = False  # True: the loss needs the dense features (m, d, *spatial), not pooled ones
    needs_positions = False  # True: only for inputs with positions (sequences, images), not for table rows

    @classmethod
    def settings(cls) -> Dict[str, Setting]:
        """The user settings of this method (keyword arguments of its constructor chain), by name."""
        return settings_of(cls)

    def __init__(
        self,
        *,
        num_classes: Optional[int] = None,
        label_smoothing: float = 0.0,
        distill: Optional[SelfDistillation] = None,
        generator: Optional[torch.Generator] = None,
    ):
        if num_classes is not None:
            check_positive_int(num_classes, "num_classes")
        label_smoothing = check_label_smoothing(label_smoothing)
        if distill is not None and not isinstance(distill, SelfDistillation):
            raise TypeError(f"distill must be a multimix.SelfDistillation or None, got {type(distill).__name__}")
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.distill = distill
        self.generator = generator

    def __repr__(self) -> str:
        fields = {k: v for k, v in vars(self).items() if k not in ("generator", "distill", "mix") and v is not None}
        if self.distill is not None:
            fields["distill"] = self.distill
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"

    def targets(self, model, x: Tensor, y: Tensor, *, dense: bool = False) -> Tensor:
        """Soft targets: (m, c), or (m, c, *spatial) when ``dense`` and a teacher predicts per position."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"x must hold at least one example, got shape {tuple(x.shape)}")
        check_mixable(model)
        num_classes = self.num_classes or num_classes_of(model)
        unlabelled = unlabelled_rows(y)
        if unlabelled is not None:
            if self.distill is None:
                raise ValueError(f"y marks {int(unlabelled.sum())} examples unlabelled ({UNLABELLED}); their "
                                 "targets come from a teacher: pass distill=SelfDistillation(model)")
            y = y.masked_fill(unlabelled, 0)  # a placeholder class: the teacher's prediction replaces these rows
            unlabelled = unlabelled.to(x.device)
        hard = MF.as_soft_targets(y, num_classes, batch_size=x.shape[0], label_smoothing=self.label_smoothing)
        hard = hard.to(x.device)
        if self.distill is None:
            return hard
        return self.distill.targets(x, hard, dense=dense, unlabelled=unlabelled)

    def update(self, model) -> None:
        """Call after each optimiser step (advances the EMA teacher if any)."""
        if self.distill is not None:
            self.distill.update(model)

    def __call__(self, model, x: Tensor, y: Tensor) -> Tensor:
        """The training loss (0-d) of the batch x (m, ...) with labels y: :meth:`loss`, plus the teacher's
        consistency loss on the unlabelled examples when its ``consistency_weight`` is set."""
        unlabelled = unlabelled_rows(y) if self.distill is not None and self.distill.consistency_weight else None
        if unlabelled is None:
            return self.loss(model, x, y)
        labelled = ~unlabelled
        consistency = self.distill.consistency(model, x[unlabelled.to(x.device)])
        if not bool(labelled.any()):
            return consistency
        return self.loss(model, x[labelled.to(x.device)], y[labelled]) + consistency

    def loss(self, model, x: Tensor, y: Tensor) -> Tensor:
        """The method's loss (0-d) on x (m, ...) and y (m,) or (m, c); unlabelled rows get teacher targets."""
        raise NotImplementedError


class ERM(Method):
    """Empirical risk minimisation: cross-entropy on the clean batch."""

    def loss(self, model, x: Tensor, y: Tensor) -> Tensor:
        targets = self.targets(model, x, y)
        return MF.soft_cross_entropy(model(x), targets)
