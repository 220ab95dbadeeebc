"""The mixed losses of MultiMix and Dense MultiMix in one pass on the CPU: Λ drawn, mixed, scored and
back-propagated row by row, never stored.

Used by :func:`multimix.functional.mixed_cross_entropy` and
:class:`multimix.DenseMultiMix`. Under the affine shortcut MultiMix's mixed
term is

    L = (1/n) Σ_k CE(λ_kᵀ F, λ_kᵀ Y),  F = g(Z) (m, c),  Y (m, c),  Λ = (λ_k) ~ Dir(α·1_m)^n,

and its gradient ∂L/∂F = Λᵀ (softmax(ΛF)·(ΛY)1 − ΛY) / n is a sum over the
rows of Λ. Dense MultiMix's is the same at each of r positions p with the
weights w_kip = λ_ki a_ip / Σ_i' λ_ki' a_i'p, and its pooled term is one more
position with a = 1. The C kernel of :mod:`multimix.native` draws each row
(the fused sampler's rows: the same Λ as :func:`multimix.functional.dirichlet`
gives for the same generator state), mixes it at every position, scores it
and adds its share of the gradient while the row is in the L1 cache. Λ
(n·m floats) is never written, and the backward pass scales the saved
gradient.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import native
from .sampling import cpu_route, native_seed

__all__ = ["applies", "position_cross_entropy"]


def applies(logits: Tensor, targets: Tensor, alpha: float, generator: Optional[torch.Generator], host: bool) -> bool:
    """Whether :func:`position_cross_entropy` runs for ``logits`` and ``targets``: on the host (``host``: CPU
    tensors outside :func:`multimix.functional.device_generic`), in float32 work (Λ in the default dtype
    float32, logits and targets in at most float32), targets without gradient, and the fused sampler's route
    for α."""
    return (host and targets.device.type == "cpu"
            and (generator is None or generator.device.type == "cpu")
            and torch.get_default_dtype() == torch.float32
            and torch.promote_types(torch.promote_types(logits.dtype, targets.dtype), torch.float32) == torch.float32
            and not targets.requires_grad
            and cpu_route(torch.float32, alpha) == "native")


class _PositionCrossEntropy(torch.autograd.Function):
    """L (R,) of logits (m, [R,] c) and targets under Λ of the seed; the gradient is computed with the loss."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, weights: Optional[Tensor], n: int, alpha: float,
                seed: int) -> Tensor:
        loss, grad = native.mix_cross_entropy(
            native.kernels(), logits.detach().to(torch.float32).contiguous(),
            targets.detach().to(torch.float32).contiguous(), n, alpha, seed,
            None if weights is None else weights.detach().to(torch.float32).contiguous())
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        (grad,) = ctx.saved_tensors
        scale = grad_loss.view(-1, 1) if grad.dim() == 3 else grad_loss  # (R, 1) against (m, R, c), or (1,)
        return (scale * grad).to(ctx.logits_dtype), None, None, None, None, None


@torch.compiler.disable  # a foreign function on host memory: always eager, also inside a compiled step
def position_cross_entropy(logits: Tensor, targets: Tensor, n: int, alpha: float,
                           generator: Optional[torch.Generator], weights: Optional[Tensor] = None) -> Tensor:
    """L (R,) above (where :func:`applies`) for logits X and targets Y (m, R, c), or (m, c) for R = 1 (MultiMix),
    and weights a (m, R) in (0, 1] or None (all 1): L_p is the mean over the n rows of Λ of the cross-entropy at
    position p. Λ's seed is one draw of ``generator`` (the fused sampler's)."""
    return _PositionCrossEntropy.apply(logits, targets, weights, n, alpha, native_seed(generator))
