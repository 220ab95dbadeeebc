"""Per-example losses of logits against soft targets: the pluggable part of every method's objective.

A criterion maps logits (k, c) and soft targets (k, c) to per-row losses
(k,) (or to a 0-d mean, as ``torch.nn.functional`` losses do).
:class:`multimix.methods.Objective` takes the mean over rows (or a weighted
sum where a term says so) and sums the terms. Every method mixes targets
linearly, so the targets a criterion sees are convex combinations of the
rows a user gave: probabilities for single-label data, multi-hot rows mixed
for multi-label data (:func:`bce_with_logits`).

Pure tensor functions; no state.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_label_smoothing

__all__ = ["soft_cross_entropy", "bce_with_logits", "LabelSmoothing", "Criterion"]

Criterion = Callable[[Tensor, Tensor], Tensor]


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """−Σ_c targets · log_softmax(logits) per row: (k, c), (k, c) → (k,), in at least float32.

    The default criterion; its mean over rows is :func:`multimix.functional.soft_cross_entropy` bit for bit
    (the same form: logsumexp(f)·Σ_c y_c − Σ_c y_c f_c, cheaper than log_softmax over a short class dimension).
    """
    work = logits.float()
    weights = targets.to(work.dtype)
    return torch.logsumexp(work, dim=-1) * weights.sum(dim=-1) - (weights * work).sum(dim=-1)


def bce_with_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy with logits, the mean over the c classes of each row: (k, c), (k, c) → (k,).

    The mean over rows equals ``F.binary_cross_entropy_with_logits(logits, targets)`` (timm's
    ``BinaryCrossEntropy`` without smoothing). Targets may be multi-hot (multi-label data): methods
    accept label rows that do not sum to 1 with this criterion.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), targets.to(torch.float32), reduction="none").mean(-1)


bce_with_logits.multi_label = True  # label rows need not sum to 1 (Method.targets reads this)


class LabelSmoothing:
    """Label smoothing inside the loss: ``criterion(logits, (1 − ε) targets + ε / c)``.

    Unlike a method's ``label_smoothing`` (applied to integer labels before any mixing), this smooths
    whatever targets reach the loss: mixed targets, a teacher's soft targets, soft labels given by the user.
    For integer labels without mixing it equals ``F.cross_entropy(logits, y, label_smoothing=ε)``.

    Args:
        smoothing: ε in [0, 1).
        criterion: the loss applied to the smoothed targets (default :func:`soft_cross_entropy`).
    """

    def __init__(self, smoothing: float = 0.1, criterion: Criterion = soft_cross_entropy):
        self.smoothing = float(check_label_smoothing(smoothing))
        if not callable(criterion):
            raise TypeError(f"criterion must be callable (logits, targets) -> losses, got {type(criterion).__name__}")
        self.criterion = criterion
        self.multi_label = bool(getattr(criterion, "multi_label", False))

    def __repr__(self) -> str:
        return f"LabelSmoothing({self.smoothing}, criterion={getattr(self.criterion, '__name__', self.criterion)})"

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        smoothed = targets * (1.0 - self.smoothing) + self.smoothing / targets.shape[-1]
        return self.criterion(logits, smoothed)
