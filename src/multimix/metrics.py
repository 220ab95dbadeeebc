"""Evaluation metrics as pure tensor functions: calibration, OOD detection, embedding geometry, plots.

Nothing here holds state. Every function takes tensors on any device and of
any floating dtype, computes in at least float32 (integer arithmetic where a
count must be exact), checks its arguments before doing any work (``ValueError``
naming the argument) and draws random numbers only from the ``generator`` it
is given. Where a random subset is needed and no generator is given, a fresh
generator seeded with 0 is used, so the result is deterministic and torch's
global RNG is never touched.

Plotting functions import matplotlib lazily and draw on a bare
``matplotlib.figure.Figure`` (Agg canvas), so they neither need a display nor
change pyplot's global backend or state. :func:`project_2d` with
``method="tsne"`` imports scikit-learn lazily; nothing else needs it.

Notation: N examples (M, the number actually used after sub-sampling), c
classes, d embedding channels.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from .functional import check_positive

__all__ = [
    "reliability_bins",
    "expected_calibration_error",
    "plot_reliability_diagram",
    "msp_score",
    "energy_score",
    "auroc",
    "fpr_at_tpr",
    "alignment",
    "uniformity",
    "class_distance_ratio",
    "project_2d",
    "plot_embeddings",
]

PathLike = Union[str, "os.PathLike[str]"]

# ---------------------------------------------------------------------------
# argument checks (raise before any work is done)
# ---------------------------------------------------------------------------


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_tensor(x, name: str, shape_doc: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape_doc}, got {type(x).__name__}")
    return x


def _check_labels(labels, n: int, name: str = "labels", num_classes: Optional[int] = None) -> Tensor:
    _check_tensor(labels, name, "(N,)")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class indices, got dtype {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) (one class index per row), got {tuple(labels.shape)}")
    if num_classes is not None:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes}) (c = {num_classes}), got values in [{lo}, {hi}]")
    return labels


def _check_probs(probs) -> Tensor:
    _check_tensor(probs, "probs", "(N, c)")
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


def _check_logits(logits) -> Tensor:
    _check_tensor(logits, "logits", "(N, c)")
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits must have shape (N, c) with c >= 1, got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    return logits


def _check_scores(scores, name: str) -> Tensor:
    _check_tensor(scores, name, "(N,)")
    if scores.dim() != 1 or scores.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty 1-D tensor of scores (N,), got shape {tuple(scores.shape)}")
    if scores.is_complex() or scores.dtype == torch.bool:
        raise TypeError(f"{name} must be a real-valued tensor, got dtype {scores.dtype}")
    if scores.is_floating_point() and bool(torch.isnan(scores).any()):
        raise ValueError(f"{name} must not contain NaN")
    return scores


def _check_embeddings(z, name: str = "z", min_points: int = 2) -> Tensor:
    _check_tensor(z, name, "(N, d)")
    if z.dim() != 2 or z.shape[0] < min_points or z.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, d) with N >= {min_points} and d >= 1, got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {z.dtype}")
    if not bool(torch.isfinite(z.detach()).all()):
        raise ValueError(f"{name} must be finite")
    return z


def _check_max_points(max_points) -> Optional[int]:
    if max_points is None:
        return None
    return _check_int(max_points, "max_points", 2)


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _check_path(path, name: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


# ---------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------


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
    n_bins = _check_int(n_bins, "n_bins", 1)
    probs = _check_probs(probs)
    labels = _check_labels(labels, probs.shape[0], num_classes=probs.shape[1])

    work = _work_dtype(probs)
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


def _ece_from_bins(bins: Mapping[str, Tensor]) -> float:
    """Σ_b (|B_b|/N)·|acc(B_b) − conf(B_b)| over the occupied bins of :func:`reliability_bins`."""
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
    return _ece_from_bins(reliability_bins(probs, labels, n_bins))


def plot_reliability_diagram(
    probs: Tensor,
    labels: Tensor,
    path: PathLike,
    *,
    n_bins: int = 15,
    title: Optional[str] = None,
) -> Path:
    """Save a reliability diagram (PNG): accuracy per confidence bin against the diagonal.

    Bars show the accuracy of each bin of :func:`reliability_bins`; the gap to
    the bin's mean confidence is drawn hatched on top, the diagonal is perfect
    calibration, and the ECE (in %) is in the legend. A lower panel shows the
    share of examples per bin.

    Args:
        probs: (N, c) class probabilities, rows on the simplex.
        labels: (N,) integer true classes.
        path: where to write the PNG; parent folders are created.
        n_bins: number of confidence bins, ≥ 1.
        title: figure title (default: "Reliability diagram").

    Returns:
        ``path`` as a :class:`pathlib.Path`.
    """
    path = _check_path(path)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None, got {type(title).__name__}")
    bins = reliability_bins(probs, labels, n_bins)
    ece = _ece_from_bins(bins)

    Figure, _ = _matplotlib()
    edges = bins["edges"].double().cpu()
    centres = ((edges[1:] + edges[:-1]) / 2).numpy()
    width = float(edges[1] - edges[0])
    count = bins["count"].cpu()
    occupied = (count > 0).numpy()
    acc = bins["accuracy"].double().cpu().nan_to_num(0.0).numpy()
    conf = bins["confidence"].double().cpu().nan_to_num(0.0).numpy()
    share = (count.double() / count.sum()).numpy()

    fig = Figure(figsize=(5.0, 6.0), dpi=120)
    ax, ax_count = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    ax.bar(centres[occupied], acc[occupied], width=width, color="#4477aa", edgecolor="black", linewidth=0.6,
           label=f"accuracy (ECE = {100 * ece:.2f}%)")
    gap_lo = [min(a, c) for a, c in zip(acc[occupied], conf[occupied])]
    gap_h = [abs(a - c) for a, c in zip(acc[occupied], conf[occupied])]
    ax.bar(centres[occupied], gap_h, bottom=gap_lo, width=width, color="#ee6677", alpha=0.35,
           edgecolor="#cc3311", hatch="//", linewidth=0.6, label="gap to confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1.0, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title or 'Reliability diagram'}\nECE = {100 * ece:.2f}% ({n_bins} bins)")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    ax_count.bar(centres, share, width=width, color="#bbbbbb", edgecolor="black", linewidth=0.6)
    ax_count.set_xlabel("confidence")
    ax_count.set_ylabel("share of examples")
    ax_count.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _matplotlib():
    """(Figure, colormaps) from matplotlib, imported lazily; no pyplot, no global backend switch."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'multimix[plots]' (or pip install matplotlib)") from err
    return Figure, matplotlib.colormaps


