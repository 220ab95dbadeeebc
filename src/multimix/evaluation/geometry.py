"""Geometry of embeddings: alignment, uniformity, class distance ratio, and 2-D projections.

The metrics compare ℓ2-normalised embeddings ẑ = z / ‖z‖ through their
pairwise distances, so memory grows with the square of the number of points:
each takes a uniformly random subset of at most ``max_points`` rows, drawn
only from the ``generator`` it is given (a fresh generator seeded with 0 when
``None``, so results are deterministic and torch's global RNG is never
touched). :func:`project_2d` with ``method="tsne"`` imports scikit-learn
lazily; nothing else needs it. Arguments are checked before any work is done.

Notation: N examples (M, the number actually used after sub-sampling), d
embedding channels.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..checks import check_choice, check_generator, check_positive
from .inputs import check_embeddings, check_labels, check_max_points, work_dtype

__all__ = ["alignment", "uniformity", "class_distance_ratio", "project_2d", "random_subset"]

PROJECTIONS = ("pca", "tsne")


def random_subset(n: int, max_points: Optional[int], generator: Optional[torch.Generator], device) -> Optional[Tensor]:
    """Indices (max_points,) of a uniformly random subset of range(n) on ``device``, or None to keep all n.

    ``generator=None`` uses a fresh generator seeded with 0; the permutation
    is drawn on the generator's device.
    """
    if max_points is None or n <= max_points:
        return None
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    return torch.randperm(n, generator=generator, device=generator.device)[:max_points].to(device)


def _normalized(z: Tensor, labels: Optional[Tensor], max_points, generator) -> Tuple[Tensor, Optional[Tensor]]:
    """ẑ = z/‖z‖ (rows, in at least float32) of a random subset of at most ``max_points`` rows."""
    idx = random_subset(z.shape[0], max_points, generator, z.device)
    if idx is not None:
        z = z[idx]
        labels = labels[idx.to(labels.device)] if labels is not None else None
    z = z.detach().to(work_dtype(z))
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
    z = check_embeddings(z)
    if labels is not None:
        labels = check_labels(labels, z.shape[0])
    max_points = check_max_points(max_points)
    check_generator(generator)
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
    check_choice(method, "method", PROJECTIONS)
    z = check_embeddings(z, min_points=4 if method == "tsne" else 2)
    if z.shape[1] < 2:
        raise ValueError(f"z must have at least 2 feature dims to project to 2-D, got shape {tuple(z.shape)}")
    check_generator(generator)
    work = work_dtype(z)
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
