"""MultiMix and Dense MultiMix at the embedding layer against plain reference implementations."""

import pytest
import torch
from scipy import stats
from torch import nn

import multimix
import multimix.functional as MF


def reference_multimix(z, targets, head, lam):
    """The definition: soft CE of head(ΛZ) against ΛY, averaged over the n rows."""
    mixed_z = lam @ z
    mixed_y = lam @ targets
    return -(mixed_y * torch.log_softmax(head(mixed_z), dim=1)).sum(1).mean()


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def _setup(head_kind, m=6, d=5, c=4, n=11):
    z = torch.randn(m, d, requires_grad=True)
    y = torch.randint(0, c, (m,))
    head = nn.Linear(d, c) if head_kind == "linear" else nn.Sequential(nn.Linear(d, 7), nn.Tanh(), nn.Linear(7, c))
    lam = MF.dirichlet(n, m, 0.7)
    return z, y, head, lam, c


@pytest.mark.parametrize("head_kind", ["linear", "mlp"])
def test_multimix_equals_reference_loss_and_gradients(head_kind):
    z, y, head, lam, c = _setup(head_kind)
    mm = multimix.MultiMix(n=11, alpha=0.7, num_classes=c, clean_weight=0)
    params = [z] + list(head.parameters())
    ours = mm(z, y, head, lam=lam)
    ref = reference_multimix(z, MF.as_soft_targets(y, c), head, lam)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(_grads(ours, params), _grads(ref, params)):
        torch.testing.assert_close(a, b)


def test_affine_shortcut_equals_explicit_path():
    z, y, head, lam, c = _setup("linear")
    params = [z] + list(head.parameters())
    fast = multimix.MultiMix(n=11)(z, y, head, lam=lam)
    slow = multimix.MultiMix(n=11, affine=False)(z, y, head, lam=lam)
    torch.testing.assert_close(fast, slow)
    for a, b in zip(_grads(fast, params), _grads(slow, params)):
        torch.testing.assert_close(a, b)


def test_affine_shortcut_never_builds_n_by_d(monkeypatch):
    """The shortcut mixes logits: head only ever sees the m clean embeddings."""
    z, y, head, lam, _ = _setup("linear", n=50)
    seen = []
    head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    multimix.MultiMix(n=50)(z, y, head, lam=lam)
    assert seen == [z.shape[0]]


def test_soft_targets_and_clean_weight():
    z, y, head, lam, c = _setup("mlp")
    soft = torch.softmax(torch.randn(6, c), 1)
    ours = multimix.MultiMix(n=11, clean_weight=0.5)(z, soft, head, lam=lam)
    clean = -(soft * torch.log_softmax(head(z), 1)).sum(1).mean()
    torch.testing.assert_close(ours, reference_multimix(z, soft, head, lam) + 0.5 * clean)


def test_sampled_lambda_and_tuple_size():
    g = torch.Generator().manual_seed(0)
    mm = multimix.MultiMix(n=200, alpha=1.0, tuple_size=3, generator=g)
    lam = mm.sample_lam(10)
    assert lam.shape == (200, 10)
    assert ((lam > 0).sum(1) == 3).all()
    torch.testing.assert_close(lam.sum(1), torch.ones(200))
    loss = mm(torch.randn(10, 4), torch.randint(0, 3, (10,)), nn.Linear(4, 3))
    assert torch.isfinite(loss)


def test_batch_of_one():
    z, head = torch.randn(1, 5, requires_grad=True), nn.Linear(5, 3)
    y = torch.tensor([2])
    loss = multimix.MultiMix(n=8)(z, y, head)  # mixed term + clean term, both the plain CE of the one example
    torch.testing.assert_close(loss, 2 * nn.functional.cross_entropy(head(z), y))
    dense = multimix.DenseMultiMix(n=8)(torch.randn(1, 5, 4), y, head)
    assert torch.isfinite(dense)


