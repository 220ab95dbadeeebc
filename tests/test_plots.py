"""Plots: reliability diagram and embedding scatter plots written as PNG."""

import pytest
import torch
import torch.nn.functional as F

import multimix.evaluation.plots as P

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, min_bytes=5000):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes, len(data)


def test_plot_reliability_diagram(tmp_path):
    pytest.importorskip("matplotlib")
    g = torch.Generator().manual_seed(0)
    probs = (torch.randn(300, 10, generator=g) * 2).softmax(1)
    labels = torch.randint(0, 10, (300,), generator=g)
    out = P.plot_reliability_diagram(probs, labels, tmp_path / "sub" / "rel.png", title="test")
    assert out == tmp_path / "sub" / "rel.png"
    _assert_png(out)


def test_plot_embeddings(tmp_path):
    pytest.importorskip("matplotlib")
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (120,), generator=g)
    z = torch.randn(120, 16, generator=g) + 3 * F.one_hot(labels, 16).float()
    out = P.plot_embeddings({"ERM": (z, labels), "MultiMix": (z * 2, labels), "few": (z[:10], labels[:10])},
                            str(tmp_path / "emb.png"), title="embeddings", max_points=100)
    _assert_png(out)
    with pytest.raises(ValueError, match="panels"):
        P.plot_embeddings({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="panels"):
        P.plot_embeddings({"a": (z, labels[:5])}, tmp_path / "x.png")
