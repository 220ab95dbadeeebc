"""MultiMix and Dense MultiMix at the embedding layer: ``loss = mm(z, y, head, lam=None)``.

These are the paper's core operations on embeddings you already computed, for
use in your own training loop. The trainer-facing methods in
:mod:`multimix.methods` wrap them over a model.
"""

from __future__ import annotations

from typing import Callable, Literal, Optional, Tuple, get_args

import torch
from torch import Tensor, nn

from . import functional as MF
from . import fused
from .checks import check_label_smoothing, check_positive_int

__all__ = ["MultiMix", "DenseMultiMix", "ATTENTIONS", "replaced"]

Attention = Literal["uniform", "self", "cam"]
PositionWeighting = Literal["uniform", "attention"]
ATTENTIONS = get_args(Attention)
POSITION_WEIGHTINGS = get_args(PositionWeighting)
MULTI_LABEL_HINT = ("This loss is soft cross-entropy; for multi-hot (multi-label) rows use the method, "
                    "multimix.create_method('multimix', criterion=multimix.losses.bce_with_logits)")


def replaced(obj, name: str, owner: type) -> bool:
    """Whether ``obj.name`` is not ``owner``'s: set on the instance, or overridden by a subclass (a Λ supplied by
    replacing ``sample_lam`` is then mixed as drawn, not through the one pass)."""
    return name in vars(obj) or getattr(type(obj), name) is not getattr(owner, name)


def _num_classes_of(head) -> Optional[int]:
    return head.out_features if isinstance(head, nn.Linear) else None


