"""Metrics (calibration, OOD detection, embedding geometry, plots) and L∞ attacks."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import multimix.attacks as A
import multimix.metrics as M

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _probs_with_confidence(conf, correct, c=3):
    """Rows whose max is ``conf`` at class 0 (rest spread evenly); label 0 if correct else 1."""
    conf = torch.tensor(conf, dtype=torch.float64)
    rest = (1 - conf) / (c - 1)
    probs = rest.unsqueeze(1).repeat(1, c)
    probs[:, 0] = conf
    labels = torch.tensor([0 if ok else 1 for ok in correct])
    return probs, labels


# ---------------------------------------------------------------- calibration

def test_ece_hand_computed():
    # 5 bins of width 0.2; confidences 0.5, 0.55 (bin 2), 0.9, 0.95, 0.99 (bin 4), 0.7 (bin 3)
    probs, labels = _probs_with_confidence([0.5, 0.55, 0.7, 0.9, 0.95, 0.99],
                                           [True, False, False, True, True, False])
    # bin 2: acc 1/2, conf 0.525 -> gap 0.025, weight 2/6
    # bin 3: acc 0,   conf 0.7   -> gap 0.7,   weight 1/6
    # bin 4: acc 2/3, conf (0.9+0.95+0.99)/3 = 0.94666…, gap 0.28, weight 3/6
    expected = (2 / 6) * 0.025 + (1 / 6) * 0.7 + (3 / 6) * abs(2 / 3 - (0.9 + 0.95 + 0.99) / 3)
    assert M.expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(expected, abs=1e-12)
    bins = M.reliability_bins(probs, labels, n_bins=5)
    assert bins["count"].tolist() == [0, 0, 2, 1, 3]
    assert bins["count"].dtype == torch.int64
    torch.testing.assert_close(bins["edges"], torch.linspace(0, 1, 6, dtype=torch.float64))
    assert torch.isnan(bins["accuracy"][:2]).all() and torch.isnan(bins["confidence"][:2]).all()
    torch.testing.assert_close(bins["accuracy"][2:], torch.tensor([0.5, 0.0, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(bins["confidence"][2:],
                               torch.tensor([0.525, 0.7, (0.9 + 0.95 + 0.99) / 3], dtype=torch.float64))


def test_ece_bins_are_right_closed_and_zero_goes_first():
    # confidence exactly 0.6 (an edge with 5 bins) is in bin (0.4, 0.6] = 2, and 1.0 in the last bin
    probs = torch.tensor([[0.6, 0.4], [0.4, 0.6], [1.0, 0.0]], dtype=torch.float64)
    bins = M.reliability_bins(probs, torch.tensor([0, 0, 0]), n_bins=5)
    assert bins["count"].tolist() == [0, 0, 2, 0, 1]
    assert M.reliability_bins(probs, torch.tensor([0, 0, 0]), n_bins=1)["count"].tolist() == [3]


def test_ece_zero_when_perfectly_calibrated():
    # bin with confidence 0.75: 3 of 4 right; bin with confidence 0.5 (c = 2): 1 of 2 right
    probs, labels = _probs_with_confidence([0.75] * 4, [True, True, True, False], c=4)
    p2 = torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=torch.float64)
    assert M.expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert M.expected_calibration_error(p2, torch.tensor([0, 1])) == pytest.approx(0.0, abs=1e-12)


def test_ece_always_wrong_and_confident_is_one():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert M.expected_calibration_error(probs, torch.tensor([1, 0])) == pytest.approx(1.0)


def test_reliability_counts_sum_to_n_and_ece_matches_bins():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 10, generator=g) * 3
    labels = torch.randint(0, 10, (500,), generator=g)
    probs = logits.softmax(1)
    bins = M.reliability_bins(probs, labels, n_bins=15)
    assert bins["count"].sum().item() == 500
    assert bins["edges"].shape == (16,) and bins["confidence"].shape == (15,) and bins["accuracy"].shape == (15,)
    empty = bins["count"] == 0
    assert empty.any()  # confidences ≥ 1/10: the first bin is empty
    assert torch.isnan(bins["accuracy"][empty]).all() and torch.isnan(bins["confidence"][empty]).all()
    assert not torch.isnan(bins["accuracy"][~empty]).any()
    # reference: plain Python loop over examples
    conf, pred = probs.double().max(1)
    ece = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        sel = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if sel.any():
            ece += sel.sum().item() / 500 * abs((pred[sel] == labels[sel]).double().mean().item() - conf[sel].mean().item())
    assert M.expected_calibration_error(probs, labels) == pytest.approx(ece, abs=1e-6)
    # half precision input works and agrees
    assert M.expected_calibration_error(probs.half(), labels) == pytest.approx(ece, abs=5e-3)


def test_calibration_bad_input():
    probs = torch.full((4, 2), 0.5)
    labels = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="probs"):
        M.expected_calibration_error(torch.randn(4, 3), labels)  # logits, not probabilities
    with pytest.raises(ValueError, match="labels"):
        M.expected_calibration_error(probs, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="labels"):
        M.reliability_bins(probs, labels[:3])
    with pytest.raises(ValueError, match="n_bins"):
        M.reliability_bins(probs, labels, n_bins=0)
    with pytest.raises(TypeError, match="labels"):
        M.reliability_bins(probs, labels.float())


# ---------------------------------------------------------------- OOD scores

def test_msp_and_energy_hand_values():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [1.0, 2.0]])
    torch.testing.assert_close(M.msp_score(logits), torch.tensor([0.5, 0.75, math.exp(2) / (math.e + math.exp(2))]))
    torch.testing.assert_close(M.energy_score(logits),
                               torch.tensor([math.log(2.0), math.log(4.0), math.log(math.e + math.exp(2))]))
    # T = 2: 2·log(e^{0/2} + e^{0/2}) = 2 log 2; 2·log(e^{1/2} + e^{1})
    torch.testing.assert_close(M.energy_score(logits, temperature=2.0)[[0, 2]],
                               torch.tensor([2 * math.log(2.0), 2 * math.log(math.exp(0.5) + math.e)]))
    assert M.msp_score(logits.half()).dtype == torch.float32
    with pytest.raises(ValueError, match="temperature"):
        M.energy_score(logits, temperature=0.0)
    with pytest.raises(ValueError, match="logits"):
        M.msp_score(torch.zeros(3))


def _sklearn_reference(scores_in, scores_out):
    metrics = pytest.importorskip("sklearn.metrics")
    y = np.r_[np.ones(len(scores_in)), np.zeros(len(scores_out))]
    s = np.r_[scores_in.numpy(), scores_out.numpy()]
    auc = metrics.roc_auc_score(y, s)
    fpr, tpr, _ = metrics.roc_curve(y, s, drop_intermediate=False)
    return auc, fpr[np.searchsorted(tpr, 0.95, side="left")]


@pytest.mark.parametrize("seed", range(6))
def test_auroc_and_fpr95_match_sklearn_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    n_in, n_out = [(200, 300), (57, 41), (20, 1000), (1, 5), (333, 2), (100, 100)][seed]
    levels = [3, 7, 20, 4, 10, 2][seed]  # few distinct values: many ties, within and across the sets
    # integer-valued, so exactly representable in every dtype (ties stay ties)
    scores_in = torch.randint(0, levels, (n_in,), generator=g).double() + 1
    scores_out = torch.randint(0, levels, (n_out,), generator=g).double()
    auc, fpr = _sklearn_reference(scores_in, scores_out)
    assert M.auroc(scores_in, scores_out) == pytest.approx(auc, abs=1e-12)
    assert M.fpr_at_tpr(scores_in, scores_out) == pytest.approx(fpr, abs=1e-12)
    # float32 and integer scores give the same
    assert M.auroc(scores_in.float(), scores_out.float()) == pytest.approx(auc, abs=1e-12)
    assert M.auroc(scores_in.long(), scores_out.long()) == pytest.approx(auc, abs=1e-12)
    assert M.fpr_at_tpr(scores_in.long(), scores_out.float()) == pytest.approx(fpr, abs=1e-12)


def test_auroc_and_fpr_continuous_scores_match_sklearn():
    g = torch.Generator().manual_seed(7)
    scores_in, scores_out = torch.randn(1000, generator=g) + 1.0, torch.randn(1500, generator=g)
    auc, fpr = _sklearn_reference(scores_in, scores_out)
    assert M.auroc(scores_in, scores_out) == pytest.approx(auc, abs=1e-12)
    assert M.fpr_at_tpr(scores_in, scores_out, tpr=0.95) == pytest.approx(fpr, abs=1e-12)


def test_auroc_extremes():
    a = torch.arange(10.0)
    assert M.auroc(a + 100, a) == 1.0
    assert M.auroc(a, a + 100) == 0.0
    assert M.auroc(a, a.clone()) == 0.5
    assert M.auroc(torch.ones(7), torch.ones(3)) == 0.5
    assert M.fpr_at_tpr(a + 100, a) == 0.0
    assert M.fpr_at_tpr(a, a + 100) == 1.0


def test_fpr_at_tpr_definition():
    # 20 in-distribution scores 1..20: TPR ≥ 0.95 needs 19 of them, threshold = 19th largest = 2
    scores_in = torch.arange(1.0, 21.0)
    scores_out = torch.tensor([0.0, 1.0, 1.9, 2.0, 2.1, 50.0])
    assert M.fpr_at_tpr(scores_in, scores_out, tpr=0.95) == pytest.approx(3 / 6)  # 2.0, 2.1, 50 ≥ 2
    assert M.fpr_at_tpr(scores_in, scores_out, tpr=1.0) == pytest.approx(5 / 6)  # threshold 1
    assert M.fpr_at_tpr(scores_in, scores_out, tpr=0.05) == pytest.approx(1 / 6)  # threshold 20
    with pytest.raises(ValueError, match="tpr"):
        M.fpr_at_tpr(scores_in, scores_out, tpr=0.0)
    with pytest.raises(ValueError, match="scores_out"):
        M.fpr_at_tpr(scores_in, torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="scores_in"):
        M.auroc(torch.zeros(0), scores_out)


# ---------------------------------------------------------------- embedding geometry

def _square():
    """Vertices of a square on the unit circle (scaled, to check normalisation), classes {0°, 90°}, {180°, 270°}."""
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]) * torch.tensor([[2.0], [0.5], [3.0], [1.0]])
    return z, torch.tensor([0, 0, 1, 1])


def test_geometry_on_a_square():
    z, labels = _square()
    # same-class pairs are adjacent: distance √2; different-class pairs: 2, √2, √2, 2
    assert M.alignment(z, labels) == pytest.approx(2.0, rel=1e-5)
    assert M.alignment(z, labels, alpha=1.0) == pytest.approx(math.sqrt(2), rel=1e-5)
    assert M.class_distance_ratio(z, labels) == pytest.approx(math.sqrt(2) / (1 + math.sqrt(2) / 2), rel=1e-5)
    # 6 pairs: 4 adjacent (d² = 2), 2 opposite (d² = 4)
    expected = math.log((4 * math.exp(-4) + 2 * math.exp(-8)) / 6)
    assert M.uniformity(z) == pytest.approx(expected, rel=1e-5)
    assert M.uniformity(z, t=1.0) == pytest.approx(math.log((4 * math.exp(-2) + 2 * math.exp(-4)) / 6), rel=1e-5)


def test_geometry_on_a_simplex():
    # the 5 standard basis vectors of R^5: every pair at distance √2 (a regular simplex)
    z = torch.eye(5, dtype=torch.float64) * 7
    assert M.uniformity(z, t=2.0) == pytest.approx(-4.0, rel=1e-9)
    labels = torch.tensor([0, 0, 1, 1, 1])
    assert M.alignment(z, labels) == pytest.approx(2.0, rel=1e-9)
    assert M.class_distance_ratio(z, labels) == pytest.approx(1.0, rel=1e-9)
    # two tight classes: ratio ≪ 1, alignment ≈ 0
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.arange(2).repeat(50)
    tight = centres[labels] + 1e-3 * torch.randn(100, 3, generator=g)
    assert M.class_distance_ratio(tight, labels) < 0.01
    assert M.alignment(tight, labels) < 1e-4


def test_geometry_subsampling_is_reproducible_and_bounded():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3000, 8, generator=g)
    labels = torch.randint(0, 5, (3000,), generator=g)
    state = torch.get_rng_state()
    full = M.alignment(z, labels, max_points=None)
    a = M.alignment(z, labels, max_points=500, generator=torch.Generator().manual_seed(3))
    b = M.alignment(z, labels, max_points=500, generator=torch.Generator().manual_seed(3))
    c = M.alignment(z, labels, max_points=500)  # no generator: fixed seed, deterministic
    assert a == b and c == M.alignment(z, labels, max_points=500)
    assert a != c and abs(a - full) < 0.1
    assert M.uniformity(z, max_points=5000) == pytest.approx(M.uniformity(z, max_points=None))
    assert abs(M.class_distance_ratio(z, labels, max_points=400) - 1.0) < 0.05  # labels unrelated to z
    assert torch.equal(torch.get_rng_state(), state)


def test_geometry_bad_input():
    z, labels = _square()
    with pytest.raises(ValueError, match="labels"):
        M.alignment(z, torch.tensor([0, 1, 2, 3]))  # no same-class pair
    with pytest.raises(ValueError, match="labels"):
        M.class_distance_ratio(z, torch.zeros(4, dtype=torch.long))  # no different-class pair
    with pytest.raises(ValueError, match="z"):
        M.uniformity(z[:1])
    with pytest.raises(ValueError, match="max_points"):
        M.uniformity(z, max_points=1)
    with pytest.raises(ValueError, match="alpha"):
        M.alignment(z, labels, alpha=-1.0)


# ---------------------------------------------------------------- projections and plots

def test_project_2d_pca_matches_sklearn_and_is_deterministic():
    decomposition = pytest.importorskip("sklearn.decomposition")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 6, generator=g, dtype=torch.float64) * torch.tensor([5.0, 3.0, 1.0, 0.5, 0.2, 0.1]) + 4.0
    xy = M.project_2d(z)
    assert xy.shape == (200, 2) and xy.dtype == torch.float64
    ref = decomposition.PCA(n_components=2).fit_transform(z.numpy())
    for k in range(2):  # equal up to the sign of each component
        col = xy[:, k].numpy()
        assert min(np.abs(col - ref[:, k]).max(), np.abs(col + ref[:, k]).max()) < 1e-8
    # sign convention: shuffling the rows (which can flip the SVD's signs) permutes the result
    perm = torch.randperm(200, generator=g)
    torch.testing.assert_close(M.project_2d(z[perm]), xy[perm])
    torch.testing.assert_close(M.project_2d(z.float()), xy.float(), atol=1e-3, rtol=1e-4)
    assert abs(xy[:, 0].var().item() - ref[:, 0].var(ddof=1)) < 1e-8 and xy[:, 0].var() > xy[:, 1].var()


def test_project_2d_tsne():
    pytest.importorskip("sklearn")
    g = torch.Generator().manual_seed(0)
    z = torch.cat([torch.randn(20, 5, generator=g), torch.randn(20, 5, generator=g) + 8])
    state = torch.get_rng_state()
    a = M.project_2d(z, "tsne", generator=torch.Generator().manual_seed(1))
    b = M.project_2d(z, "tsne", generator=torch.Generator().manual_seed(1))
    assert a.shape == (40, 2) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="method"):
        M.project_2d(z, "umap")


def _assert_png(path, min_bytes=5000):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes, len(data)


def test_plot_reliability_diagram(tmp_path):
    pytest.importorskip("matplotlib")
    g = torch.Generator().manual_seed(0)
    probs = (torch.randn(300, 10, generator=g) * 2).softmax(1)
    labels = torch.randint(0, 10, (300,), generator=g)
    out = M.plot_reliability_diagram(probs, labels, tmp_path / "sub" / "rel.png", title="test")
    assert out == tmp_path / "sub" / "rel.png"
    _assert_png(out)


def test_plot_embeddings(tmp_path):
    pytest.importorskip("matplotlib")
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (120,), generator=g)
    z = torch.randn(120, 16, generator=g) + 3 * F.one_hot(labels, 16).float()
    out = M.plot_embeddings({"ERM": (z, labels), "MultiMix": (z * 2, labels), "few": (z[:10], labels[:10])},
                            str(tmp_path / "emb.png"), title="embeddings", max_points=100)
    _assert_png(out)
    with pytest.raises(ValueError, match="panels"):
        M.plot_embeddings({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="panels"):
        M.plot_embeddings({"a": (z, labels[:5])}, tmp_path / "x.png")


# ---------------------------------------------------------------- attacks

def _linear_model(d=6, c=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, c)).double()


def _closed_form_grad(model, x, y):
    """∇_x CE(Wx + b, y) = Wᵀ(softmax(Wx + b) − onehot(y)) for a linear model."""
    lin = model[1]
    p = (x.flatten(1) @ lin.weight.T + lin.bias).softmax(1)
    return ((p - F.one_hot(y, p.shape[1]).to(p)) @ lin.weight).view_as(x)


def test_fgsm_follows_the_gradient_sign_within_budget():
    model = _linear_model().eval()
    g = torch.Generator().manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(16, 2, 3, generator=g, dtype=torch.float64)  # in [0.3, 0.7]: no clamping at eps 0.1
    y = torch.randint(0, 3, (16,), generator=g)
    x_adv = A.fgsm(model, x, y, 0.1)
    expected = x + 0.1 * _closed_form_grad(model, x, y).sign()
    torch.testing.assert_close(x_adv, expected)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-12
    assert x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    # the loss goes up
    assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
    # under an outer no_grad, and in train mode (mode left as it is)
    model.train()
    with torch.no_grad():
        torch.testing.assert_close(A.fgsm(model, x, y, 0.1), expected)
    assert model.training


def test_fgsm_clamps_to_range():
    model = _linear_model().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(32, 6, generator=g, dtype=torch.float64)
    x[:4] = 0.0
    x[4:8] = 1.0
    y = torch.randint(0, 3, (32,), generator=g)
    x_adv = A.fgsm(model, x, y, 0.25)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert (x_adv - x).abs().max() <= 0.25 + 1e-12
    unclamped = A.fgsm(model, x, y, 0.25, clamp=None)
    assert unclamped.min() < 0.0 or unclamped.max() > 1.0
    torch.testing.assert_close(unclamped.clamp(0, 1), x_adv)
    # inputs outside the clamp range (e.g. standardised data) are refused, not silently clipped
    with pytest.raises(ValueError, match="clamp"):
        A.fgsm(model, x * 4 - 2, y, 0.1)
    with pytest.raises(ValueError, match="eps"):
        A.fgsm(model, x, y, -0.1)
    with pytest.raises(ValueError, match="y"):
        A.fgsm(model, x, y[:3], 0.1)


def test_fgsm_through_normalisation():
    model = _linear_model(d=6, c=3, seed=2).eval()
    norm = A.Normalize([0.9, 0.1], [0.1, 0.5])  # 2 channels of length 3
    g = torch.Generator().manual_seed(2)
    x = 0.2 + 0.6 * torch.rand(64, 2, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=g)
    x_adv = A.fgsm(model, x, y, 0.05, normalize=norm)
    # chain rule: ∇_x = (1/std)·∇_n at n = normalize(x); std > 0, so the sign is that of ∇_n
    grad_n = _closed_form_grad(model, norm(x), y)
    torch.testing.assert_close(x_adv, x + 0.05 * grad_n.sign())
    assert (x_adv - x).abs().max().item() == pytest.approx(0.05)  # eps in pixel space
    # the gradient is taken at normalize(x): ignoring normalisation gives a different attack
    assert not torch.equal(A.fgsm(model, x, y, 0.05), x_adv)
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(norm.inverse(norm(x)), x)
    torch.testing.assert_close(norm(x)[:, 0], (x[:, 0] - 0.9) / 0.1)
    with pytest.raises(ValueError, match="std"):
        A.Normalize([0.5], [0.0])
    with pytest.raises(ValueError, match="channels"):
        norm(torch.zeros(2, 3, 3))


def _trained_mlp():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 10, generator=g)
    y = (x[:, :5].sum(1) > x[:, 5:].sum(1)).long() + 2 * (x[:, 0] > 0.5).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), x, y


def test_pgd_stronger_than_fgsm_within_ball_and_reproducible():
    model, x, y = _trained_mlp()
    eps = 0.1
    state = torch.get_rng_state()
    kw = dict(step_size=eps / 4, steps=10)
    x_pgd = A.pgd(model, x, y, eps, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert (x_pgd - x).abs().max() <= eps + 1e-6
    assert x_pgd.min() >= 0.0 and x_pgd.max() <= 1.0
    assert all(p.grad is None for p in model.parameters()) and not model.training
    torch.testing.assert_close(A.pgd(model, x, y, eps, generator=torch.Generator().manual_seed(5), **kw), x_pgd)
    assert not torch.equal(A.pgd(model, x, y, eps, generator=torch.Generator().manual_seed(6), **kw), x_pgd)
    torch.testing.assert_close(A.pgd(model, x, y, eps, **kw), A.pgd(model, x, y, eps, **kw))  # default seed
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y)
        loss_fgsm = F.cross_entropy(model(A.fgsm(model, x, y, eps)), y)
        loss_pgd = F.cross_entropy(model(x_pgd), y)
    assert clean < loss_fgsm <= loss_pgd
    # error under attack: clean < FGSM ≤ PGD
    batches = [(x[:128], y[:128]), (x[128:], y[128:])]
    err_clean = A.error_under_attack(model, batches, None)
    err_fgsm = A.error_under_attack(model, batches, A.fgsm, eps=eps)
    err_pgd = A.error_under_attack(model, batches, A.pgd, eps=eps, generator=torch.Generator().manual_seed(0), **kw)
    assert err_clean == pytest.approx(100.0 * (model(x).argmax(1) != y).float().mean().item())
    assert err_clean < err_fgsm <= err_pgd
    assert torch.equal(torch.get_rng_state(), state)


def test_pgd_linear_binary_reaches_the_fgsm_vertex():
    """For 2 classes and a linear model the gradient sign is constant: PGD ends at FGSM's point."""
    model = _linear_model(d=6, c=2, seed=3).eval()
    g = torch.Generator().manual_seed(3)
    x = 0.3 + 0.4 * torch.rand(20, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (20,), generator=g)
    x_fgsm = A.fgsm(model, x, y, 0.1)
    x_pgd = A.pgd(model, x, y, 0.1, step_size=0.05, steps=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x_pgd, x_fgsm)
    # no random start, steps of eps/2: two steps reach the vertex too
    torch.testing.assert_close(A.pgd(model, x, y, 0.1, step_size=0.05, steps=2, random_start=False), x_fgsm)


def test_pgd_with_normalize_and_without_clamp():
    model = _linear_model(d=6, c=3, seed=4).eval()
    norm = A.Normalize(0.5, 0.25)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 2, 3, generator=g, dtype=torch.float64) * 3  # unbounded (standardised) inputs
    y = torch.randint(0, 3, (16,), generator=g)
    x_adv = A.pgd(model, x, y, 0.2, step_size=0.05, steps=8, normalize=norm, clamp=None,
                  generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 0.2 + 1e-12
    with torch.no_grad():
        assert F.cross_entropy(model(norm(x_adv)), y) > F.cross_entropy(model(norm(x)), y)
    with pytest.raises(ValueError, match="steps"):
        A.pgd(model, x, y, 0.2, step_size=0.05, steps=0, clamp=None)
    with pytest.raises(ValueError, match="step_size"):
        A.pgd(model, x, y, 0.2, step_size=0.0, steps=1, clamp=None)
