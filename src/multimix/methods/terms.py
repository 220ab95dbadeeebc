"""Loss terms and the objective that sums them: mixing kept apart from the loss.

A method returns its loss as a list of :class:`LossTerm` (``method.terms(model, x, y)``):
each holds the logits and the soft targets of one part of the loss (the mixed
examples, the clean examples, Dense MultiMix's pooled term ...) and its weight,
or, for a part that is not a loss of logits against targets (the teacher's
consistency, MixupE's directional term), its value. An :class:`Objective`
applies one criterion (:mod:`multimix.losses`; soft cross-entropy by default)
to every term and sums them. Terms of several forward passes, or of several
models that share parameters (GraphMix's GCN and MLP), are summed by the same
objective: ``objective(terms_a + terms_b)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Sequence

from torch import Tensor

from .. import losses

__all__ = ["LossTerm", "Objective", "sum_in_order"]


@dataclass(frozen=True)
class LossTerm:
    """One part of a loss.

    Attributes:
        name: what it is: ``"mixed"``, ``"clean"``, ``"pooled"``, ``"consistency"``, ``"mixupe"``, ...
        logits: (k, c) predictions, one row per (mixed) example or position; None for a ``value`` term.
        targets: (k, c) soft targets of the same rows (teacher targets, when a teacher is on, are blended in).
        weight: the term's weight in the sum.
        row_weights: (k,) optional weights of the rows: the term's loss is Σ_i row_weights_i ℓ_i instead of
            the mean over rows (Dense MultiMix's ``position_weighting="attention"``).
        value: a 0-d loss the method computed itself (no criterion applies), instead of logits and targets.
        criterion: the per-row loss of this term when it is not the objective's (GraphMix's BCE of softmax
            probabilities on its mixed nodes); None: the objective's.
    """

    name: str
    logits: Optional[Tensor] = None
    targets: Optional[Tensor] = None
    weight: float = 1.0
    row_weights: Optional[Tensor] = None
    value: Optional[Tensor] = None
    criterion: Optional[Callable[[Tensor, Tensor], Tensor]] = None

    def __post_init__(self):
        if self.value is not None:
            if self.logits is not None or self.targets is not None or self.criterion is not None \
                    or self.value.dim() != 0:
                raise ValueError(f"loss term {self.name!r}: give a 0-d value, or logits and targets, not both")
            return
        if not isinstance(self.logits, Tensor) or not isinstance(self.targets, Tensor):
            raise TypeError(f"loss term {self.name!r} needs logits and targets tensors (or a value)")
        if self.logits.dim() != 2 or self.targets.shape != self.logits.shape:
            raise ValueError(f"loss term {self.name!r}: logits and targets must both have shape (k, c), got "
                             f"{tuple(self.logits.shape)} and {tuple(self.targets.shape)}")
        if self.row_weights is not None and self.row_weights.shape != self.logits.shape[:1]:
            raise ValueError(f"loss term {self.name!r}: row_weights must have shape ({self.logits.shape[0]},), got "
                             f"{tuple(self.row_weights.shape)}")

    def scaled(self, weight: float, prefix: str = "") -> "LossTerm":
        """This term with its weight multiplied by ``weight`` and ``prefix`` before its name."""
        return replace(self, name=prefix + self.name, weight=self.weight * float(weight))


class Objective:
    """Σ_terms weight · loss(term), with loss(term) = the mean over rows of ``criterion(logits, targets)``.

    Args:
        criterion: per-row loss (k, c), (k, c) → (k,), or a callable returning the 0-d mean (as
            ``torch.nn.functional`` losses do; then terms cannot weigh rows). Default
            :func:`multimix.losses.soft_cross_entropy`.
    """

    def __init__(self, criterion: Optional[Callable[[Tensor, Tensor], Tensor]] = None):
        if criterion is not None and not callable(criterion):
            raise TypeError(f"criterion must be callable (logits, targets) -> losses, got {type(criterion).__name__}")
        self.criterion = criterion or losses.soft_cross_entropy

    def __repr__(self) -> str:
        return f"Objective({getattr(self.criterion, '__name__', self.criterion)!s})"

    @property
    def soft_cross_entropy(self) -> bool:
        """Whether the criterion is the default, :func:`multimix.losses.soft_cross_entropy`."""
        return self.criterion is losses.soft_cross_entropy

    @property
    def multi_label(self) -> bool:
        """Whether the criterion takes target rows that do not sum to 1 (multi-hot labels)."""
        return bool(getattr(self.criterion, "multi_label", False))

    def term_loss(self, term: LossTerm) -> Tensor:
        """The unweighted 0-d loss of one term."""
        if term.value is not None:
            return term.value
        rows = (term.criterion or self.criterion)(term.logits, term.targets)
        if not isinstance(rows, Tensor) or rows.shape not in ((), term.logits.shape[:1]):
            raise ValueError(f"the criterion must return per-row losses ({term.logits.shape[0]},) or a 0-d loss, "
                             f"got {tuple(rows.shape) if isinstance(rows, Tensor) else type(rows).__name__}")
        if rows.dim() == 0:
            if term.row_weights is not None:
                raise ValueError(f"loss term {term.name!r} weighs its rows: the criterion must return per-row "
                                 "losses (reduction='none')")
            return rows
        if term.row_weights is None:
            return rows.mean()
        return (rows * term.row_weights.to(rows.dtype)).sum()

    def weighted(self, terms: Sequence[LossTerm]) -> List[Tensor]:
        """weight · loss of every term, in order."""
        out = []
        for term in terms:
            loss = self.term_loss(term)
            out.append(loss if term.weight == 1.0 else term.weight * loss)
        return out

    def __call__(self, terms: Sequence[LossTerm]) -> Tensor:
        """The 0-d sum of the weighted term losses (in the order given)."""
        return sum_in_order(self.weighted(terms))


def sum_in_order(values: Sequence[Tensor]) -> Tensor:
    """values[0] + values[1] + ... (0-d tensors), left to right; ``ValueError`` when there are none."""
    if not values:
        raise ValueError("no loss terms to sum")
    out = values[0]
    for value in values[1:]:
        out = out + value
    return out
