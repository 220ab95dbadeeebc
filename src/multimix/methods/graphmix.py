"""GraphMix (Verma et al., AAAI 2021) as a method, and MultiMix inside it.

GraphMix trains a GCN f(X, Â) together with the fully connected network that
shares its weights, the same layers without Â (the GCN's *parameter-shared MLP
path*, models/gcn.py: ``model.encode`` of feature rows). Each optimiser step t
is one of two, chosen by a fair coin (``step_choice="coin"``):

- **mix step**: the MLP path's hidden layer of the m labelled nodes is mixed
  and trained on the mixed targets, and γ(t) times the same loss on the
  unlabelled nodes of the batch, whose targets are the GCN's own predictions
  averaged over K dropout samples and sharpened at temperature T:
  Ŷ_u = sharpen(1/K Σ_k softmax(f(X, Â; dropout_k))_u, T), sharpen(p, T) ∝ p^{1/T};
- **GCN step**: the GCN's cross-entropy on the labelled nodes.

γ(t) = γ · exp(−5 (1 − clip((t − t₀) / (t₁ − t₀), 0, 1))²), Laine & Aila's
sigmoid ramp, over optimiser steps (an epoch on full-batch graph training).
The loss of mixed nodes is GraphMix's binary cross-entropy of the softmax
probabilities (:func:`multimix.losses.softmax_bce`); the GCN step's is the
method's criterion (soft cross-entropy by default).

``mixer="pairwise"`` is GraphMix: one λ ~ Beta(α, α) and a permutation π per
part (labelled, unlabelled), h̃ = λ h + (1 − λ) h[π]. ``mixer="multimix"``
puts MultiMix in its place: n interpolated nodes per part, Λ (n, m) with
Dir(A/m · 1_m) rows, mixed logits Λ g(H) (exact for the linear head) and
targets Λ Y. ``path="gcn"`` mixes the GCN's propagated embeddings instead of
the MLP path's hidden layer. ``step_choice="sum"`` drops the coin: every step
adds both steps' losses.

The official code (vikasverma1077/GraphMix, ``semisupervised/codes``) also
keeps an "EMA" model that shares its parameters' storage with the student
(so it is the student) and is used for nothing but a printed number; it is
not reproduced. Draw the unlabelled nodes with the loop (``unlabelled_batch``
of the trainer: as many as labelled nodes, with replacement, in the official
code); without any, a mix step has no unlabelled part.

On the host the batch is split into its two parts; on an accelerator the
parts stay masks of the batch (:meth:`GraphMix.masked_terms`), so that no
part's size is read back: the same terms, the same law.
"""

from __future__ import annotations

import math
from typing import List, Literal, Tuple, get_args

import torch
from torch import Tensor

from .. import functional as MF
from ..checks import check_choice, check_int, check_number
from ..embedding import MultiMix
from ..losses import softmax_bce
from .base import Method, unlabelled_rows
from .terms import LossTerm

__all__ = ["GraphMix", "sigmoid_ramp", "sharpen"]

Mixer = Literal["pairwise", "multimix"]
Path = Literal["mlp", "gcn"]
StepChoice = Literal["coin", "sum"]


def sigmoid_ramp(step: int, start: int, end: int) -> float:
    """exp(−5 (1 − clip((step − start) / (end − start), 0, 1))²) in [e⁻⁵, 1]; 1 when ``end <= start``."""
    if end <= start:
        return 1.0
    phase = 1.0 - min(max((step - start) / (end - start), 0.0), 1.0)
    return math.exp(-5.0 * phase * phase)


def sharpen(probs: Tensor, temperature: float) -> Tensor:
    """Rows p (k, c) raised to 1/T and renormalised: softmax(log p / T), computed in log space (no underflow)."""
    return torch.softmax(torch.log(probs.float().clamp_min(torch.finfo(torch.float32).tiny)) / temperature, dim=-1)


