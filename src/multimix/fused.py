"""MultiMix's mixed loss in one pass on the CPU: Λ drawn, mixed, scored and back-propagated row by row.

Public through :func:`multimix.functional.mixed_cross_entropy`. Under the
affine shortcut MultiMix's mixed term is

    L = (1/n) Σ_k CE(λ_kᵀ F, λ_kᵀ Y),  F = g(Z) (m, c),  Y (m, c),  Λ = (λ_k) ~ Dir(α·1_m)^n,

and its gradient is ∂L/∂F = Λᵀ (softmax(ΛF)·(ΛY)1 − ΛY) / n: a function of
each row of Λ alone, summed over rows. The C kernel of :mod:`multimix.native`
draws each row (the fused sampler's rows: the same Λ as
:func:`multimix.functional.dirichlet` gives for the same generator state),
mixes it, scores it and adds its share of ∂L/∂F while the row is in the L1
cache. Λ (n·m floats) is never written, and the backward pass is a product
of the saved (m, c) gradient: the step costs the sampler plus 3c
multiply-adds per entry of Λ, where the three-product form writes Λ and reads
it twice.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import native
from .sampling import cpu_route, native_seed

__all__ = ["applies", "mixed_cross_entropy"]


def applies(logits: Tensor, targets: Tensor, alpha: float, generator: Optional[torch.Generator], host: bool) -> bool:
    """Whether :func:`mixed_cross_entropy` runs for logits (m, c) and targets (m, c): on the host (``host``: a CPU
    tensor outside :func:`multimix.functional.device_generic`), in float32 work (Λ in the default dtype float32,
    logits and targets in at most float32), targets without gradient, and the fused sampler's route for α."""
    return (host and targets.device.type == "cpu"
            and (generator is None or generator.device.type == "cpu")
            and torch.get_default_dtype() == torch.float32
            and torch.promote_types(torch.promote_types(logits.dtype, targets.dtype), torch.float32) == torch.float32
            and not targets.requires_grad
            and cpu_route(torch.float32, alpha) == "native")


class _FusedMixedCrossEntropy(torch.autograd.Function):
    """L of logits (m, c) and targets (m, c) under Λ of the seed; the gradient is computed with the loss."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, n: int, alpha: float, seed: int) -> Tensor:
        loss, grad = native.mix_cross_entropy(native.kernels(), logits.detach().to(torch.float32).contiguous(),
                                              targets.detach().to(torch.float32).contiguous(), n, alpha, seed)
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        (grad,) = ctx.saved_tensors
        return (grad_loss * grad).to(ctx.logits_dtype), None, None, None, None


@torch.compiler.disable  # a foreign function on host memory: always eager, also inside a compiled step
def mixed_cross_entropy(logits: Tensor, targets: Tensor, n: int, alpha: float,
                        generator: Optional[torch.Generator]) -> Tensor:
    """The 0-d float32 L above (where :func:`applies`): Λ's seed is one draw of ``generator`` (the fused sampler's)."""
    return _FusedMixedCrossEntropy.apply(logits, targets, n, alpha, native_seed(generator))