def test_multimix_with_two_examples_is_mixup():
    """m = 2, n = 2: Λ = [[λ, 1−λ], [1−λ, λ]] gives exactly mixup's loss with the swap pairing."""
    z, head = torch.randn(2, 5), nn.Linear(5, 3)
    y = torch.tensor([0, 2])
    lam_value = 0.3
    lam = torch.tensor([[lam_value, 1 - lam_value], [1 - lam_value, lam_value]])
    mixed = lam_value * z + (1 - lam_value) * z.flip(0)
    mixup = lam_value * nn.functional.cross_entropy(head(mixed), y) + (1 - lam_value) * nn.functional.cross_entropy(head(mixed), y.flip(0))
    torch.testing.assert_close(multimix.MultiMix(n=2, clean_weight=0)(z, y, head, lam=lam), mixup)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_multimix_two_examples_interpolation_factor_is_beta(alpha):
    """With m = 2, MultiMix's factors follow mixup's Beta(α, α) (KS test, fixed seed).

    The test uses the smaller factor min(λ, 1 − λ), whose law is 2·F_Beta(t) on
    [0, ½]: it is exact in float32, while values within ~6e-8 of 1 round to 1.
    """
    mm = multimix.MultiMix(n=5000, alpha=alpha, generator=torch.Generator().manual_seed(0))
    lam = torch.cat([mm.sample_lam(2) for _ in range(4)]).double()
    assert stats.kstest(lam.min(1).values.numpy(), lambda t: 2 * stats.beta(alpha, alpha).cdf(t)).pvalue > 1e-3
    assert abs((lam[:, 0] > 0.5).double().mean().item() - 0.5) < 0.02  # symmetric


# ------------------------------------------------------------------ Dense MultiMix

@pytest.mark.parametrize("attention", ["uniform", "self", "cam"])
def test_dense_with_one_position_equals_multimix(attention):
    z, y, head, lam, c = _setup("linear")
    dense = multimix.DenseMultiMix(n=11, attention=attention, pooled_weight=0)(z.unsqueeze(2), y, head, lam=lam)
    torch.testing.assert_close(dense, multimix.MultiMix(n=11, clean_weight=0)(z, y, head, lam=lam))


@pytest.mark.parametrize("head_kind", ["linear", "mlp"])
def test_dense_uniform_equals_per_position_multimix(head_kind):
    m, d, c, r = 6, 5, 4, 3
    z = torch.randn(m, d, r, requires_grad=True)
    y = torch.randint(0, c, (m,))
    head = nn.Linear(d, c) if head_kind == "linear" else nn.Sequential(nn.Linear(d, 7), nn.ReLU(), nn.Linear(7, c))
    lam = MF.dirichlet(9, m, 0.5)
    dense = multimix.DenseMultiMix(n=9, attention="uniform", num_classes=c, pooled_weight=0)(z, y, head, lam=lam)
    per_position = torch.stack([reference_multimix(z[:, :, j], MF.as_soft_targets(y, c), head, lam) for j in range(r)]).mean()
    torch.testing.assert_close(dense, per_position)
    torch.testing.assert_close(_grads(dense, [z])[0], _grads(per_position, [z])[0])


def reference_dense(z, targets, head, lam, attention):
    """Loop over tuples and positions: the formula of DESIGN.md §6, position by position."""
    n, (m, d, r) = lam.shape[0], z.shape
    total = 0.0
    for k in range(n):
        for j in range(r):
            w = lam[k] * attention[:, j]
            w = w / w.sum()
            z_kj = (w[:, None] * z[:, :, j]).sum(0)
            y_kj = (w[:, None] * targets).sum(0)
            total = total - (y_kj * torch.log_softmax(head(z_kj), 0)).sum()
    return total / (n * r)


