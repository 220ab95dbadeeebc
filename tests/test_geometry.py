"""Embedding geometry (alignment, uniformity, class distance ratio) and 2-D projections."""

import math

import numpy as np
import pytest
import torch

import multimix.evaluation.geometry as G


def _square():
    """Vertices of a square on the unit circle (scaled, to check normalisation), classes {0°, 90°}, {180°, 270°}."""
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]) * torch.tensor([[2.0], [0.5], [3.0], [1.0]])
    return z, torch.tensor([0, 0, 1, 1])


def test_geometry_on_a_square():
    z, labels = _square()
    # same-class pairs are adjacent: distance √2; different-class pairs: 2, √2, √2, 2
    assert G.alignment(z, labels) == pytest.approx(2.0, rel=1e-5)
    assert G.alignment(z, labels, alpha=1.0) == pytest.approx(math.sqrt(2), rel=1e-5)
    assert G.class_distance_ratio(z, labels) == pytest.approx(math.sqrt(2) / (1 + math.sqrt(2) / 2), rel=1e-5)
    # 6 pairs: 4 adjacent (d² = 2), 2 opposite (d² = 4)
    expected = math.log((4 * math.exp(-4) + 2 * math.exp(-8)) / 6)
    assert G.uniformity(z) == pytest.approx(expected, rel=1e-5)
    assert G.uniformity(z, t=1.0) == pytest.approx(math.log((4 * math.exp(-2) + 2 * math.exp(-4)) / 6), rel=1e-5)


def test_geometry_on_a_simplex():
    # the 5 standard basis vectors of R^5: every pair at distance √2 (a regular simplex)
    z = torch.eye(5, dtype=torch.float64) * 7
    assert G.uniformity(z, t=2.0) == pytest.approx(-4.0, rel=1e-9)
    labels = torch.tensor([0, 0, 1, 1, 1])
    assert G.alignment(z, labels) == pytest.approx(2.0, rel=1e-9)
    assert G.class_distance_ratio(z, labels) == pytest.approx(1.0, rel=1e-9)
    # two tight classes: ratio ≪ 1, alignment ≈ 0
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.arange(2).repeat(50)
    tight = centres[labels] + 1e-3 * torch.randn(100, 3, generator=g)
    assert G.class_distance_ratio(tight, labels) < 0.01
    assert G.alignment(tight, labels) < 1e-4


def test_geometry_subsampling_is_reproducible_and_bounded():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3000, 8, generator=g)
    labels = torch.randint(0, 5, (3000,), generator=g)
    state = torch.get_rng_state()
    full = G.alignment(z, labels, max_points=None)
    a = G.alignment(z, labels, max_points=500, generator=torch.Generator().manual_seed(3))
    b = G.alignment(z, labels, max_points=500, generator=torch.Generator().manual_seed(3))
    c = G.alignment(z, labels, max_points=500)  # no generator: fixed seed, deterministic
    assert a == b and c == G.alignment(z, labels, max_points=500)
    assert a != c and abs(a - full) < 0.1
    assert G.uniformity(z, max_points=5000) == pytest.approx(G.uniformity(z, max_points=None))
    assert abs(G.class_distance_ratio(z, labels, max_points=400) - 1.0) < 0.05  # labels unrelated to z
    assert torch.equal(torch.get_rng_state(), state)


def test_geometry_bad_input():
    z, labels = _square()
    with pytest.raises(ValueError, match="labels"):
        G.alignment(z, torch.tensor([0, 1, 2, 3]))  # no same-class pair
    with pytest.raises(ValueError, match="labels"):
        G.class_distance_ratio(z, torch.zeros(4, dtype=torch.long))  # no different-class pair
    with pytest.raises(ValueError, match="z"):
        G.uniformity(z[:1])
    with pytest.raises(ValueError, match="max_points"):
        G.uniformity(z, max_points=1)
    with pytest.raises(ValueError, match="alpha"):
        G.alignment(z, labels, alpha=-1.0)


def test_project_2d_pca_matches_sklearn_and_is_deterministic():
    decomposition = pytest.importorskip("sklearn.decomposition")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 6, generator=g, dtype=torch.float64) * torch.tensor([5.0, 3.0, 1.0, 0.5, 0.2, 0.1]) + 4.0
    xy = G.project_2d(z)
    assert xy.shape == (200, 2) and xy.dtype == torch.float64
    ref = decomposition.PCA(n_components=2).fit_transform(z.numpy())
    for k in range(2):  # equal up to the sign of each component
        col = xy[:, k].numpy()
        assert min(np.abs(col - ref[:, k]).max(), np.abs(col + ref[:, k]).max()) < 1e-8
    # sign convention: shuffling the rows (which can flip the SVD's signs) permutes the result
    perm = torch.randperm(200, generator=g)
    torch.testing.assert_close(G.project_2d(z[perm]), xy[perm])
    torch.testing.assert_close(G.project_2d(z.float()), xy.float(), atol=1e-3, rtol=1e-4)
    assert abs(xy[:, 0].var().item() - ref[:, 0].var(ddof=1)) < 1e-8 and xy[:, 0].var() > xy[:, 1].var()


def test_project_2d_tsne():
    pytest.importorskip("sklearn")
    g = torch.Generator().manual_seed(0)
    z = torch.cat([torch.randn(20, 5, generator=g), torch.randn(20, 5, generator=g) + 8])
    state = torch.get_rng_state()
    a = G.project_2d(z, "tsne", generator=torch.Generator().manual_seed(1))
    b = G.project_2d(z, "tsne", generator=torch.Generator().manual_seed(1))
    assert a.shape == (40, 2) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="method"):
        G.project_2d(z, "umap")
