"""White-box L∞ attacks (FGSM, PGD), input normalisation and the error under attack."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import multimix.evaluation.attacks as A


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