class MultiMix:
    """MultiMix (Venkataramanan et al.): interpolate n tuples of the whole mini-batch.

    Given pooled embeddings Z (m, d) and targets Y (m, c), draw Λ (n, m) with
    rows λ_k ~ Dir(α·1) over a random tuple of ``tuple_size`` examples (default
    all m) and return mean_k CE(g(z̃_k), ỹ_k) with Z̃ = ΛZ, Ỹ = ΛY, plus
    ``clean_weight`` · CE(g(Z), Y).

    When the head g is affine (``nn.Linear``, or ``affine=True``),
    g(ΛZ) = Λ g(Z) because rows of Λ sum to 1: the n mixed logits cost one
    (n×m)(m×c) product and nothing of size n×d is built. Otherwise the
    embeddings are mixed and g is applied to all n of them. Both paths give the
    same loss and gradients.

    Args:
        n: number of interpolated examples per mini-batch (Λ has n rows).
        alpha: Dirichlet concentration α per example (default: none, the
            ``concentration`` is used). Small α (≈ 0.01–0.05
            for a batch of 100+) keeps each tuple dominated by few examples;
            α = 1 over a large tuple puts every point near the batch centroid.
            Its effect depends on the tuple length t: about t·α + 1 examples
            carry weight, so the same α mixes more examples in a bigger batch.
        concentration: the total concentration A = t·α instead of ``alpha``
            (give one of the two): per-example α = A / t is recomputed for each
            tuple length t, so the number of examples that carry weight stays
            put when the batch size changes (as t grows the sorted weights of a
            row tend to a Poisson–Dirichlet(A) law). A ≈ 1–2 mixes a few
            examples; A → 0 tends to no mixing. Default 1 (0.5 for
            DenseMultiMix) when neither is given: the best of {0.5, 1, 2}
            on MNIST-1D's validation split (docs/results.md).
        tuple_size: examples per tuple (None: the whole mini-batch).
        num_classes: c, needed with integer labels unless the head is ``nn.Linear``.
        clean_weight: weight of the loss on the un-mixed examples. Default 1
            (0 for DenseMultiMix), as selected on MNIST-1D's validation split.
        label_smoothing: applied when integer labels are turned into targets.
        affine: force (True) or forbid (False) the affine shortcut; None detects ``nn.Linear``.
        rows_per_draw: passed to :func:`multimix.functional.dirichlet`: each
            Dirichlet draw fills this many rows of Λ under different random
            orders of the tuple (every row exact, rows of one draw dependent),
            cutting the sampler's cost that many times. Default 1.
        generator: torch generator for Λ.

    Call:
        ``loss = mm(z, y, head, lam=None)`` with z (m, d), y int (m,) or soft
        (m, c), head mapping (..., d) → (..., c), lam an optional (n, m) Λ.
    """

    # Defaults selected on MNIST-1D's validation split (docs/results.md).
    default_concentration = 1.0
    default_clean_weight = 1.0

    def __init__(
        self,
        n: int = 1000,
        alpha: Optional[float] = None,
        *,
        concentration: Optional[float] = None,
        tuple_size: Optional[int] = None,
        num_classes: Optional[int] = None,
        clean_weight: Optional[float] = None,
        label_smoothing: float = 0.0,
        affine: Optional[bool] = None,
        rows_per_draw: int = 1,
        generator: Optional[torch.Generator] = None,
    ):
        self.n = check_positive_int(n, "n")
        if alpha is not None and concentration is not None:
            raise ValueError(f"give alpha or concentration, not both (got alpha={alpha!r}, "
                             f"concentration={concentration!r})")
        if alpha is None and concentration is None:
            concentration = self.default_concentration
        if clean_weight is None:
            clean_weight = self.default_clean_weight
        self.alpha = None if alpha is None else MF.check_alpha(alpha)
        self.concentration = None if concentration is None else MF.check_alpha(concentration, "concentration")
        self.tuple_size = None if tuple_size is None else check_positive_int(tuple_size, "tuple_size")
        if num_classes is not None:
            check_positive_int(num_classes, "num_classes")
        self.num_classes = num_classes
        if not clean_weight >= 0:
            raise ValueError(f"clean_weight must be >= 0, got {clean_weight!r}")
        self.clean_weight = float(clean_weight)
        label_smoothing = check_label_smoothing(label_smoothing)
        self.label_smoothing = float(label_smoothing)
        self.affine = affine
        self.rows_per_draw = check_positive_int(rows_per_draw, "rows_per_draw")
        self.generator = generator

    def __repr__(self) -> str:
        mix = f"alpha={self.alpha}" if self.concentration is None else f"concentration={self.concentration}"
        return (f"{type(self).__name__}(n={self.n}, {mix}, tuple_size={self.tuple_size}, "
                f"clean_weight={self.clean_weight})")

    # -- pieces shared with DenseMultiMix -------------------------------------------------

    def alpha_for(self, t: int) -> float:
        """The per-example α for tuples of t examples: ``alpha``, or ``concentration / t``."""
        return self.alpha if self.concentration is None else self.concentration / t

    def sample_lam(self, m: int, *, device=None) -> Tensor:
        """Λ of shape (n, m): Dirichlet rows over a random tuple of ``tuple_size`` examples."""
        t = m if self.tuple_size is None else min(self.tuple_size, m)
        if t == m:
            return MF.dirichlet(self.n, m, self.alpha_for(m), generator=self.generator, device=device,
                                rows_per_draw=self.rows_per_draw)
        weights = MF.dirichlet(self.n, t, self.alpha_for(t), generator=self.generator, device=device,
                               rows_per_draw=self.rows_per_draw)
        mask = MF.random_subset_mask(self.n, m, t, generator=self.generator, device=device)
        lam = torch.zeros(self.n, m, device=weights.device, dtype=weights.dtype)
        # masked_scatter_ fills True entries in row-major order: row k gets weights[k].
        return lam.masked_scatter_(mask, weights)

    def _prepare(self, z: Tensor, y: Tensor, head, lam: Optional[Tensor], sample: bool = True):
        if not isinstance(z, Tensor):
            raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
        if not callable(head):
            raise TypeError(f"head must be a module or callable mapping (..., d) to (..., c), got {type(head).__name__}")
        if z.dim() == 0 or z.shape[0] == 0:
            raise ValueError(f"z must hold at least one example, got shape {tuple(z.shape)}")
        m = z.shape[0]
        num_classes = self.num_classes or _num_classes_of(head)
        targets = MF.as_soft_targets(y, num_classes, batch_size=m, label_smoothing=self.label_smoothing)
        if y.is_floating_point():  # the loss is soft cross-entropy: rows must be probabilities
            MF.check_label_rows(targets, hint=MULTI_LABEL_HINT)
        if lam is not None:
            MF.check_interpolation_matrix(lam, m)
            return targets, lam.to(z.device)
        return targets, self.sample_lam(m, device=z.device) if sample else None

    def is_affine(self, head) -> bool:
        """Whether the affine shortcut g(ΛZ) = Λ g(Z) applies to ``head``: ``affine``, else ``nn.Linear``."""
        return isinstance(head, nn.Linear) if self.affine is None else bool(self.affine)

    def one_pass(self, head, m: int) -> bool:
        """Whether the mixed loss of a batch of m is :func:`multimix.functional.mixed_cross_entropy` of g(Z) and Y
        (one pass on the CPU, Λ never stored): an affine head, and Λ = ``dirichlet(n, m, α)`` itself (tuples of
        the whole batch, one row per draw, and :meth:`sample_lam` not replaced)."""
        return (self.is_affine(head) and (self.tuple_size is None or self.tuple_size >= m) and self.rows_per_draw == 1
                and not replaced(self, "sample_lam", MultiMix))

    def mixed_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The mixed loss of logits g(Z) (m, c) and targets Y (m, c) under a fresh Λ (where :meth:`one_pass`)."""
        m = logits.shape[0]
        return MF.mixed_cross_entropy(logits, targets, self.n, self.alpha_for(m), generator=self.generator)

    # -- the loss --------------------------------------------------------------------------

    def mixed(self, z: Tensor, targets: Tensor, head, lam: Tensor, logits: Optional[Tensor] = None
              ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """(mixed logits (n, c), mixed targets ΛY (n, c), g(Z) (m, c) or None when not computed) of z (m, d) and
        targets Y (m, c) under Λ (n, m); ``logits`` = g(Z) when already computed.

        Affine head: Λ g(Z), and one (n, m) × (m, 2c) product for logits and
        targets together reads Λ (n·m floats) once. Otherwise g(ΛZ).
        """
        if self.is_affine(head):
            logits = head(z) if logits is None else logits
            return (*MF.interpolate_pair(lam, logits, targets), logits)
        return head(MF.interpolate(lam, z).to(z.dtype)), MF.interpolate(lam, targets), logits

    def __call__(self, z: Tensor, y: Tensor, head: Callable[[Tensor], Tensor], lam: Optional[Tensor] = None) -> Tensor:
        if isinstance(z, Tensor) and z.dim() != 2:
            raise ValueError(f"z must be pooled embeddings of shape (m, d), got {tuple(z.shape)}; "
                             "use DenseMultiMix for (m, d, *spatial)")
        one_pass = lam is None and self.one_pass(head, z.shape[0])
        targets, lam = self._prepare(z, y, head, lam, sample=not one_pass)
        if targets.dim() != 2:
            raise ValueError(f"soft targets y must have shape (m, c) for MultiMix, got {tuple(targets.shape)}")
        logits = head(z) if self.clean_weight > 0 or one_pass else None
        if one_pass:
            loss = self.mixed_loss(logits, targets)
        else:
            mixed_logits, mixed_targets, logits = self.mixed(z, targets, head, lam, logits)
            loss = MF.soft_cross_entropy(mixed_logits, mixed_targets)
        if self.clean_weight > 0:
            loss = loss + self.clean_weight * MF.soft_cross_entropy(logits, targets)
        return loss


class DenseMultiMix(MultiMix):
    """Dense MultiMix: interpolate and apply the loss at every spatial position.

    For dense embeddings Z (m, d, r) (r = prod of the spatial dims) and an
    attention map a_i ∈ R^r per example, the weights of tuple k at position j
    are w_kij = λ_ki a_ij / Σ_i' λ_ki' a_i'j; then z̃_kj = Σ_i w_kij z_ij,
    ỹ_kj = Σ_i w_kij y_ij (labels inherited by every position, or per-position
    soft targets (m, c, *spatial) such as a teacher's), and the loss is the mean
    CE over all k and j of g applied per position. The affine shortcut applies
    per position: mixed logits = W_j · (per-position logits).

    Args (beyond :class:`MultiMix`):
        attention: ``"uniform"`` (a_ij = 1/r), ``"self"`` (softmax over j of
            ⟨z_ij, z̄_i⟩/√d) or ``"cam"`` (ReLU(w_{y_i}ᵀ z_ij), ℓ1-normalised;
            needs a head with a (c, d) ``weight``).
        attention_grad: back-propagate through the attention (default: no).
        position_weighting: ``"uniform"`` (mean CE over positions, the paper's
            dense loss) or ``"attention"`` (position j of tuple k weighted by
            Σ_i λ_ki a_ij, so positions without evidence count little).
        pooled_weight: weight β of an extra MultiMix loss on the pooled
            embeddings (mean over positions) with the same Λ and the targets
            pooled likewise: loss = dense loss + β · MultiMix loss. The
            per-position loss asks every position to predict the class, which
            hurts when positions see little of the input (on MNIST-1D's 1-D
            CNN, 5 positions with a receptive field of 19 of 40 samples, even
            un-mixed per-position training loses 3 points to ERM); the pooled
            term keeps the prediction the network is evaluated on in the loss.
            Default 3: on MNIST-1D's validation split it lifted Dense MultiMix
            from 93.7% to 96.9% (β = 1: 95.3%); on the CIFAR-10 subset of
            docs/results.md it did not help (49.96% vs 52.30% test, 3 seeds).

    The clean-example term (``clean_weight``) is the per-position CE of the
    un-mixed embeddings against their inherited labels.

    Call:
        ``loss = dmm(z, y, head, lam=None)`` with z (m, d, *spatial), y int
        (m,), soft (m, c) or per-position soft (m, c, *spatial).
    """

    default_concentration = 0.5
    default_clean_weight = 0.0

    def __init__(self, n: int = 1000, alpha: Optional[float] = None, *, attention: Attention = "self",
                 attention_grad: bool = False, position_weighting: PositionWeighting = "uniform", pooled_weight: float = 3.0,
                 **kwargs):
        super().__init__(n, alpha, **kwargs)
        if not (isinstance(pooled_weight, (int, float)) and pooled_weight >= 0):
            raise ValueError(f"pooled_weight must be a number >= 0, got {pooled_weight!r}")
        self.pooled_weight = float(pooled_weight)
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if position_weighting not in POSITION_WEIGHTINGS:
            raise ValueError(f"position_weighting must be one of {POSITION_WEIGHTINGS}, got {position_weighting!r}")
        self.attention = attention
        self.attention_grad = bool(attention_grad)
        self.position_weighting = position_weighting

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", attention={self.attention!r}, pooled_weight={self.pooled_weight})"

    def attention_map(self, z: Tensor, targets: Tensor, head) -> Tensor:
        """a (m, r) for flattened dense embeddings z (m, d, r) and targets (m, c[, r])."""
        source = z if self.attention_grad else z.detach()
        if self.attention == "uniform":
            return MF.uniform_attention(source)
        if self.attention == "self":
            return MF.self_attention(source)
        weight = getattr(head, "weight", None)
        if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[1] != z.shape[1]:
            raise ValueError("attention='cam' needs a head with a (c, d) `weight` (e.g. nn.Linear); "
                             "use attention='self' or 'uniform' for other heads")
        if not self.attention_grad:
            weight = weight.detach()
        class_mass = targets if targets.dim() == 2 else targets.mean(dim=2)
        return MF.class_activation_attention(source, weight, class_mass)

    def mixed_positions(self, zf: Tensor, targets: Tensor, head, lam: Tensor, attention: Tensor,
                        logits: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
        """The per-position mix of dense embeddings zf (m, d, r) with targets Y (m, c) or (m, c, r) under Λ (n, m)
        and attention a (m, r): (mixed logits (n, r, c), mixed targets (n, r, c), per-position logits g(z)
        (m, c, r) or None when not needed, position weights (n, r) or None). ``logits``: g(z) when the caller
        has them already (not computed again).

        The weights w (n, m, r) are never built: each mix is one (n, m) × (m, c·r) product
        (:func:`multimix.functional.dense_interpolate`). Targets and logits are mixed apart, so that the
        backward product covers the logits only. Affine head: the mix of the per-position logits g(z_j);
        otherwise g of the mixed embeddings. The position
        weights (``position_weighting="attention"``) are the mixed attention masses Σ_i λ_ki a_ij, whose
        rows sum to 1 over j: positions that carry little of any example's evidence count little.
        """
        r = zf.shape[2]
        affine = self.is_affine(head)
        position_targets = targets if targets.dim() > 2 else targets.unsqueeze(2).expand(-1, -1, r)
        if logits is None and (self.clean_weight > 0 or affine):
            logits = MF.apply_per_position(head, zf)  # (m, c, r)
        mixed_targets = MF.dense_interpolate(lam, attention, position_targets)  # (n, r, c)
        if affine:
            mixed_logits = MF.dense_interpolate(lam, attention, logits.float())
        else:
            mixed_logits = head(MF.dense_interpolate(lam, attention, zf.float()).to(zf.dtype))
        weights = None
        if self.position_weighting != "uniform":
            weights = (lam.to(attention.dtype) @ attention).detach()  # (n, r)
        return mixed_logits, mixed_targets, logits, weights

    def one_pass(self, head, m: int) -> bool:
        """:meth:`MultiMix.one_pass`, with the uniform position weighting and the attention taken as given
        (``attention_grad=False``): then :meth:`position_losses` applies."""
        return super().one_pass(head, m) and self.position_weighting == "uniform" and not self.attention_grad

    def position_losses(self, logits: Tensor, targets: Tensor, attention: Tensor
                        ) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
        """(dense loss, pooled loss or None when ``pooled_weight`` = 0) under a fresh Λ, in one pass
        (:mod:`multimix.fused`), for per-position logits g(z) (m, c, r), targets Y (m, c) or (m, c, r) and
        attention a (m, r); None where the one pass does not run (another device, a dtype above float32): then
        sample Λ and mix. The pooled term is the mix of the mean logits over positions (an affine head's logits
        of the mean embedding). Zero attention counts as in :func:`multimix.functional.dense_interpolate`
        (:func:`multimix.functional.positive_attention`).
        """
        m, c, r = logits.shape
        work = logits.transpose(1, 2)  # (m, r, c): positions as the kernel reads them
        position_targets = (targets.unsqueeze(1).expand(-1, r, -1) if targets.dim() == 2 else targets.transpose(1, 2))
        weights = MF.positive_attention(attention, torch.float32)
        if self.pooled_weight > 0:
            pooled_targets = targets if targets.dim() == 2 else targets.mean(dim=2)
            work = torch.cat([work, logits.mean(dim=2).unsqueeze(1)], dim=1)  # (m, r + 1, c)
            position_targets = torch.cat([position_targets, pooled_targets.unsqueeze(1)], dim=1)
            weights = torch.cat([weights, weights.new_ones(m, 1)], dim=1)
        alpha = self.alpha_for(m)
        if not fused.applies(work, position_targets, alpha, self.generator, MF.on_host(work)):
            return None
        losses = fused.position_cross_entropy(work, position_targets, self.n, alpha, self.generator, weights)
        return losses[:r].mean(), losses[r] if self.pooled_weight > 0 else None

    def __call__(self, z: Tensor, y: Tensor, head: Callable[[Tensor], Tensor], lam: Optional[Tensor] = None) -> Tensor:
        if isinstance(z, Tensor) and z.dim() < 3:
            raise ValueError(f"z must be dense features of shape (m, d, *spatial) with at least one spatial dim, "
                             f"got {tuple(z.shape)}; use MultiMix for pooled (m, d) embeddings")
        targets, lam = self._prepare(z, y, head, lam, sample=False)
        spatial = z.shape[2:]
        zf = MF.flatten_positions(z)  # (m, d, r)
        if targets.dim() > 2:
            if targets.shape[2:] != spatial:
                raise ValueError(f"per-position soft targets y must have shape (m, c, {', '.join(map(str, spatial))}), "
                                 f"got {tuple(targets.shape)}")
            targets = targets.flatten(2)  # (m, c, r)
        attention = self.attention_map(zf, targets, head)  # (m, r)
        losses, logits = None, None
        if lam is None and self.one_pass(head, z.shape[0]):
            logits = MF.apply_per_position(head, zf)  # (m, c, r)
            losses = self.position_losses(logits, targets, attention)
        if losses is not None:
            loss, pooled = losses
        else:
            lam = self.sample_lam(z.shape[0], device=z.device) if lam is None else lam
            loss, pooled, logits = self._mixed_losses(zf, targets, head, lam, attention)
        if self.clean_weight > 0:
            clean_targets = targets.unsqueeze(2).expand_as(logits) if targets.dim() == 2 else targets
            loss = loss + self.clean_weight * MF.soft_cross_entropy(logits, clean_targets, dim=1)
        if pooled is not None:
            loss = loss + self.pooled_weight * pooled
        return loss

    def _mixed_losses(self, zf: Tensor, targets: Tensor, head, lam: Tensor, attention: Tensor
                      ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """(dense loss, pooled loss or None, per-position logits or None) under a given Λ."""
        mixed_logits, mixed_targets, logits, position_weight = self.mixed_positions(zf, targets, head, lam, attention)
        if position_weight is None:
            loss = MF.soft_cross_entropy(mixed_logits, mixed_targets)
        else:
            per_position = -(mixed_targets * torch.log_softmax(mixed_logits.float(), dim=-1)).sum(-1)  # (n, r)
            loss = (per_position * position_weight).sum(1).mean()
        pooled = None
        if self.pooled_weight > 0:
            # An affine head commutes with the mean over positions: g(mean_j z_j) = mean_j g(z_j).
            pooled_logits = logits.mean(dim=2) if logits is not None else None
            pooled_targets = targets if targets.dim() == 2 else targets.mean(dim=2)
            mixed_logits, mixed_targets, _ = self.mixed(zf.mean(dim=2), pooled_targets, head, lam, pooled_logits)
            pooled = MF.soft_cross_entropy(mixed_logits, mixed_targets)
        return loss, pooled, logits
