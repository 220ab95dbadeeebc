"""Pure tensor functions under every method: sampling, mixing, dense weights, losses.

No state, no modules. Every function is device- and dtype-agnostic and draws
random numbers only from the ``generator`` it is given (or torch's default one
when that is ``None``).

Notation (see ``DESIGN.md``): a mini-batch of m examples, n interpolated
examples, c classes, d embedding channels, r spatial positions.
Λ (``lam``) is an (n, m) interpolation matrix whose rows lie on the simplex.

This file is longer than the others on purpose: it is the one public module of
the library's tensor operations (``multimix.functional``), in sections
(sampling, targets and losses, mixing, dense weights, CutMix, MixupE). The
Dirichlet samplers themselves live in :mod:`multimix.sampling`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .checks import check_choice, check_label_smoothing, check_positive, check_positive_int
from . import fused
from .sampling import DIRICHLET_METHODS, dirichlet_rows, masked_dirichlet_rows

__all__ = [
    "check_positive",
    "check_alpha",
    "device_generic",
    "on_host",
    "check_interpolation_matrix",
    "dirichlet",
    "sample_beta",
    "random_permutation",
    "permutation_within",
    "masked_dirichlet",
    "random_subset_mask",
    "as_soft_targets",
    "check_label_rows",
    "soft_cross_entropy",
    "interpolate",
    "mixed_cross_entropy",
    "interpolate_pair",
    "flatten_positions",
    "apply_per_position",
    "uniform_attention",
    "self_attention",
    "class_activation_attention",
    "dense_interpolation_weights",
    "positive_attention",
    "dense_interpolate",
    "cutmix_mask",
    "mixupe_residual_term",
    "beta_mean",
]

REDUCTIONS = ("mean", "none")  # of soft_cross_entropy
ROW_SUM_ATOL = 1e-3  # soft label rows must sum to 1 within this (float32 and one-hot rounding)

# whether CPU tensors take the accelerator's code path (see device_generic)
_DEVICE_GENERIC: ContextVar[bool] = ContextVar("multimix_device_generic", default=False)


@contextmanager
def device_generic() -> Iterator[None]:
    """Within this block CPU tensors take the code path used on accelerators.

    That path never reads a tensor's value back to the host (on CUDA every
    such read waits for the device): Λ comes from torch's gamma kernel
    instead of numpy's bits, and value checks that need a read are left out
    (:func:`on_host`). Its purpose is to show, on a CPU, that a training step
    would not synchronise a GPU. Thread- and task-local.
    """
    token = _DEVICE_GENERIC.set(True)
    try:
        yield
    finally:
        _DEVICE_GENERIC.reset(token)


def on_host(x: Tensor) -> bool:
    """Whether x's values can be read without a host–device synchronisation: a CPU tensor, outside
    :func:`device_generic`.

    Checks of values (label ranges, row sums) run only then. On an accelerator
    they are left to the data's boundary (the loader, on the CPU) and to
    torch's device-side asserts (a label outside [0, c) fails the scatter that
    makes one-hot rows), as ``F.cross_entropy`` does.
    """
    return x.device.type == "cpu" and not _DEVICE_GENERIC.get()


# ---------------------------------------------------------------------------
# argument checks (raise before any work is done)
# ---------------------------------------------------------------------------


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """A concentration α (Beta or Dirichlet): finite and > 0."""
    return check_positive(alpha, name)


def check_interpolation_matrix(lam: Tensor, m: int, atol: Optional[float] = None) -> None:
    """Raise ``ValueError`` unless ``lam`` is an (n, m) matrix with rows on the simplex.

    Shape and dtype are always checked; the values only on the host (:func:`on_host`), where reading them
    costs no host–device synchronisation.

    Args:
        lam: candidate Λ, shape (n, m).
        m: the mini-batch size it must match.
        atol: tolerance on each row sum; defaults to 1e-4 in float32/64 and
            2e-2 in half precision.
    """
    if not isinstance(lam, Tensor):
        raise TypeError(f"lam must be a torch.Tensor of shape (n, {m}), got {type(lam).__name__}")
    if lam.dim() != 2 or lam.shape[1] != m or lam.shape[0] < 1:
        raise ValueError(f"lam must have shape (n, {m}) with n >= 1 (m = batch size), got {tuple(lam.shape)}")
    if not lam.is_floating_point():
        raise TypeError(f"lam must be a floating-point tensor, got dtype {lam.dtype}")
    if not on_host(lam):
        return
    if atol is None:
        atol = 2e-2 if torch.finfo(lam.dtype).bits <= 16 else 1e-4
    lam32 = lam.detach().float()
    if not bool(torch.isfinite(lam32).all()):
        raise ValueError("lam must be finite: every row of Λ must lie on the simplex")
    if bool((lam32 < 0).any()):
        raise ValueError("lam must be non-negative: every row of Λ must lie on the simplex")
    worst = (lam32.sum(dim=1) - 1).abs().max().item()
    if worst > atol:
        raise ValueError(f"every row of lam must sum to 1 (rows on the simplex); worst row is off by {worst:.3g}")


# ---------------------------------------------------------------------------
# random sampling
# ---------------------------------------------------------------------------


def _resolve_device(generator: Optional[torch.Generator], device) -> torch.device:
    if device is not None:
        return torch.device(device)
    if generator is not None:
        return generator.device
    return torch.device("cpu")


def _draw_device(generator: Optional[torch.Generator], device: torch.device) -> torch.device:
    """Where random numbers are drawn: the generator's own device if one is given."""
    return generator.device if generator is not None else device