@pytest.mark.parametrize("attention", ["self", "cam"])
@pytest.mark.parametrize("affine", [True, False])
def test_dense_attention_equals_loop_reference(attention, affine):
    m, d, c, r = 5, 4, 3, 6
    z = torch.randn(m, d, 2, 3)
    y = torch.randint(0, c, (m,))
    head = nn.Linear(d, c)
    lam = MF.dirichlet(4, m, 1.0)
    zf = z.flatten(2)
    if attention == "self":
        att = MF.self_attention(zf)
    else:
        att = MF.class_activation_attention(zf, head.weight.detach(), MF.as_soft_targets(y, c))
    ours = multimix.DenseMultiMix(n=4, attention=attention, affine=affine, pooled_weight=0)(z, y, head, lam=lam)
    torch.testing.assert_close(ours, reference_dense(zf, MF.as_soft_targets(y, c), head, lam, att))


def test_dense_labels_inherited_per_position():
    """Hard labels and per-position targets that repeat them everywhere give the same loss."""
    m, d, c = 4, 5, 3
    z, y, head = torch.randn(m, d, 2, 2), torch.randint(0, c, (m,)), nn.Linear(d, c)
    lam = MF.dirichlet(6, m, 1.0)
    per_position = MF.as_soft_targets(y, c)[:, :, None, None].expand(m, c, 2, 2)
    dmm = multimix.DenseMultiMix(n=6, attention="self")
    torch.testing.assert_close(dmm(z, y, head, lam=lam), dmm(z, per_position, head, lam=lam))


def test_dense_attention_not_backpropagated_unless_asked():
    z = torch.randn(4, 5, 3, requires_grad=True)
    y, head, lam = torch.randint(0, 3, (4,)), nn.Linear(5, 3), MF.dirichlet(6, 4, 1.0)
    g_default = _grads(multimix.DenseMultiMix(n=6, attention="self")(z, y, head, lam=lam), [z])[0]
    g_through = _grads(multimix.DenseMultiMix(n=6, attention="self", attention_grad=True)(z, y, head, lam=lam), [z])[0]
    assert not torch.allclose(g_default, g_through)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("call,match", [
    (lambda: multimix.MultiMix(alpha=0), "alpha"),
    (lambda: multimix.MultiMix(alpha=float("nan")), "alpha"),
    (lambda: multimix.MultiMix(n=0), "n must"),
    (lambda: multimix.DenseMultiMix(attention="bogus"), "attention"),
    (lambda: multimix.MultiMix()(torch.randn(4, 3), torch.tensor([0, 1, 2]), nn.Linear(3, 3)), "batch"),
    (lambda: multimix.MultiMix()(torch.randn(2, 3), torch.tensor([0, 5]), nn.Linear(3, 3)), r"\[0, 3\)"),
    (lambda: multimix.MultiMix()(torch.randn(2, 3), torch.rand(2, 4), nn.Linear(3, 3)), "width"),
    (lambda: multimix.MultiMix()(torch.randn(0, 3), torch.zeros(0, dtype=torch.long), nn.Linear(3, 3)), "at least one"),
    (lambda: multimix.MultiMix()(torch.randn(2, 3), torch.tensor([0, 1]), nn.Linear(3, 3), lam=torch.ones(4, 3) / 3), "shape"),
    (lambda: multimix.MultiMix()(torch.randn(2, 3), torch.tensor([0, 1]), nn.Linear(3, 3), lam=torch.ones(4, 2)), "sum to 1"),
    (lambda: multimix.MultiMix()(torch.randn(2, 3), torch.tensor([0, 1]), nn.Tanh()), "num_classes"),
    (lambda: multimix.MultiMix()(torch.randn(2, 3, 4), torch.tensor([0, 1]), nn.Linear(3, 3)), "DenseMultiMix"),
    (lambda: multimix.DenseMultiMix()(torch.randn(2, 3), torch.tensor([0, 1]), nn.Linear(3, 3)), "spatial"),
    (lambda: multimix.DenseMultiMix(attention="cam", num_classes=3)(torch.randn(2, 3, 4), torch.tensor([0, 1]), nn.Tanh()), "cam"),
])
def test_bad_input_raises_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_input_raises_before_sampling():
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    with pytest.raises(ValueError):
        multimix.MultiMix(generator=g)(torch.randn(2, 3), torch.tensor([0, 9]), nn.Linear(3, 3))
    assert torch.equal(g.get_state(), state)