def _save(fig, path: Path, dpi: Optional[int] = None) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    FigureCanvasAgg(fig)  # attach an Agg canvas: no display, pyplot's backend untouched
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def new_figure(**kwargs):
    """A bare ``matplotlib.figure.Figure`` (no pyplot state); raises ImportError without matplotlib."""
    Figure, _ = _matplotlib()
    return Figure(**kwargs)


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG through an Agg canvas (no display, pyplot's backend untouched)."""
    return _save(fig, path, dpi)


# ---------------------------------------------------------------------------
# out-of-distribution scores and detection metrics
# ---------------------------------------------------------------------------


def msp_score(logits: Tensor) -> Tensor:
    """Maximum softmax probability max_k softmax(logits)_k (Hendrycks & Gimpel, 2017).

    Args:
        logits: (N, c).

    Returns:
        (N,) scores in [1/c, 1], dtype promote(logits.dtype, float32); higher
        means more in-distribution.
    """
    logits = _check_logits(logits)
    return torch.softmax(logits.detach().to(_work_dtype(logits)), dim=1).amax(dim=1)


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
    work = logits.detach().to(_work_dtype(logits))
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
    if isinstance(tpr, bool) or not isinstance(tpr, (int, float)):
        raise TypeError(f"tpr must be a number in (0, 1], got {tpr!r}")
    tpr = float(tpr)
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr!r}")
    scores_in = _check_scores(scores_in, "scores_in")
    scores_out = _check_scores(scores_out, "scores_out")
    n_in, n_out = scores_in.shape[0], scores_out.shape[0]
    k = min(max(math.ceil(tpr * n_in), 1), n_in)
    while k > 1 and (k - 1) / n_in >= tpr:
        k -= 1
    while k < n_in and k / n_in < tpr:
        k += 1
    dtype = torch.promote_types(scores_in.dtype, scores_out.dtype)
    threshold = scores_in.detach().to(dtype).sort(descending=True).values[k - 1]
    accepted = scores_out.detach().to(device=scores_in.device, dtype=dtype) >= threshold
    return int(accepted.sum()) / n_out