def dirichlet(
    n: int,
    m: int,
    alpha: float,
    *,
    generator: Optional[torch.Generator] = None,
    device=None,
    dtype: Optional[torch.dtype] = None,
    rows_per_draw: int = 1,
    method: str = "auto",
) -> Tensor:
    """Sample Λ: n interpolation vectors λ_k ~ Dir(α·1_m), one per row, independent.

    Every row is exactly Dir(α·1_m) (see :mod:`multimix.sampling` for the
    samplers) and finite, non-negative and summing to 1 for any ``alpha > 0``
    and any ``m``, including the near-one-hot rows of very small α that
    underflow to 0/0 with a plain gamma sampler in float32: weights are formed
    in log space and floored at ≈ 1e-36 of the row's largest (no subnormal
    numbers). Sampling runs in float32 (float64 when asked) and is cast at the
    end: in bfloat16/float16 the row sums are then exact only to that dtype's
    precision. Nothing is read back from an accelerator (no host–device
    synchronisation).

    Args:
        n: number of interpolation vectors (rows), n ≥ 1.
        m: number of examples per tuple (columns), m ≥ 1.
        alpha: symmetric Dirichlet concentration α > 0.
        generator: torch generator to draw from; its device is used to draw.
        device: device of the result (default: the generator's, else CPU).
        dtype: floating dtype of the result (default: torch's default dtype).
        rows_per_draw: k ≥ 1. With k > 1 only ⌈n/k⌉ Dirichlet vectors are
            drawn and each fills k consecutive rows, its columns reordered by
            k random permutations (drawn once per call, shared by all
            vectors). A fixed reordering of i.i.d. gammas is i.i.d., so every
            row is still exactly Dir(α·1_m) and rows from different vectors
            are independent, but the k rows from one vector are permutations
            of each other (same sorted weights on different examples). The
            gamma draws, the bulk of the cost, shrink k-fold. Default 1:
            independent rows.
        method: ``"auto"`` (on the CPU the fused compiled sampler of
            :mod:`multimix.native` in float32 when it compiled, else numpy's
            bits and block-wise tensor passes; torch's gamma kernel on other
            devices), ``"native"`` (the fused sampler, or
            :class:`~multimix.sampling.NativeUnavailable`), ``"eager"`` (the
            tensor passes on the CPU) or ``"torch"`` (torch's gamma kernel
            everywhere: the device-generic path, also taken inside
            :func:`device_generic`). All are exact; each draws its own stream
            from the generator's seed.

    Returns:
        Tensor of shape (n, m).
    """
    n = check_positive_int(n, "n")
    m = check_positive_int(m, "m")
    alpha = check_alpha(alpha)
    k = check_positive_int(rows_per_draw, "rows_per_draw")
    method = check_choice(method, "method", DIRICHLET_METHODS)
    if _DEVICE_GENERIC.get():
        method = "torch"
    dtype = dtype or torch.get_default_dtype()
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    device = _resolve_device(generator, device)
    draw_device = _draw_device(generator, device)
    work = torch.promote_types(dtype, torch.float32)
    k = min(k, n)
    draws = -(-n // k)
    lam = dirichlet_rows(draws, m, alpha, generator=generator, device=draw_device, dtype=work, method=method)
    if k > 1:
        orders = torch.rand(k, m, generator=generator, device=draw_device).argsort(dim=1)  # k permutations of m
        # row (b, j) = vector b reordered by permutation j; index_select is several times faster than lam[:, orders]
        lam = lam.index_select(1, orders.flatten()).view(draws * k, m)[:n]
    return lam.to(device=device, dtype=dtype)


def sample_beta(alpha: float, *, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
    """One λ ~ Beta(α, α) as a 0-d float32 tensor (the first entry of a Dir(α, α) draw)."""
    return dirichlet(1, 2, alpha, generator=generator, device=device, dtype=torch.float32)[0, 0]


def random_permutation(m: int, *, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
    """A random permutation π of range(m) (the pairing of mixup-style methods), int64 (m,)."""
    device = _resolve_device(generator, device)
    return torch.randperm(m, generator=generator, device=_draw_device(generator, device)).to(device)


def _check_row_mask(mask: Tensor, name: str = "mask") -> Tensor:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 1 or mask.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D bool tensor (m,), got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
    return mask


def permutation_within(mask: Tensor, *, generator: Optional[torch.Generator] = None) -> Tensor:
    """π (m,) int64: the rows where ``mask`` (m,) bool is True permuted uniformly at random among themselves, and
    the others among themselves, from m uniform keys; the parts' sizes are never read (no host–device
    synchronisation), so a part of a batch is paired without splitting the batch."""
    mask = _check_row_mask(mask)
    keys = torch.rand(mask.shape[0], generator=generator, device=_draw_device(generator, mask.device))
    rest = (~mask).to(keys.device, keys.dtype)
    shuffled = torch.argsort(keys + 2.0 * rest)  # the True rows first, in random order, then the others
    in_order = torch.argsort(rest, stable=True)  # the True rows first, in index order, then the others
    return torch.empty_like(shuffled).scatter_(0, in_order, shuffled).to(mask.device)


def masked_dirichlet(n: int, mask: Tensor, concentration: float, *,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """Λ (n, m) float32 on ``mask``'s device: rows Dir(A/k · 1_k) over the k True entries of ``mask`` (m,) bool,
    0 elsewhere (all-zero rows when k = 0), A = ``concentration``: MultiMix over a part of a batch without
    reading the part's size back (:func:`multimix.sampling.masked_dirichlet_rows`)."""
    n = check_positive_int(n, "n")
    concentration = check_alpha(concentration, "concentration")
    return masked_dirichlet_rows(n, _check_row_mask(mask), concentration, generator=generator)


def random_subset_mask(n: int, m: int, size: int, *, generator=None, device=None) -> Tensor:
    """Boolean (n, m) mask with exactly ``size`` True entries per row, uniformly at random.

    Used to restrict each interpolation vector to a random tuple of ``size``
    examples of the mini-batch.
    """
    device = _resolve_device(generator, device)
    scores = torch.rand(n, m, generator=generator, device=_draw_device(generator, device))
    idx = scores.topk(size, dim=1).indices
    mask = torch.zeros(n, m, dtype=torch.bool, device=scores.device)
    mask.scatter_(1, idx, True)
    return mask.to(device)


def beta_mean(a: float, b: float) -> float:
    """Mean a / (a + b) of Beta(a, b)."""
    return a / (a + b)


# ---------------------------------------------------------------------------
# targets and losses
# ---------------------------------------------------------------------------


def as_soft_targets(
    y: Tensor,
    num_classes: Optional[int],
    *,
    batch_size: Optional[int] = None,
    label_smoothing: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Integer labels (m,) or soft targets (m, c, *spatial) → float soft targets.

    Integer labels become one-hot (optionally label-smoothed) rows of shape
    (m, c). Soft targets are returned as they are (cast to ``dtype``) after
    checking their width against ``num_classes`` when that is known.

    Raises:
        ValueError: empty batch, batch mismatch with ``batch_size``, labels
            outside [0, c), soft targets of the wrong width, unknown c.
    """
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor of labels (m,) or soft targets (m, c), got {type(y).__name__}")
    if y.dim() == 0 or y.shape[0] == 0:
        raise ValueError(f"y must hold at least one example, got shape {tuple(y.shape)}")
    if batch_size is not None and y.shape[0] != batch_size:
        raise ValueError(f"y has {y.shape[0]} examples but the batch has {batch_size} (first dimensions must match)")
    label_smoothing = check_label_smoothing(label_smoothing)
    if y.is_floating_point():
        if y.dim() < 2:
            raise ValueError(f"soft targets y must have shape (m, c), got {tuple(y.shape)}")
        if num_classes is not None and y.shape[1] != num_classes:
            raise ValueError(f"soft targets y must have width c = {num_classes} (dim 1), got shape {tuple(y.shape)}")
        return y.to(dtype)
    if y.dim() != 1:
        raise ValueError(f"integer labels y must have shape (m,), got {tuple(y.shape)}")
    if num_classes is None:
        raise ValueError("num_classes is required with integer labels (it is read from the head when that is nn.Linear)")
    if on_host(y):  # elsewhere scatter's device-side assert refuses a label outside [0, c)
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels y must lie in [0, {num_classes}) (num_classes = {num_classes}), "
                             f"got values in [{lo}, {hi}]")
    # scatter, not F.one_hot: one_hot reads the labels' min and max back on the CPU path; scatter checks per index
    targets = torch.zeros(y.shape[0], num_classes, dtype=dtype, device=y.device).scatter_(1, y.long()[:, None], 1.0)
    if label_smoothing > 0:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return targets


def check_label_rows(targets: Tensor, hint: str = "") -> None:
    """``ValueError`` unless soft label rows (m, c, ...) are probabilities: non-negative and summing to 1 over the
    classes (dim 1) within :data:`ROW_SUM_ATOL`. Multi-hot (multi-label) rows, which sum to more, are refused;
    ``hint`` (a sentence) says where they are accepted. Only for rows on the host (:func:`on_host`)."""
    if not on_host(targets):
        return
    sums = targets.detach().float().sum(dim=1)
    bad = ~((sums - 1.0).abs() <= ROW_SUM_ATOL)  # NaN rows too
    negative = bool((targets < 0).any())
    if bool(bad.any()) or negative:
        found = f"a row summing to {float(sums[bad][0]):.4g}" if bool(bad.any()) else \
            f"an entry of {float(targets.min()):.4g}"
        raise ValueError("soft label rows y must be probabilities (non-negative, summing to 1 over the c classes); "
                         f"got {found}." + (f" {hint}" if hint else ""))


def soft_cross_entropy(logits: Tensor, targets: Tensor, dim: int = -1, reduction: str = "mean") -> Tensor:
    """−Σ_c targets·log_softmax(logits) over the class dimension ``dim``: its mean over all other entries, or
    (``reduction="none"``) the loss of each.

    The one form of soft cross-entropy in the library (:func:`multimix.losses.soft_cross_entropy`, the methods'
    default criterion, is its ``reduction="none"``), so the two agree bit for bit.

    Args:
        logits: (..., c) along ``dim``.
        targets: same shape, rows on the simplex.
        dim: the class dimension.
        reduction: ``"mean"`` (0-d) or ``"none"`` (the shape of ``logits`` without ``dim``).

    Returns:
        the loss, computed in at least float32.
    """
    check_choice(reduction, "reduction", REDUCTIONS)
    # −Σ_c y_c log softmax(f)_c = logsumexp(f)·Σ_c y_c − Σ_c y_c f_c: torch's log_softmax over a short
    # class dimension costs ~200 ns per row on the CPU, three times this form (the loss of n = 10⁴ mixed rows)
    work = logits.float()
    weights = targets.to(work.dtype)
    per_row = torch.logsumexp(work, dim=dim) * weights.sum(dim=dim) - (weights * work).sum(dim=dim)
    return per_row.mean() if reduction == "mean" else per_row


def interpolate(lam: Tensor, x: Tensor) -> Tensor:
    """Λ x along the first dimension: (n, m) × (m, ...) → (n, ...).

    The product runs in at least float32 with autocast off, so that rows of Λ
    that sum to 1 keep doing so; the result has dtype promote(x, float32).
    For 2-D x (m, k) the result is laid out column-major (a transposed view
    of (XᵀΛᵀ), strides (1, n)): with k a few classes and n in the thousands,
    the ops that follow (a softmax or a loss over k, and their backward) then
    run along n in memory: MultiMix's mixing and loss, forward and backward,
    1.18× faster at n = 10⁴ (``benchmarks/mixing_layout.py``).
    """
    work = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        lam = lam.to(device=x.device, dtype=work)
        if x.dim() == 2:
            return (x.to(work).t() @ lam.t()).t()
        out = lam @ x.reshape(x.shape[0], -1).to(work)
    return out.view(lam.shape[0], *x.shape[1:])


def mixed_cross_entropy(logits: Tensor, targets: Tensor, n: int, alpha: float, *,
                        generator: Optional[torch.Generator] = None) -> Tensor:
    """MultiMix's mixed loss under the affine shortcut: ``soft_cross_entropy(interpolate(Λ, logits),
    interpolate(Λ, targets))`` with Λ = ``dirichlet(n, m, alpha, generator=generator)``.

    On the host in float32 with the fused sampler (:mod:`multimix.fused`) each
    row of Λ is drawn, mixed, scored and back-propagated in one pass and Λ is
    never stored: the same Λ (the same draw of the generator) and the same loss
    and gradient up to float rounding, without writing and reading n·m floats.
    Elsewhere, the three products as written. Targets with gradient take the
    products too.

    Args:
        logits: (m, c) g(Z), the head's logits of the batch.
        targets: (m, c) soft targets Y.
        n: rows of Λ (interpolated examples).
        alpha: Dirichlet concentration α.
        generator: torch generator of Λ.

    Returns:
        0-d loss, in at least float32.
    """
    if logits.dim() != 2 or targets.shape != logits.shape:
        raise ValueError(f"logits and targets must both have shape (m, c), got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    n, alpha = check_positive_int(n, "n"), check_alpha(alpha)
    if fused.applies(logits, targets, alpha, generator, on_host(logits)):
        return fused.position_cross_entropy(logits, targets, n, alpha, generator)[0]
    lam = dirichlet(n, logits.shape[0], alpha, generator=generator, device=logits.device)
    return soft_cross_entropy(*interpolate_pair(lam, logits, targets))


def interpolate_pair(lam: Tensor, logits: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
    """(Λ·logits, Λ·targets) for logits and targets (m, c) under Λ (n, m), in one (n, m) × (m, 2c) product (Λ is
    read once), in promote(logits, targets, float32)."""
    c, work = logits.shape[1], torch.promote_types(logits.dtype, targets.dtype)
    mixed = interpolate(lam, torch.cat([logits.to(work), targets.to(work)], dim=1))
    return mixed[:, :c], mixed[:, c:]


# ---------------------------------------------------------------------------
# dense (per-position) helpers
# ---------------------------------------------------------------------------


def flatten_positions(z: Tensor, name: str = "z") -> Tensor:
    """(m, d, *spatial) → (m, d, r) with r = prod(spatial); requires ≥ 1 spatial dim."""
    if z.dim() < 3:
        raise ValueError(f"{name} must be dense features of shape (m, d, *spatial) with at least one spatial dim, got {tuple(z.shape)}")
    return z.flatten(2)


def apply_per_position(head: Callable[[Tensor], Tensor], z: Tensor) -> Tensor:
    """Apply a head mapping (..., d) → (..., c) at every position: (m, d, r) → (m, c, r)."""
    return head(z.transpose(1, 2)).transpose(1, 2)


def uniform_attention(z: Tensor) -> Tensor:
    """a_ij = 1/r for every example i and position j: (m, d, r) → (m, r)."""
    m, _, r = z.shape
    return z.new_full((m, r), 1.0 / r)


def self_attention(z: Tensor) -> Tensor:
    """a_i = softmax_j(⟨z_ij, z̄_i⟩ / √d), z̄_i the mean over positions: (m, d, r) → (m, r)."""
    z = z.float()
    pooled = z.mean(dim=2, keepdim=True)  # (m, d, 1)
    scores = (z * pooled).sum(dim=1) / math.sqrt(z.shape[1])
    return torch.softmax(scores, dim=1)


def class_activation_attention(z: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """Class activation a_ij ∝ ReLU(Σ_c y_ic w_cᵀ z_ij), ℓ1-normalised over positions.

    For one-hot y this is ReLU(w_{y_i}ᵀ z_ij). Rows that are all zero fall
    back to uniform attention.

    Args:
        z: (m, d, r) dense embeddings.
        weight: (c, d) classifier weights W.
        targets: (m, c) soft targets (class mass per example).

    Returns:
        (m, r) attention, each row on the simplex.
    """
    z = z.float()
    class_dir = targets.float() @ weight.float()  # (m, d)
    act = torch.relu((z * class_dir.unsqueeze(2)).sum(dim=1))  # (m, r)
    total = act.sum(dim=1, keepdim=True)
    uniform = torch.full_like(act, 1.0 / act.shape[1])
    return torch.where(total > 0, act / total.clamp_min(torch.finfo(act.dtype).tiny), uniform)


def dense_interpolation_weights(lam: Tensor, attention: Tensor) -> Tensor:
    """w_kij = λ_ki a_ij / Σ_i' λ_ki' a_i'j, ℓ1-normalised over examples i.

    Where the denominator vanishes (every example with weight in tuple k has
    zero attention at position j) the weights fall back to λ_k.

    Args:
        lam: Λ, (n, m).
        attention: a, (m, r), non-negative.

    Returns:
        (n, m, r) weights; w[k, :, j] lies on the simplex.
    """
    work = torch.promote_types(attention.dtype, torch.float32)
    lam = lam.to(work)
    num = lam.unsqueeze(2) * attention.to(work).unsqueeze(0)  # (n, m, r)
    den = num.sum(dim=1, keepdim=True)
    ok = den > 0
    w = num / torch.where(ok, den, torch.ones_like(den))
    return torch.where(ok, w, lam.unsqueeze(2).expand_as(w))


def positive_attention(attention: Tensor, dtype: torch.dtype) -> Tensor:
    """Attention a (m, r) in ``dtype`` with its zero entries raised to ε = tiny^¾ of ``dtype`` (≈ 2e-29 in
    float32), so that every tuple's denominator Σ_i λ_ki a_ij is positive (see :func:`dense_interpolate`)."""
    a = attention.to(dtype)
    return a + (a == 0).to(dtype) * torch.finfo(dtype).tiny ** 0.75


def dense_interpolate(lam: Tensor, attention: Tensor, x: Tensor) -> Tensor:
    """Σ_i w_kij x_i·j with w = :func:`dense_interpolation_weights` (lam, attention), without building w.

    Per position j, Σ_i w_kij x_ij = (Σ_i λ_ki a_ij x_ij) / (Σ_i λ_ki a_ij):
    one product (n, m) × (m, c·r), so nothing of size n·m·r is built. Where
    the denominator vanishes (every example of tuple k has zero attention at
    j) the weights are λ_k, as in :func:`dense_interpolation_weights`: zero
    attention entries count as ε = tiny^¾ (≈ 2e-29 in float32), which gives
    exactly λ_k there and changes other weights by at most ε relative to the
    denominator (below float32 rounding unless the denominator is < 1e-21).
    Runs in at least float32 with autocast off.

    Args:
        lam: Λ, (n, m).
        attention: a, (m, r), non-negative.
        x: (m, c, r) values per example, channel and position (an expanded
            (m, c, 1) tensor for values inherited by every position).

    Returns:
        (n, r, c), dtype promote(x, float32).
    """
    work = torch.promote_types(x.dtype, torch.float32)
    m, c, r = x.shape
    with torch.autocast(device_type=x.device.type, enabled=False):
        lam = lam.to(device=x.device, dtype=work)
        a = positive_attention(attention, work)  # (m, r)
        weighted = (x.to(work) * a.unsqueeze(1)).transpose(1, 2).reshape(m, r * c)  # (m, r·c): channels last
        den = lam @ a  # (n, r) > 0
        return (lam @ weighted).view(-1, r, c) / den.unsqueeze(2)


# ---------------------------------------------------------------------------
# CutMix and MixupE
# ---------------------------------------------------------------------------


def cutmix_mask(
    spatial: Sequence[int], lam: Tensor, *, generator: Optional[torch.Generator] = None, device=None
) -> Tuple[Tensor, Tensor]:
    """A random box covering about 1 − λ of a 1-D or 2-D grid, as a mask, and the corrected λ.

    The box side along each of the k spatial dims is ⌊size·(1 − λ)^{1/k}⌋, its
    centre uniform over the grid, clipped at the borders (Yun et al., 2019);
    the corrected λ is 1 − (box area / grid area), the true share of the
    original example. Computed in tensors: nothing is read back to the host.

    Args:
        spatial: grid size, (L,) or (H, W).
        lam: the sampled λ in [0, 1], a 0-d tensor (or a float).
        generator: draws the box's centre; its device is used to draw.
        device: device of the results (default: λ's when it is a tensor, else the generator's).

    Returns:
        (mask, lam_corrected): bool (*spatial), True inside the box; float32 0-d.
    """
    k = len(spatial)
    if k not in (1, 2):
        raise ValueError(f"CutMix needs inputs with 1 or 2 spatial dims (m, C, L) or (m, C, H, W), got {k} spatial dims")
    if device is None and isinstance(lam, Tensor):
        device = lam.device
    device = _resolve_device(generator, device)
    lam = torch.as_tensor(lam, dtype=torch.float32, device=device)
    ratio = (1.0 - lam) ** (1.0 / k)
    centres = torch.rand(k, generator=generator, device=_draw_device(generator, device)).to(device)
    mask = torch.ones((), dtype=torch.bool, device=device)
    area = torch.ones((), dtype=torch.float32, device=device)
    for d, size in enumerate(spatial):
        half = torch.floor(torch.floor(size * ratio) / 2)  # ⌊cut / 2⌋
        centre = torch.floor(centres[d] * size)
        lo, hi = (centre - half).clamp_min(0), (centre + half).clamp_max(size)
        index = torch.arange(size, device=device, dtype=torch.float32)
        inside = (index >= lo) & (index < hi)
        mask = mask.unsqueeze(-1) & inside  # (*spatial[:d + 1])
        area = area * (hi - lo)
    return mask, 1.0 - area / math.prod(spatial)


def mixupe_residual_term(
    logits: Tensor, targets: Tensor, *, threshold: Optional[float] = None, detach_residual: bool = False
) -> Tensor:
    """(1/m) Σ_{i: s_i < τ} s_i with s_i = f_iᵀ (y_i − softmax(f_i)) (MixupE).

    Args:
        logits: clean-batch logits f, (m, c).
        targets: soft targets y, (m, c).
        threshold: τ; ``None`` keeps every example (version 4 of the official code).
        detach_residual: stop gradients through y − softmax(f) (version 4);
            version 3 back-propagates through it.

    Returns:
        0-d tensor.
    """
    logits = logits.float()
    residual = targets.float() - torch.softmax(logits, dim=1)
    if detach_residual:
        residual = residual.detach()
    s = (logits * residual).sum(dim=1)
    if threshold is not None:
        s = torch.where(s.detach() < threshold, s, torch.zeros_like(s))
    return s.sum() / logits.shape[0]