def test_dense_attention_weighted_loss():
    """Uniform attention makes the weighting uniform; otherwise it is Σ_j (Σ_i λ_ki a_ij) CE_kj, averaged over k."""
    m, d, c, r = 5, 4, 3, 6
    z, y, head = torch.randn(m, d, r), torch.randint(0, c, (m,)), nn.Linear(d, c)
    lam = MF.dirichlet(7, m, 1.0)
    for attention in ("uniform", "self"):
        plain = multimix.DenseMultiMix(n=7, attention=attention, pooled_weight=0)(z, y, head, lam=lam)
        weighted = multimix.DenseMultiMix(n=7, attention=attention, position_weighting="attention", pooled_weight=0)(z, y, head, lam=lam)
        if attention == "uniform":
            torch.testing.assert_close(weighted, plain)
    att = MF.self_attention(z)
    w = MF.dense_interpolation_weights(lam, att)
    targets = MF.as_soft_targets(y, c)
    total = 0.0
    for k in range(7):
        for j in range(r):
            z_kj = (w[k, :, j, None] * z[:, :, j]).sum(0)
            y_kj = (w[k, :, j, None] * targets).sum(0)
            ce = -(y_kj * torch.log_softmax(head(z_kj), 0)).sum()
            total = total + (lam[k] * att[:, j]).sum() * ce
    torch.testing.assert_close(weighted, total / 7)
    with pytest.raises(ValueError, match="position_weighting"):
        multimix.DenseMultiMix(position_weighting="bogus")


@pytest.mark.parametrize("m, tuple_size", [(64, None), (256, None), (128, 8)])
def test_concentration_is_alpha_per_tuple_length(m, tuple_size):
    """concentration A draws exactly what alpha = A / t draws, for the tuple length t of each batch."""
    t = m if tuple_size is None else tuple_size
    by_total = multimix.MultiMix(n=50, concentration=2.0, tuple_size=tuple_size, generator=torch.Generator().manual_seed(3))
    by_alpha = multimix.MultiMix(n=50, alpha=2.0 / t, tuple_size=tuple_size, generator=torch.Generator().manual_seed(3))
    assert by_total.alpha_for(t) == pytest.approx(2.0 / t)
    torch.testing.assert_close(by_total.sample_lam(m), by_alpha.sample_lam(m), rtol=0, atol=0)


def test_concentration_keeps_the_number_of_weighted_examples_across_batch_sizes():
    """With A fixed, the mean largest weight of a row hardly moves from m = 64 to 1024; with α fixed it collapses."""
    def mean_max(mm, m):
        return mm.sample_lam(m).max(1).values.mean().item()
    g = torch.Generator().manual_seed(0)
    fixed_total = multimix.MultiMix(n=4000, concentration=1.0, generator=g)
    fixed_alpha = multimix.MultiMix(n=4000, alpha=1.0 / 64, generator=g)
    assert abs(mean_max(fixed_total, 64) - mean_max(fixed_total, 1024)) < 0.03
    assert mean_max(fixed_alpha, 64) - mean_max(fixed_alpha, 1024) > 0.2


def test_defaults_are_the_validated_ones():
    mm, dense = multimix.MultiMix(), multimix.DenseMultiMix()
    assert (mm.alpha, mm.concentration, mm.clean_weight) == (None, 1.0, 1.0)
    assert (dense.alpha, dense.concentration, dense.clean_weight, dense.attention, dense.pooled_weight) == (
        None, 0.5, 0.0, "self", 3.0)
    assert multimix.MultiMix(alpha=0.1).concentration is None


