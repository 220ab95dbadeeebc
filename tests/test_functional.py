"""Pure tensor functions: the Dirichlet sampler, targets, dense weights, CutMix box, MixupE term."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import multimix.functional as MF


# ---------------------------------------------------------------- Dirichlet Λ

@pytest.mark.parametrize("alpha", [1e-3, 0.05, 1.0, 10.0])
@pytest.mark.parametrize("m", [1, 2, 128, 4096])
def test_dirichlet_rows_on_simplex(alpha, m):
    n = 256 if m < 4096 else 32
    lam = MF.dirichlet(n, m, alpha, generator=torch.Generator().manual_seed(0))
    assert lam.shape == (n, m) and lam.dtype == torch.float32
    assert torch.isfinite(lam).all()
    assert (lam >= 0).all()
    torch.testing.assert_close(lam.sum(1), torch.ones(n), atol=1e-5, rtol=0)


@pytest.mark.parametrize("alpha", [1e-3, 0.05, 1.0, 10.0])
def test_dirichlet_bfloat16_finite(alpha):
    lam = MF.dirichlet(64, 4096, alpha, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0))
    assert lam.dtype == torch.bfloat16
    assert torch.isfinite(lam).all() and (lam >= 0).all()
    torch.testing.assert_close(lam.float().sum(1), torch.ones(64), atol=2e-2, rtol=0)


@pytest.mark.parametrize("alpha", [0.05, 1.0, 10.0])
def test_dirichlet_mean_and_variance(alpha):
    m, n = 8, 40000
    lam = MF.dirichlet(n, m, alpha, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # E[λ_i] = 1/m, Var[λ_i] = (1/m)(1 − 1/m)/(mα + 1)
    var = (1 / m) * (1 - 1 / m) / (m * alpha + 1)
    se_mean = math.sqrt(var / n)
    assert (lam.mean(0) - 1 / m).abs().max() < 5 * se_mean
    rel = lam.var(0) / var
    assert ((rel - 1).abs() < 0.06).all(), rel


@pytest.mark.parametrize("alpha", [0.01, 0.1, 1.0, 5.0])
def test_dirichlet_matches_torch_distributions(alpha):
    """Same law as torch.distributions.Dirichlet: two-sample KS on a coordinate and on the row max."""
    m, n = 16, 20000
    ours = MF.dirichlet(n, m, alpha, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.manual_seed(3)
    ref = torch.distributions.Dirichlet(torch.full((m,), alpha, dtype=torch.float64)).sample((n,))
    for stat in (lambda t: t[:, 0], lambda t: t.max(1).values):
        assert stats.ks_2samp(stat(ours).numpy(), stat(ref).numpy()).pvalue > 1e-3


def test_dirichlet_small_alpha_is_near_one_hot():
    """With m·α ≪ 1 one or two examples carry the mass: P(max λ > t) matches the reference."""
    m, n, alpha = 128, 4000, 1e-3
    ours = MF.dirichlet(n, m, alpha, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ref = torch.distributions.Dirichlet(torch.full((m,), alpha, dtype=torch.float64)).sample((n,))
    assert (ours.max(1).values > 0.5).double().mean() > 0.95
    for t in (0.5, 0.9, 0.99):
        p_ours = (ours.max(1).values > t).double().mean().item()
        p_ref = (ref.max(1).values > t).double().mean().item()
        assert abs(p_ours - p_ref) < 4 * math.sqrt(2 * p_ref * (1 - p_ref) / n) + 0.005


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_dirichlet_two_columns_is_beta(alpha):
    """m = 2: each row is (λ, 1 − λ) with λ ~ Beta(α, α), the law of mixup's λ."""
    lam = MF.dirichlet(20000, 2, alpha, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert stats.kstest(lam[:, 0].numpy(), stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    numpy_beta = np.random.default_rng(0).beta(alpha, alpha, 20000)
    assert stats.ks_2samp(lam[:, 0].numpy(), numpy_beta).pvalue > 1e-3


def test_dirichlet_generator_reproducible_and_no_global_rng():
    state = torch.get_rng_state()
    a = MF.dirichlet(10, 5, 0.5, generator=torch.Generator().manual_seed(7))
    b = MF.dirichlet(10, 5, 0.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state), "sampling with a generator touched the global RNG"
    assert torch.equal(a, b)
    c = MF.dirichlet(10, 5, 0.5, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(a, c)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf")])
def test_dirichlet_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        MF.dirichlet(4, 4, alpha)


@pytest.mark.parametrize("kwargs,match", [(dict(n=0, m=3), "n must"), (dict(n=3, m=0), "m must")])
def test_dirichlet_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MF.dirichlet(alpha=1.0, **kwargs)


# ---------------------------------------------------------------- targets, checks

def test_as_soft_targets_one_hot_and_smoothing():
    y = torch.tensor([0, 2])
    torch.testing.assert_close(MF.as_soft_targets(y, 3), torch.tensor([[1.0, 0, 0], [0, 0, 1]]))
    smooth = MF.as_soft_targets(y, 3, label_smoothing=0.3)
    torch.testing.assert_close(smooth[0], torch.tensor([0.8, 0.1, 0.1]))


@pytest.mark.parametrize("y,num_classes,match", [
    (torch.tensor([0, 3]), 3, r"\[0, 3\)"),
    (torch.tensor([-1, 0]), 3, r"\[0, 3\)"),
    (torch.zeros(2, 4), 3, "width"),
    (torch.zeros(0, dtype=torch.long), 3, "at least one"),
    (torch.tensor([0, 1]), None, "num_classes"),
])
def test_as_soft_targets_errors(y, num_classes, match):
    with pytest.raises(ValueError, match=match):
        MF.as_soft_targets(y, num_classes)


def test_as_soft_targets_batch_mismatch():
    with pytest.raises(ValueError, match="batch"):
        MF.as_soft_targets(torch.tensor([0, 1]), 3, batch_size=3)


@pytest.mark.parametrize("lam,match", [
    (torch.ones(3, 4) / 4, None),
    (torch.ones(3, 5) / 5, "shape"),
    (torch.ones(4) / 4, "shape"),
    (torch.full((3, 4), 0.3), "sum to 1"),
    (torch.tensor([[1.5, -0.5, 0, 0]]), "non-negative"),
])
def test_check_interpolation_matrix(lam, match):
    if match is None:
        MF.check_interpolation_matrix(lam, 4)
    else:
        with pytest.raises(ValueError, match=match):
            MF.check_interpolation_matrix(lam, 4)


def test_soft_cross_entropy_matches_torch():
    logits, y = torch.randn(6, 5), torch.randint(0, 5, (6,))
    torch.testing.assert_close(MF.soft_cross_entropy(logits, MF.as_soft_targets(y, 5)), torch.nn.functional.cross_entropy(logits, y))


# ---------------------------------------------------------------- dense weights

def test_dense_weights_l1_normalised_and_formula():
    lam = MF.dirichlet(7, 5, 0.5)
    att = torch.rand(5, 6)
    w = MF.dense_interpolation_weights(lam, att)
    assert w.shape == (7, 5, 6)
    torch.testing.assert_close(w.sum(1), torch.ones(7, 6))
    k, i, j = 3, 2, 4
    expected = lam[k, i] * att[i, j] / (lam[k] * att[:, j]).sum()
    torch.testing.assert_close(w[k, i, j], expected)


def test_dense_weights_fall_back_to_lambda_where_attention_vanishes():
    lam = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    att = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # example 0 has no attention at position 0
    w = MF.dense_interpolation_weights(lam, att)
    torch.testing.assert_close(w[0, :, 0], lam[0])  # 0/0 → λ_k
    torch.testing.assert_close(w[1, :, 0], torch.tensor([0.0, 1.0]))
    assert torch.isfinite(w).all()


def test_attention_maps_on_simplex():
    z = torch.randn(4, 8, 6)
    for a in (MF.uniform_attention(z), MF.self_attention(z),
              MF.class_activation_attention(z, torch.randn(3, 8), MF.as_soft_targets(torch.tensor([0, 1, 2, 0]), 3))):
        assert a.shape == (4, 6) and (a >= 0).all()
        torch.testing.assert_close(a.sum(1), torch.ones(4))


def test_class_activation_is_relu_of_class_score():
    z, w = torch.randn(2, 5, 7), torch.randn(3, 5)
    y = torch.tensor([2, 0])
    a = MF.class_activation_attention(z, w, MF.as_soft_targets(y, 3))
    raw = torch.relu(torch.einsum("d,dr->r", w[2], z[0]))
    torch.testing.assert_close(a[0], raw / raw.sum())


# ---------------------------------------------------------------- CutMix, MixupE

def reference_box(spatial, lam, centres):
    """CutMix's box as the official code computes it, in Python numbers: one slice per spatial dim."""
    ratio = (1.0 - lam) ** (1.0 / len(spatial))
    box = []
    for size, u in zip(spatial, centres):
        cut, centre = int(size * ratio), int(u * size)
        box.append(slice(max(centre - cut // 2, 0), min(centre + cut // 2, size)))
    return tuple(box)


@pytest.mark.parametrize("spatial", [(40,), (32, 32), (7, 9)])
def test_cutmix_mask_is_the_reference_box(spatial):
    g = torch.Generator().manual_seed(0)
    for lam in (0.0, 0.3, 0.7, 0.95, 1.0):
        centres = torch.rand(len(spatial), generator=torch.Generator().set_state(g.get_state())).tolist()
        mask, lam_true = MF.cutmix_mask(spatial, torch.tensor(lam), generator=g)
        expected = torch.zeros(spatial, dtype=torch.bool)
        expected[reference_box(spatial, lam, centres)] = True
        assert mask.shape == spatial and torch.equal(mask, expected)
        assert lam_true.dim() == 0 and float(lam_true) == pytest.approx(1 - expected.float().mean().item())
        assert 0.0 <= float(lam_true) <= 1.0


def test_cutmix_box_rejects_3d():
    with pytest.raises(ValueError, match="spatial"):
        MF.cutmix_mask((4, 4, 4), 0.5)


def _official_term(f, y_onehot, threshold, detach):
    # As in oneHuster/MixupE mixup.py (versions 3 and 4).
    b = y_onehot - torch.softmax(f, dim=1)
    if detach:
        b = b.detach()
    s = torch.sum(f * b, dim=1)
    if threshold is not None:
        idx = torch.nonzero(s.detach() < threshold).squeeze()
        return torch.sum(s[idx]) / f.shape[0]
    return torch.sum(s) / f.shape[0]


@pytest.mark.parametrize("threshold,detach", [(1.0, False), (None, True), (0.0, True)])
def test_mixupe_term_matches_official(threshold, detach):
    f1 = (torch.randn(9, 4) * 3).requires_grad_()
    f2 = f1.detach().clone().requires_grad_()
    y = MF.as_soft_targets(torch.randint(0, 4, (9,)), 4)
    ours = MF.mixupe_residual_term(f1, y, threshold=threshold, detach_residual=detach)
    ref = _official_term(f2, y, threshold, detach)
    torch.testing.assert_close(ours, ref)
    ours.backward(), ref.backward()
    torch.testing.assert_close(f1.grad, f2.grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dirichlet_on_cuda_with_cuda_generator():
    g = torch.Generator(device="cuda").manual_seed(0)
    lam = MF.dirichlet(1000, 128, 1e-3, generator=g)
    assert lam.device.type == "cuda" and torch.isfinite(lam).all()
    torch.testing.assert_close(lam.sum(1), torch.ones(1000, device="cuda"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("alpha", [0.01, 0.1, 1.0])
def test_dirichlet_rows_per_draw_keeps_each_row_exact(alpha):
    """rows_per_draw = k: row j of every block of k (i.i.d. across blocks) has the law of torch's Dirichlet."""
    m, k, blocks = 16, 8, 12000
    lam = MF.dirichlet(blocks * k, m, alpha, rows_per_draw=k, generator=torch.Generator().manual_seed(11),
                       dtype=torch.float64)
    assert lam.shape == (blocks * k, m)
    torch.testing.assert_close(lam.sum(1), torch.ones(blocks * k, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.manual_seed(12)
    ref = torch.distributions.Dirichlet(torch.full((m,), alpha, dtype=torch.float64)).sample((blocks,))
    var = (1 / m) * (1 - 1 / m) / (m * alpha + 1)
    for j in (0, k - 1):
        rows = lam[j::k]
        for stat in (lambda t: t[:, 0], lambda t: t[:, -1], lambda t: t.max(1).values):
            assert stats.ks_2samp(stat(rows).numpy(), stat(ref).numpy()).pvalue > 1e-3
        assert (rows.mean(0) - 1 / m).abs().max() < 5 * math.sqrt(var / blocks)
        assert ((rows.var(0) / var - 1).abs() < 0.15).all()  # max over 16 columns of a heavy-tailed estimate


def test_dirichlet_rows_per_draw_shares_sorted_weights_within_a_block_only():
    lam = MF.dirichlet(10, 32, 0.3, rows_per_draw=4, generator=torch.Generator().manual_seed(0))
    assert lam.shape == (10, 32)  # n need not be a multiple of k
    ordered = lam.sort(dim=1).values
    torch.testing.assert_close(ordered[1:4], ordered[0].expand(3, -1))  # one vector, four orders
    assert not torch.equal(lam[0], lam[1])
    assert not torch.allclose(ordered[0], ordered[4])  # the next block is a fresh draw
    with pytest.raises(ValueError, match="rows_per_draw"):
        MF.dirichlet(4, 4, 1.0, rows_per_draw=0)


def test_soft_cross_entropy_per_row_and_its_mean_are_one_formula():
    """reduction="none" gives the per-row losses (what multimix.losses.soft_cross_entropy returns); their mean is
    the default reduction bit for bit, along any class dimension."""
    from multimix import losses

    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(6, 5, 3, generator=g) * 3, torch.softmax(torch.randn(6, 5, 3, generator=g), 1)
    per_row = MF.soft_cross_entropy(logits, targets, dim=1, reduction="none")
    assert per_row.shape == (6, 3)
    assert torch.equal(per_row.mean(), MF.soft_cross_entropy(logits, targets, dim=1))
    torch.testing.assert_close(per_row, -(targets * torch.log_softmax(logits, 1)).sum(1))
    flat = logits.transpose(1, 2).reshape(-1, 5), targets.transpose(1, 2).reshape(-1, 5)
    assert torch.equal(losses.soft_cross_entropy(*flat), MF.soft_cross_entropy(*flat, reduction="none"))
    with pytest.raises(ValueError, match="reduction"):
        MF.soft_cross_entropy(logits, targets, reduction="sum")
