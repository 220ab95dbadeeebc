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

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import functional as MF
from .checks import check_label_smoothing

__all__ = ["soft_cross_entropy", "bce_with_logits", "softmax_bce", "LabelSmoothing", "Criterion"]

Criterion = Callable[[Tensor, Tensor], Tensor]


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """−Σ_c targets · log_softmax(logits) per row: (k, c), (k, c) → (k,), in at least float32.

    The default criterion: :func:`multimix.functional.soft_cross_entropy` with ``reduction="none"`` (the one
    formula), so its mean over rows is that function's default bit for bit.
    """
    return MF.soft_cross_entropy(logits, targets, reduction="none")


def bce_with_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy with logits, the mean over the c classes of each row: (k, c), (k, c) → (k,).

    The mean over rows equals ``F.binary_cross_entropy_with_logits(logits, targets)`` (timm's
    ``BinaryCrossEntropy`` without smoothing). Targets may be multi-hot (multi-label data): methods
    accept label rows that do not sum to 1 with this criterion.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), targets.to(torch.float32), reduction="none").mean(-1)


bce_with_logits.multi_label = True  # label rows need not sum to 1 (Method.targets reads this)


def softmax_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy of the softmax probabilities p = softmax(logits) against soft targets t, the mean over
    the c classes of each row: −mean_c [t log p + (1 − t) log(1 − p)], (k, c), (k, c) → (k,), in float32.

    GraphMix's loss on mixed nodes (its official code: ``BCELoss()(softmax(logits), mixed_targets)``, whose
    mean over rows this is; like ``BCELoss`` it bounds each log below, here at log of float32's smallest normal).
    """
    log_p = torch.log_softmax(logits.float(), dim=-1)
    tiny = torch.finfo(log_p.dtype).tiny
    # log(1 − p) = log(−expm1(log p)): exact for small p; the clamp keeps p = 1 finite with a zero gradient.
    log_not_p = torch.log((-torch.expm1(log_p)).clamp_min(tiny))
    weights = targets.to(log_p.dtype)
    return -(weights * log_p.clamp_min(math.log(tiny)) + (1.0 - weights) * log_not_p).mean(-1)


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