def test_alpha_and_concentration_are_exclusive():
    with pytest.raises(ValueError, match="alpha or concentration"):
        multimix.MultiMix(alpha=0.1, concentration=1.0)
    with pytest.raises(ValueError, match="concentration"):
        multimix.MultiMix(concentration=0.0)


def test_multimix_rows_per_draw_reaches_the_sampler():
    mm = multimix.MultiMix(n=12, alpha=0.5, rows_per_draw=4, generator=torch.Generator().manual_seed(0))
    lam = mm.sample_lam(16)
    ref = multimix.functional.dirichlet(12, 16, 0.5, rows_per_draw=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lam, ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="rows_per_draw"):
        multimix.MultiMix(rows_per_draw=0)


@pytest.mark.parametrize("head_kind", ["linear", "mlp"])
def test_dense_pooled_weight_adds_multimix_on_pooled_embeddings(head_kind):
    """pooled_weight β: loss = dense loss + β · MultiMix(mean over positions of z) with the same Λ."""
    torch.manual_seed(0)
    m, d, r, c, n = 6, 5, 4, 3, 7
    z = torch.randn(m, d, r, requires_grad=True)
    y = torch.randint(0, c, (m,))
    head = nn.Linear(d, c) if head_kind == "linear" else nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, c))
    lam = multimix.functional.dirichlet(n, m, 0.5, generator=torch.Generator().manual_seed(1))
    kw = dict(n=n, num_classes=c, attention="self")
    ours = multimix.DenseMultiMix(pooled_weight=0.7, **kw)(z, y, head, lam=lam)
    ref = multimix.DenseMultiMix(pooled_weight=0, **kw)(z, y, head, lam=lam) + 0.7 * multimix.MultiMix(
        n=n, num_classes=c, clean_weight=0)(z.mean(2), y, head, lam=lam)
    torch.testing.assert_close(ours, ref)
    params = [z] + list(head.parameters())
    for a, b in zip(torch.autograd.grad(ours, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="pooled_weight"):
        multimix.DenseMultiMix(pooled_weight=-1.0)


@pytest.mark.parametrize("cls,shape", [(multimix.MultiMix, (6, 5)), (multimix.DenseMultiMix, (6, 5, 3))])
def test_multi_hot_label_rows_are_refused_in_one_line(cls, shape):
    """The loss is soft cross-entropy: soft rows that sum to 2 (multi-hot) are not probabilities, as in the methods."""
    z, head = torch.randn(*shape), nn.Linear(5, 4)
    multi_hot = nn.functional.one_hot(torch.tensor([1, 2, 3, 1, 2, 3]), 4).float()
    multi_hot[:, 0] = 1.0  # every row also has class 0: rows sum to 2
    with pytest.raises(ValueError, match=r"summing to 2\. .*bce_with_logits") as refused:
        cls(n=7)(z, multi_hot, head)
    assert "\n" not in str(refused.value)
    negative = torch.full((6, 4), 0.5)
    negative[:, 0] = -0.5  # sums to 1, but not probabilities
    with pytest.raises(ValueError, match="got an entry of -0.5"):
        cls(n=7)(z, negative, head)
    probabilities = torch.softmax(torch.randn(6, 4), 1)
    assert torch.isfinite(cls(n=7)(z, probabilities, head))


def test_one_row_validator_for_methods_and_embedding_mixes():
    """methods.Method.check_label_rows is functional.check_label_rows with the criterion hint (no second copy)."""
    rows = torch.tensor([[1.0, 1.0], [0.5, 0.5]])
    with pytest.raises(ValueError, match="summing to 2") as direct:
        MF.check_label_rows(rows)
    with pytest.raises(ValueError, match="summing to 2") as method:
        multimix.methods.Method.check_label_rows(rows)
    assert str(method.value).startswith(str(direct.value))
    with pytest.raises(ValueError, match="summing to nan"):
        MF.check_label_rows(torch.tensor([[float("nan"), 0.0]]))
    MF.check_label_rows(torch.tensor([[0.25, 0.75], [1.0, 0.0]]))
