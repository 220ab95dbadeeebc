"""Out-of-distribution detection: per-example scores (MSP, energy) and detection metrics (AUROC, FPR at TPR).

Scores follow one convention: higher means more in-distribution, and
in-distribution is the positive class of the detection metrics. Pure tensor
functions on any device and dtype; scores are computed in at least float32,
rank sums in exact integer arithmetic, and arguments are checked before any
work is done.

Notation: N examples, c classes; N_in / N_out in- and out-of-distribution examples.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import check_number, check_positive
from .inputs import check_tensor, work_dtype

__all__ = ["msp_score", "energy_score", "auroc", "fpr_at_tpr"]


def _check_logits(logits) -> Tensor:
    check_tensor(logits, "logits", "(N, c)")
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits must have shape (N, c) with c >= 1, got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    return logits


def _check_scores(scores, name: str) -> Tensor:
    check_tensor(scores, name, "(N,)")
    if scores.dim() != 1 or scores.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty 1-D tensor of scores (N,), got shape {tuple(scores.shape)}")
    if scores.is_complex() or scores.dtype == torch.bool:
        raise TypeError(f"{name} must be a real-valued tensor, got dtype {scores.dtype}")
    if scores.is_floating_point() and bool(torch.isnan(scores).any()):
        raise ValueError(f"{name} must not contain NaN")
    return scores


def msp_score(logits: Tensor) -> Tensor:
    """Maximum softmax probability max_k softmax(logits)_k (Hendrycks & Gimpel, 2017).

    Args:
        logits: (N, c).

    Returns:
        (N,) scores in [1/c, 1], dtype promote(logits.dtype, float32); higher
        means more in-distribution.
    """
    logits = _check_logits(logits)
    return torch.softmax(logits.detach().to(work_dtype(logits)), dim=1).amax(dim=1)


def energy_score(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Negative free energy T·logsumexp_k(logits_k / T) (Liu et al., 2020).

    Liu et al. define the energy E(x) = −T·logsumexp(f(x)/T) and detect OOD
    inputs by high energy; this returns −E(x), so that, as for
    :func:`msp_score`, higher means more in-distribution.

    Args:
        logits: (N, c).
        temperature: T > 0.

    Returns:
        (N,) scores, dtype promote(logits.dtype, float32).
    """
    temperature = check_positive(temperature, "temperature")
    logits = _check_logits(logits)
    work = logits.detach().to(work_dtype(logits))
    return temperature * torch.logsumexp(work / temperature, dim=1)


def auroc(scores_in: Tensor, scores_out: Tensor) -> float:
    """Area under the ROC curve for telling in-distribution (positive) from OOD examples.

    AUROC = P(s_in > s_out) + ½·P(s_in = s_out) for a random in/out pair, the
    Mann–Whitney U statistic divided by N_in·N_out, computed exactly from
    mid-ranks (ties count ½) after one sort: O(N log N) time, O(N) memory,
    with integer arithmetic for the rank sums (exact for any N). Equals
    ``sklearn.metrics.roc_auc_score`` with in-distribution labelled 1.

    Args:
        scores_in: (N_in,) scores of in-distribution examples (higher = more
            in-distribution, e.g. :func:`msp_score`).
        scores_out: (N_out,) scores of OOD examples; moved to ``scores_in``'s
            device. ±inf is allowed, NaN is not.

    Returns:
        AUROC in [0, 1]: 1 when every in-distribution score exceeds every OOD
        score, 0.5 for identical score distributions.
    """
    scores_in = _check_scores(scores_in, "scores_in")
    scores_out = _check_scores(scores_out, "scores_out")
    n_in, n_out = scores_in.shape[0], scores_out.shape[0]
    dtype = torch.promote_types(scores_in.dtype, scores_out.dtype)
    scores = torch.cat([scores_in.detach().to(dtype), scores_out.detach().to(device=scores_in.device, dtype=dtype)])
    order = scores.argsort()
    _, group, counts = torch.unique_consecutive(scores[order], return_inverse=True, return_counts=True)
    # 2 × (mid-rank, 1-based) of each tie group: ranks first..last average to (2·last − count + 1) / 2
    twice_rank = 2 * counts.cumsum(0) - counts + 1
    is_in = order < n_in
    twice_rank_sum = int(twice_rank[group][is_in].sum())
    u_twice = twice_rank_sum - n_in * (n_in + 1)  # 2·U = 2·R_in − n_in(n_in + 1)
    return u_twice / (2 * n_in * n_out)


def fpr_at_tpr(scores_in: Tensor, scores_out: Tensor, tpr: float = 0.95) -> float:
    """False-positive rate (share of OOD examples accepted) at the threshold that keeps ``tpr`` of the in-distribution.

    In-distribution is positive and an example is accepted when its score is
    ≥ the threshold τ. With k the smallest integer such that k / N_in ≥ tpr
    (in float64, as scikit-learn compares), τ is the k-th largest
    in-distribution score, i.e. the largest threshold whose true-positive
    rate #{s_in ≥ τ} / N_in is at least ``tpr`` (ties can make it exceed
    ``tpr``), and the result is #{s_out ≥ τ} / N_out.

    This is the usual "FPR at 95% TPR" (``tpr=0.95``): it equals
    ``fpr[np.searchsorted(tpr_curve, 0.95, side="left")]`` for
    ``fpr, tpr_curve, _ = sklearn.metrics.roc_curve(y, s, drop_intermediate=False)``,
    i.e. the FPR at the first ROC point with TPR ≥ 0.95, without
    interpolation. (With roc_curve's default ``drop_intermediate=True`` a
    collinear point can be dropped and the first remaining point can have a
    higher FPR.)

    Args:
        scores_in: (N_in,) in-distribution scores (higher = more in-distribution).
        scores_out: (N_out,) OOD scores; ±inf allowed, NaN not.
        tpr: target true-positive rate in (0, 1].

    Returns:
        FPR as a fraction in [0, 1].
    """
    tpr = check_number(tpr, "tpr", minimum=0.0, exclusive=True, maximum=1.0)
    scores_in = _check_scores(scores_in, "scores_in")
    scores_out = _check_scores(scores_out, "scores_out")
    n_in, n_out = scores_in.shape[0], scores_out.shape[0]
    k = min(max(math.ceil(tpr * n_in), 1), n_in)
    # ceil(tpr·N_in) can be off by one in floating point: settle on the smallest k with k / N_in ≥ tpr
    while k > 1 and (k - 1) / n_in >= tpr:
        k -= 1
    while k < n_in and k / n_in < tpr:
        k += 1
    dtype = torch.promote_types(scores_in.dtype, scores_out.dtype)
    threshold = scores_in.detach().to(dtype).sort(descending=True).values[k - 1]
    accepted = scores_out.detach().to(device=scores_in.device, dtype=dtype) >= threshold
    return int(accepted.sum()) / n_out