class GraphMix(Method):
    """GraphMix and MultiMix inside it; see the module docstring for the steps and symbols.

    Args:
        alpha: α of Beta(α, α), the pairwise mixer's λ (GraphMix: 1.0).
        mixer: ``"pairwise"`` (GraphMix's manifold mixup) or ``"multimix"`` (n Dirichlet tuples per part).
        n: interpolated nodes per part with ``mixer="multimix"``.
        concentration: total Dirichlet concentration A of Λ's rows with ``mixer="multimix"`` (α = A/m each).
        path: ``"mlp"`` mixes the parameter-shared MLP's hidden layer (GraphMix's FCN); ``"gcn"`` the GCN's
            propagated embeddings.
        step_choice: ``"coin"``: each step is a mix step or a GCN step with probability 1/2 (GraphMix);
            ``"sum"``: every step adds the GCN loss and the mix losses.
        unlabelled_weight: γ, the final weight of the unlabelled nodes' mix loss (GraphMix: 10 on Cora).
        ramp_start: optimiser step t₀ where γ's sigmoid ramp starts (GraphMix: epoch 500).
        ramp_end: optimiser step t₁ where γ reaches its final value (GraphMix: epoch 1000).
        predictions: K, dropout samples of the GCN averaged into the unlabelled targets.
        temperature: T of the sharpening of the unlabelled targets (GraphMix: 0.1).
        **kwargs: see :class:`Method` (the criterion is the GCN step's loss).
    """

    mixes_at = "hidden"
    predicts_unlabelled = True

    def __init__(self, alpha: float = 1.0, mixer: Mixer = "pairwise", n: int = 1000, concentration: float = 1.0,
                 path: Path = "mlp", step_choice: StepChoice = "coin", unlabelled_weight: float = 10.0,
                 ramp_start: int = 500, ramp_end: int = 1000, predictions: int = 10, temperature: float = 0.1,
                 **kwargs):
        super().__init__(**kwargs)
        self.alpha = MF.check_alpha(alpha)
        self.mixer = check_choice(mixer, "mixer", get_args(Mixer))
        self.n = check_int(n, "n", 1)
        self.concentration = MF.check_alpha(concentration, "concentration")
        self.path = check_choice(path, "path", get_args(Path))
        self.step_choice = check_choice(step_choice, "step_choice", get_args(StepChoice))
        self.unlabelled_weight = check_number(unlabelled_weight, "unlabelled_weight", minimum=0.0)
        self.ramp_start = check_int(ramp_start, "ramp_start", 0)
        self.ramp_end = check_int(ramp_end, "ramp_end", 0)
        if self.ramp_end < self.ramp_start:
            raise ValueError(f"ramp_end ({self.ramp_end}) must be >= ramp_start ({self.ramp_start})")
        self.predictions = check_int(predictions, "predictions", 1)
        self.temperature = MF.check_alpha(temperature, "temperature")
        self.mix = MultiMix(self.n, concentration=self.concentration, clean_weight=0.0)  # the multimix mixer's arithmetic

    @property
    def unlabelled_fraction(self) -> float:
        """All of a loop's unlabelled nodes from the first step: their targets are the model's own predictions."""
        return 1.0 if self.unlabelled_weight > 0 else 0.0

    @property
    def current_unlabelled_weight(self) -> float:
        """γ(t) at the current optimiser step t (:attr:`steps`)."""
        return self.unlabelled_weight * sigmoid_ramp(self.steps, self.ramp_start, self.ramp_end)

    def embed(self, model, x: Tensor) -> Tensor:
        """The embeddings (m, d) the mix steps mix: of the MLP path (feature rows of x) or of the GCN."""
        if self.path == "mlp":
            x = model.encode(x, 0, 0)  # a node's layer 0 is its feature row: the MLP path from here on
        z = model.pool(model.encode(x))
        if z.dim() != 2:
            raise ValueError(f"GraphMix mixes embeddings (m, d); model.pool gave shape {tuple(z.shape)}")
        return z

    @torch.no_grad()
    def predicted_targets(self, model, x: Tensor) -> Tensor:
        """Ŷ (m, c): sharpen(mean of K softmax predictions of the model in its current mode (dropout), T)."""
        probs = torch.softmax(model(x).float(), dim=-1)
        for _ in range(self.predictions - 1):
            probs += torch.softmax(model(x).float(), dim=-1)
        return sharpen(probs / self.predictions, self.temperature)

    def mixed(self, model, z: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
        """(mixed logits, mixed targets) of embeddings z (m, d) and targets (m, c) under the mixer."""
        generator = self.draws(z.device)
        head = model.head
        if self.mixer == "pairwise":
            lam = MF.sample_beta(self.alpha, generator=generator).to(z.device)  # 0-d: never read back
            perm = MF.random_permutation(z.shape[0], generator=generator, device=z.device)
            return head(torch.lerp(z[perm], z, lam.to(z.dtype))), torch.lerp(targets[perm], targets, lam)
        m = z.shape[0]
        lam = MF.dirichlet(self.n, m, self.mix.alpha_for(m), generator=generator, device=z.device)
        logits, mixed_targets, _ = self.mix.mixed(z, targets.float(), head, lam)  # Λ g(Z) or g(ΛZ), and ΛY
        return logits, mixed_targets

    def terms(self, model, x: Tensor, y: Tensor) -> List[LossTerm]:
        """The step's terms: ``"clean"`` (GCN step), or ``"mixed"`` and ``"unlabelled"`` (mix step), or all three.

        On the host the batch is split into its labelled and unlabelled nodes. On an accelerator (and inside
        :func:`multimix.functional.device_generic`) the parts stay masks of the whole batch, whose sizes are
        never read: see :meth:`masked_terms`."""
        unlabelled = unlabelled_rows(y)
        x_u = None
        if unlabelled is not None and not MF.on_host(y):
            return self.masked_terms(model, x, y, unlabelled.to(x.device))
        if unlabelled is not None:  # boolean indexing on the host: the two parts' sizes
            x_u, x, y = x[unlabelled.to(x.device)], x[~unlabelled.to(x.device)], y[~unlabelled]
        targets = self.targets(model, x, y)
        mix_step = self.mix_step(x.device)
        terms = []
        if self.step_choice == "sum" or not mix_step:
            terms += self.terms_of("clean", model(x), targets)
        if mix_step:
            logits, mixed_targets = self.mixed(model, self.embed(model, x), targets)
            terms += self.terms_of("mixed", logits, mixed_targets, criterion=softmax_bce)
            gamma = self.current_unlabelled_weight
            if x_u is not None and gamma > 0:
                u_targets = self.predicted_targets(model, x_u)
                logits, mixed_targets = self.mixed(model, self.embed(model, x_u), u_targets)
                terms.append(LossTerm("unlabelled", logits, mixed_targets, gamma, criterion=softmax_bce))
        return terms

    def mix_step(self, device) -> bool:
        """Whether this step is a mix step: always with ``step_choice="sum"``, else GraphMix's fair coin (a host
        draw, :meth:`Method.host_uniform`: it steers the code)."""
        return self.step_choice == "sum" or self.host_uniform(device) < 0.5

    def masked_terms(self, model, x: Tensor, y: Tensor, unlabelled: Tensor) -> List[LossTerm]:
        """:meth:`terms` with the parts as masks of the whole batch (m,): the same terms and the same law, with
        no value read back. Each part's term weighs its rows 1/k (k, the part's size, on the device) and the
        others 0; the pairwise mixer pairs rows within their part (:func:`multimix.functional.permutation_within`),
        the multimix mixer draws Λ over the part's columns (:func:`multimix.functional.masked_dirichlet`), and a
        part that turns out empty weighs 0. Every forward pass runs on the whole batch, one per part as on the
        host, so dropout draws stay independent between the parts."""
        labelled = ~unlabelled
        targets = self.targets(model, x, y.masked_fill(unlabelled.to(y.device), 0))  # the unlabelled rows' are unused
        mix_step = self.mix_step(x.device)
        terms = []
        if self.step_choice == "sum" or not mix_step:
            terms += self.terms_of("clean", model(x), targets, row_weights=part_weights(labelled))
        if mix_step:
            logits, mixed_targets, weights = self.masked_mixed(model, self.embed(model, x), targets, labelled)
            terms += self.terms_of("mixed", logits, mixed_targets, row_weights=weights, criterion=softmax_bce)
            gamma = self.current_unlabelled_weight
            if gamma > 0:
                logits, mixed_targets, weights = self.masked_mixed(model, self.embed(model, x),
                                                                   self.predicted_targets(model, x), unlabelled)
                terms.append(LossTerm("unlabelled", logits, mixed_targets, gamma, weights, criterion=softmax_bce))
        return terms

    def masked_mixed(self, model, z: Tensor, targets: Tensor, part: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(mixed logits, mixed targets, row weights) of the rows of ``part`` (m,) bool among embeddings z (m, d)
        and targets (m, c): m rows weighted 1/k on the part (pairwise), or n rows weighted 1/n (multimix), all
        0 when the part is empty."""
        generator = self.draws(z.device)
        head = model.head
        if self.mixer == "pairwise":
            lam = MF.sample_beta(self.alpha, generator=generator).to(z.device)
            perm = MF.permutation_within(part, generator=generator)
            return (head(torch.lerp(z[perm], z, lam.to(z.dtype))), torch.lerp(targets[perm], targets, lam),
                    part_weights(part))
        lam = MF.masked_dirichlet(self.n, part, self.concentration, generator=generator).to(z.device)
        logits, mixed_targets, _ = self.mix.mixed(z, targets.float(), head, lam)
        weights = part.any().to(torch.float32).div(self.n).expand(self.n)
        return logits, mixed_targets, weights


def part_weights(part: Tensor) -> Tensor:
    """(m,) float32: 1/k on the k True rows of ``part``, 0 elsewhere (all 0 when k = 0); k stays on the device."""
    weights = part.to(torch.float32)
    return weights / weights.sum().clamp_min(1.0)