# ---------------------------------------------------------------------------
# embedding geometry
# ---------------------------------------------------------------------------


def _subset(n: int, max_points: Optional[int], generator: Optional[torch.Generator], device) -> Optional[Tensor]:
    """Indices of a uniformly random subset of ``max_points`` of range(n), or None to keep all."""
    if max_points is None or n <= max_points:
        return None
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    return torch.randperm(n, generator=generator, device=generator.device)[:max_points].to(device)


def _normalized(z: Tensor, labels: Optional[Tensor], max_points, generator) -> Tuple[Tensor, Optional[Tensor]]:
    """ẑ = z/‖z‖ (rows, in at least float32) of a random subset of at most ``max_points`` rows."""
    idx = _subset(z.shape[0], max_points, generator, z.device)
    if idx is not None:
        z = z[idx]
        labels = labels[idx.to(labels.device)] if labels is not None else None
    z = z.detach().to(_work_dtype(z))
    z = z / z.norm(dim=1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
    if labels is not None:
        labels = labels.to(z.device)
    return z, labels


def _pair_masks(labels: Tensor) -> Tuple[Tensor, Tensor]:
    """(same, different): (M, M) boolean masks of same-class pairs i ≠ j and different-class pairs."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    different = ~same
    same.fill_diagonal_(False)
    return same, different


def _check_pairs(labels: Tensor, need_different: bool) -> None:
    """Raise unless some class has ≥ 2 examples (and, if asked, there are ≥ 2 classes)."""
    counts = torch.unique(labels, return_counts=True)[1]
    if int(counts.max()) < 2:
        raise ValueError("labels must contain at least two examples of some class (no same-class pair)")
    if need_different and counts.numel() < 2:
        raise ValueError("labels must contain at least two classes (no different-class pair)")


def _embedding_args(z, labels, max_points, generator, need_different: bool):
    z = _check_embeddings(z)
    if labels is not None:
        labels = _check_labels(labels, z.shape[0])
    max_points = _check_max_points(max_points)
    _check_generator(generator)
    if labels is not None:
        _check_pairs(labels, need_different)
    return z, labels, max_points


def _after_subset(mask: Tensor, what: str, max_points) -> None:
    if not bool(mask.any()):
        raise ValueError(f"the random subset of max_points={max_points} examples holds no {what} pair; "
                         "increase max_points (or pass None to use every example)")


def alignment(
    z: Tensor,
    labels: Tensor,
    alpha: float = 2.0,
    *,
    max_points: Optional[int] = 4096,
    generator: Optional[torch.Generator] = None,
) -> float:
    """Alignment (Wang & Isola, 2020) with class labels defining the positive pairs.

    ℓ_align = mean over ordered pairs (i, j), i ≠ j, y_i = y_j, of
    ‖ẑ_i − ẑ_j‖^α with ẑ = z / ‖z‖; lower means tighter classes. It lies in
    [0, 2^α].

    Args:
        z: (N, d) embeddings, N ≥ 2.
        labels: (N,) integer classes; some class needs ≥ 2 examples.
        alpha: exponent α > 0.
        max_points: use a uniformly random subset of at most this many
            examples (≥ 2), so memory is O(max_points²) (≈ 64 MiB of float32
            distances at 4096); ``None`` uses all N.
        generator: draws the subset; ``None`` uses a fresh generator seeded
            with 0 (deterministic; the global RNG is untouched).

    Returns:
        ℓ_align as a float.
    """
    alpha = check_positive(alpha, "alpha")
    z, labels, max_points = _embedding_args(z, labels, max_points, generator, need_different=False)
    zh, lab = _normalized(z, labels, max_points, generator)
    same, _ = _pair_masks(lab)
    _after_subset(same, "same-class", max_points)
    dist = torch.cdist(zh, zh)
    return float(dist[same].pow(alpha).mean())


def uniformity(
    z: Tensor,
    t: float = 2.0,
    *,
    max_points: Optional[int] = 4096,
    generator: Optional[torch.Generator] = None,
) -> float:
    """Uniformity (Wang & Isola, 2020): log of the mean Gaussian potential between normalised embeddings.

    ℓ_unif = log [ (2 / (M(M − 1))) Σ_{i<j} exp(−t ‖ẑ_i − ẑ_j‖²) ] with
    ẑ = z / ‖z‖, computed with logsumexp. Lower (more negative) means more
    uniformly spread on the sphere; it lies in [−4t, 0].

    Args:
        z: (N, d) embeddings, N ≥ 2.
        t: scale t > 0.
        max_points: use a uniformly random subset of at most this many
            examples (≥ 2); ``None`` uses all N. See :func:`alignment`.
        generator: draws the subset; ``None`` uses a fresh generator seeded with 0.

    Returns:
        ℓ_unif as a float.
    """
    t = check_positive(t, "t")
    z, _, max_points = _embedding_args(z, None, max_points, generator, need_different=False)
    zh, _ = _normalized(z, None, max_points, generator)
    m = zh.shape[0]
    upper = torch.ones(m, m, dtype=torch.bool, device=zh.device).triu_(1)
    sq = torch.cdist(zh, zh).square()[upper]
    return float(torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel()))


def class_distance_ratio(
    z: Tensor,
    labels: Tensor,
    *,
    max_points: Optional[int] = 4096,
    generator: Optional[torch.Generator] = None,
) -> float:
    """Mean same-class distance / mean different-class distance between normalised embeddings.

    With ẑ = z / ‖z‖, the ratio of the mean of ‖ẑ_i − ẑ_j‖ over pairs
    i ≠ j with y_i = y_j to its mean over pairs with y_i ≠ y_j. Lower means
    tighter, better separated classes; about 1 when labels are unrelated to
    the geometry.

    Args:
        z: (N, d) embeddings, N ≥ 2.
        labels: (N,) integer classes; needs a class with ≥ 2 examples and ≥ 2 classes.
        max_points: use a uniformly random subset of at most this many
            examples (≥ 2); ``None`` uses all N. See :func:`alignment`.
        generator: draws the subset; ``None`` uses a fresh generator seeded with 0.

    Returns:
        The ratio as a float (inf if every different-class pair coincides).
    """
    z, labels, max_points = _embedding_args(z, labels, max_points, generator, need_different=True)
    zh, lab = _normalized(z, labels, max_points, generator)
    same, different = _pair_masks(lab)
    _after_subset(same, "same-class", max_points)
    _after_subset(different, "different-class", max_points)
    dist = torch.cdist(zh, zh)
    return float(dist[same].mean() / dist[different].mean())


# ---------------------------------------------------------------------------
# 2-D projections and embedding plots
# ---------------------------------------------------------------------------


def project_2d(z: Tensor, method: str = "pca", *, generator: Optional[torch.Generator] = None) -> Tensor:
    """Project embeddings to 2-D for plotting.

    - ``"pca"``: the first two principal components, from the SVD of the
      centred data (exact and deterministic; ``generator`` is unused). Each
      principal axis is oriented so that its largest-magnitude loading is
      positive (scikit-learn's ``svd_flip`` convention on the axes), which
      makes the result unique up to ties.
    - ``"tsne"``: scikit-learn's ``TSNE`` (imported lazily; scikit-learn must
      be installed), with perplexity min(30, (N − 1)/3) and ``random_state``
      drawn from ``generator`` (0 when ``None``). Runs on the CPU.

    Args:
        z: (N, d) embeddings with N ≥ 2 and d ≥ 2 (N ≥ 4 for t-SNE).
        method: ``"pca"`` or ``"tsne"``.
        generator: seeds t-SNE.

    Returns:
        (N, 2) coordinates on ``z``'s device, dtype promote(z.dtype, float32).
    """
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    z = _check_embeddings(z, min_points=4 if method == "tsne" else 2)
    if z.shape[1] < 2:
        raise ValueError(f"z must have at least 2 feature dims to project to 2-D, got shape {tuple(z.shape)}")
    _check_generator(generator)
    work = _work_dtype(z)
    x = z.detach().to(work)
    if method == "pca":
        x = x - x.mean(dim=0, keepdim=True)
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        axes = vh[:2]  # (2, d)
        pivot = axes.abs().argmax(dim=1, keepdim=True)
        signs = axes.gather(1, pivot).sign()
        axes = axes * torch.where(signs == 0, torch.ones_like(signs), signs)
        return x @ axes.T
    try:
        from sklearn.manifold import TSNE
    except ImportError as err:
        raise ImportError("project_2d(method='tsne') needs scikit-learn: pip install scikit-learn "
                          "(or use method='pca')") from err
    if generator is None:
        seed = 0
    else:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
    n = x.shape[0]
    tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3.0), init="pca", random_state=seed)
    out = tsne.fit_transform(x.cpu().double().numpy())
    return torch.from_numpy(out).to(device=z.device, dtype=work)


def plot_embeddings(
    panels: Mapping[str, Tuple[Tensor, Tensor]],
    path: PathLike,
    *,
    method: str = "pca",
    title: Optional[str] = None,
    max_points: Optional[int] = 4096,
    generator: Optional[torch.Generator] = None,
) -> Path:
    """Save a PNG with one 2-D scatter panel of embeddings per entry, coloured by class.

    Each panel is projected separately with :func:`project_2d`; colours come
    from the tab10 colormap (class k gets colour k mod 10, so classes ≥ 10
    reuse colours); a class legend is shown when there are at most 10 classes.

    Args:
        panels: panel title → (z, labels), z of shape (N, d) and labels (N,)
            integer classes (N may differ between panels). Drawn in order,
            up to 4 per row.
        path: where to write the PNG; parent folders are created.
        method: ``"pca"`` or ``"tsne"``, see :func:`project_2d`.
        title: figure title (the method's name when ``None``).
        max_points: plot a uniformly random subset of at most this many points
            per panel (≥ 2); ``None`` plots all (t-SNE is slow beyond a few
            thousand points).
        generator: draws the subsets and seeds t-SNE; ``None`` uses a fresh
            generator seeded with 0.

    Returns:
        ``path`` as a :class:`pathlib.Path`.
    """
    path = _check_path(path)
    if not isinstance(panels, Mapping) or len(panels) == 0:
        raise ValueError("panels must be a non-empty dict mapping a panel title to (z, labels)")
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None, got {type(title).__name__}")
    max_points = _check_max_points(max_points)
    _check_generator(generator)
    for name, item in panels.items():
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"panels[{name!r}] must be a pair (z, labels), got {type(item).__name__}")
        z = _check_embeddings(item[0], name=f"panels[{name!r}][0] (z)", min_points=4 if method == "tsne" else 2)
        if z.shape[1] < 2:
            raise ValueError(f"panels[{name!r}][0] (z) must have at least 2 feature dims, got {tuple(z.shape)}")
        _check_labels(item[1], z.shape[0], name=f"panels[{name!r}][1] (labels)")

    if generator is None:
        generator = torch.Generator().manual_seed(0)
    Figure, colormaps = _matplotlib()
    cmap = colormaps["tab10"]
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 4.0 * nrows + 0.4), dpi=110)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, (z, labels)) in zip(axes, panels.items()):
        idx = _subset(z.shape[0], max_points, generator, z.device)
        if idx is not None:
            z, labels = z[idx], labels[idx.to(labels.device)]
        xy = project_2d(z, method, generator=generator).double().cpu().numpy()
        lab = labels.cpu().long()
        classes = torch.unique(lab).tolist()
        for k in classes:
            sel = (lab == k).numpy()
            ax.scatter(xy[sel, 0], xy[sel, 1], s=8, alpha=0.7, color=cmap(k % 10), linewidths=0, label=str(k))
        ax.set_title(str(name))
        ax.set_xticks([])
        ax.set_yticks([])
        if len(classes) <= 10:
            ax.legend(title="class", fontsize="x-small", title_fontsize="x-small", markerscale=2, loc="best")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title if title is not None else f"Embeddings ({'PCA' if method == 'pca' else 't-SNE'})")
    fig.tight_layout()
    return _save(fig, path)
