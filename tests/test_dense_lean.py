"""The lean Dense MultiMix path (no (n, m, r) weight tensor) gives the loss and gradients of the former one.

``reference_loss`` is the previous implementation, kept here verbatim in
substance: it builds w = dense_interpolation_weights(Λ, a) and mixes with
einsum.
"""

import pytest
import torch
from torch import nn

import multimix
import multimix.functional as MF


def reference_loss(dmm, z, y, head, lam):
    """Dense MultiMix's loss as computed before the lean path (for affine and non-affine heads)."""
    affine = isinstance(head, nn.Linear) if dmm.affine is None else dmm.affine
    num_classes = dmm.num_classes or (head.out_features if isinstance(head, nn.Linear) else None)
    targets = MF.as_soft_targets(y, num_classes, batch_size=z.shape[0], label_smoothing=dmm.label_smoothing)
    zf = MF.flatten_positions(z)
    if targets.dim() > 2:
        targets = targets.flatten(2)
    attention = dmm.attention_map(zf, targets, head)
    weights = MF.dense_interpolation_weights(lam, attention)
    if targets.dim() == 2:
        mixed_targets = torch.einsum("kir,ic->krc", weights, targets)
    else:
        mixed_targets = torch.einsum("kir,icr->krc", weights, targets)
    logits = MF.apply_per_position(head, zf) if (dmm.clean_weight > 0 or affine) else None
    if affine:
        mixed_logits = torch.einsum("kir,icr->krc", weights, logits.float())
    else:
        mixed_logits = head(torch.einsum("kir,idr->krd", weights, zf.float()).to(z.dtype))
    if dmm.position_weighting == "uniform":
        loss = MF.soft_cross_entropy(mixed_logits, mixed_targets)
    else:
        position_weight = (lam.to(attention.dtype) @ attention).detach()
        per_position = -(mixed_targets * torch.log_softmax(mixed_logits.float(), dim=-1)).sum(-1)
        loss = (per_position * position_weight).sum(1).mean()
    if dmm.clean_weight > 0:
        clean_targets = targets.unsqueeze(2).expand_as(logits) if targets.dim() == 2 else targets
        loss = loss + dmm.clean_weight * MF.soft_cross_entropy(logits, clean_targets, dim=1)
    if dmm.pooled_weight > 0:
        pooled_targets = targets if targets.dim() == 2 else targets.mean(dim=2)
        mixed_pooled_targets = MF.interpolate(lam, pooled_targets)
        if affine:
            mixed_pooled = MF.interpolate(lam, logits.mean(dim=2))
        else:
            mixed_pooled = head(MF.interpolate(lam, zf.mean(dim=2)).to(z.dtype))
        loss = loss + dmm.pooled_weight * MF.soft_cross_entropy(mixed_pooled, mixed_pooled_targets)
    return loss


class MLPHead(nn.Module):
    """A non-affine head (the embeddings are mixed, not the logits)."""

    def __init__(self, d, c):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 7), nn.Tanh(), nn.Linear(7, c))
        self.weight = self.net[2].weight  # unused by attention != "cam"

    def forward(self, x):
        return self.net(x)


CASES = [
    dict(attention="self"),  # the defaults
    dict(attention="uniform", clean_weight=0.5),
    dict(attention="cam", position_weighting="attention", pooled_weight=0.0),
    dict(attention="self", tuple_size=3),  # Λ with exact zeros
    dict(attention="cam", tuple_size=2, clean_weight=1.0),  # zero denominators: the λ fallback
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("head_kind", ["linear", "mlp"])
@pytest.mark.parametrize("per_position_targets", [False, True])
def test_lean_dense_path_matches_reference(case, head_kind, per_position_targets):
    if head_kind == "mlp" and case["attention"] == "cam":
        pytest.skip("cam attention needs a linear head")
    torch.manual_seed(0)
    m, d, c, spatial = 6, 5, 4, (3, 2)
    head = nn.Linear(d, c) if head_kind == "linear" else MLPHead(d, c)
    z = torch.randn(m, d, *spatial, dtype=torch.float64).float()
    y = (torch.softmax(torch.randn(m, c, *spatial), dim=1) if per_position_targets else torch.randint(0, c, (m,)))
    dmm = multimix.DenseMultiMix(n=40, num_classes=c, generator=torch.Generator().manual_seed(3), **case)
    lam = dmm.sample_lam(m)
    if case["attention"] == "cam":
        z = z.abs() * torch.where(torch.rand(m, 1, *spatial) < 0.5, -1.0, 1.0)  # many non-positive class scores
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    ours = dmm(z1, y, head, lam=lam)
    ours.backward()
    grads = [p.grad.clone() for p in head.parameters()]
    head.zero_grad()
    ref = reference_loss(dmm, z2, y, head, lam)
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-4, atol=1e-6)
    for g_ours, p in zip(grads, head.parameters()):
        torch.testing.assert_close(g_ours, p.grad, rtol=1e-4, atol=1e-6)


def test_dense_interpolate_equals_weights_product():
    """dense_interpolate(Λ, a, x) = einsum(w, x) with w = dense_interpolation_weights(Λ, a), fallback included."""
    lam = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.0, 0.5, 0.5]])
    attention = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])  # tuple 0 has no attention at position 0
    x = torch.randn(3, 4, 2)
    w = MF.dense_interpolation_weights(lam, attention)
    expected = torch.einsum("kir,icr->krc", w, x)
    torch.testing.assert_close(MF.dense_interpolate(lam, attention, x), expected)
    torch.testing.assert_close(MF.dense_interpolate(lam, attention, x)[0, 0], x[0, :, 0])  # 0/0 → λ_k: example 0
