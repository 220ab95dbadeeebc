"""Calibration of top-1 predictions: reliability bins and the expected calibration error (ECE).

Pure tensor functions on any device and floating dtype; they compute in at
least float32 (int64 for counts) and check their arguments before doing any
work. :func:`multimix.evaluation.plots.plot_reliability_diagram` draws the
bins.

Notation: N examples, c classes.
"""

from __future__ import annotations

from typing import Dict, Mapping

import torch
from torch import Tensor

from ..checks import check_int
from .inputs import check_labels, check_tensor, work_dtype

__all__ = ["reliability_bins", "expected_calibration_error", "ece_from_bins"]


def _check_probs(probs) -> Tensor:
    check_tensor(probs, "probs", "(N, c)")
    if probs.dim() != 2 or probs.shape[0] < 1 or probs.shape[1] < 1:
        raise ValueError(f"probs must have shape (N, c) with N >= 1 and c >= 1, got {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise TypeError(f"probs must be a floating-point tensor, got dtype {probs.dtype}")
    p = probs.detach().float()
    if not bool(torch.isfinite(p).all()):
        raise ValueError("probs must be finite (rows on the simplex, e.g. softmax(logits))")
    atol = 2e-2 if torch.finfo(probs.dtype).bits <= 16 else 1e-3
    if bool((p < -atol).any()):
        raise ValueError("probs must be non-negative (rows on the simplex); did you pass logits? use softmax(logits)")
    worst = (p.sum(dim=1) - 1).abs().max().item()
    if worst > atol:
        raise ValueError(f"every row of probs must sum to 1 (rows on the simplex); worst row is off by {worst:.3g}. "
                         "Did you pass logits? use softmax(logits)")
    return probs


def reliability_bins(probs: Tensor, labels: Tensor, n_bins: int = 15) -> Dict[str, Tensor]:
    """Per-bin confidence, accuracy and count of top-1 predictions (the reliability diagram's data).

    The confidence of example i is ``max_k probs[i, k]``, its prediction the
    ``argmax`` (first index on ties). Confidences are put into ``n_bins``
    equal-width bins on [0, 1] that are closed on the right,
    B_b = (b/n_bins, (b+1)/n_bins] for b = 0 … n_bins − 1, except that a
    confidence of exactly 0 goes into the first bin. A confidence lying on an
    edge (as represented in the working dtype) therefore belongs to the lower
    bin.

    Args:
        probs: (N, c) class probabilities, each row on the simplex (rows must
            be non-negative and sum to 1 within 1e-3, 2e-2 in half precision).
        labels: (N,) integer true classes in [0, c).
        n_bins: number of bins, ≥ 1.

    Returns:
        dict of tensors on ``probs``' device:

        - ``edges``: (n_bins + 1,) bin edges 0 = e_0 < … < e_{n_bins} = 1;
        - ``confidence``: (n_bins,) mean confidence per bin (NaN where empty);
        - ``accuracy``: (n_bins,) fraction of correct predictions per bin
          (NaN where empty);
        - ``count``: (n_bins,) int64 number of examples per bin (sums to N).

        Floating tensors have dtype promote(probs.dtype, float32).

    Raises:
        ValueError: bad shapes, rows off the simplex, labels outside [0, c),
            ``n_bins`` < 1.
    """
    n_bins = check_int(n_bins, "n_bins", 1)
    probs = _check_probs(probs)
    labels = check_labels(labels, probs.shape[0], num_classes=probs.shape[1])

    work = work_dtype(probs)
    p = probs.detach().to(work)
    confidence, prediction = p.max(dim=1)
    correct = (prediction == labels.to(prediction.device)).to(work)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=work, device=p.device)
    # bucketize(right=False) returns i with inner[i-1] < conf <= inner[i]: right-closed bins,
    # conf <= e_1 (including 0) -> bin 0, conf > e_{n-1} -> last bin.
    index = torch.bucketize(confidence, edges[1:-1].contiguous(), right=False)
    count = torch.zeros(n_bins, dtype=torch.int64, device=p.device).index_add_(
        0, index, torch.ones_like(index))
    conf_sum = torch.zeros(n_bins, dtype=work, device=p.device).index_add_(0, index, confidence)
    correct_sum = torch.zeros(n_bins, dtype=work, device=p.device).index_add_(0, index, correct)
    denom = count.to(work)
    nan = torch.full_like(denom, float("nan"))
    occupied = count > 0
    return {
        "edges": edges,
        "confidence": torch.where(occupied, conf_sum / denom.clamp_min(1), nan),
        "accuracy": torch.where(occupied, correct_sum / denom.clamp_min(1), nan),
        "count": count,
    }


def ece_from_bins(bins: Mapping[str, Tensor]) -> float:
    """Σ_b (|B_b|/N)·|acc(B_b) − conf(B_b)| over the occupied bins of :func:`reliability_bins`.

    Lets a caller that already holds the bins (e.g. to plot them) get the ECE
    without binning again.
    """
    count = bins["count"]
    occupied = count > 0
    gap = (bins["accuracy"][occupied] - bins["confidence"][occupied]).abs()
    weight = count[occupied].to(gap.dtype) / count.sum().to(gap.dtype)
    return float((weight * gap).sum())


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Expected calibration error (Naeini et al., 2015; Guo et al., 2017) of top-1 predictions.

    ECE = Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)| over the equal-width,
    right-closed confidence bins of :func:`reliability_bins` (empty bins
    contribute 0), computed from that function's output.

    Args:
        probs: (N, c) class probabilities, rows on the simplex.
        labels: (N,) integer true classes in [0, c).
        n_bins: number of bins, ≥ 1 (15 is the usual choice).

    Returns:
        ECE as a fraction in [0, 1] (multiply by 100 for %).
    """
    return ece_from_bins(reliability_bins(probs, labels, n_bins))
