"""Calibration: reliability bins and the expected calibration error."""

import pytest
import torch

import multimix.evaluation.calibration as C


def _probs_with_confidence(conf, correct, c=3):
    """Rows whose max is ``conf`` at class 0 (rest spread evenly); label 0 if correct else 1."""
    conf = torch.tensor(conf, dtype=torch.float64)
    rest = (1 - conf) / (c - 1)
    probs = rest.unsqueeze(1).repeat(1, c)
    probs[:, 0] = conf
    labels = torch.tensor([0 if ok else 1 for ok in correct])
    return probs, labels



def test_ece_hand_computed():
    # 5 bins of width 0.2; confidences 0.5, 0.55 (bin 2), 0.9, 0.95, 0.99 (bin 4), 0.7 (bin 3)
    probs, labels = _probs_with_confidence([0.5, 0.55, 0.7, 0.9, 0.95, 0.99],
                                           [True, False, False, True, True, False])
    # bin 2: acc 1/2, conf 0.525 -> gap 0.025, weight 2/6
    # bin 3: acc 0,   conf 0.7   -> gap 0.7,   weight 1/6
    # bin 4: acc 2/3, conf (0.9+0.95+0.99)/3 = 0.94666…, gap 0.28, weight 3/6
    expected = (2 / 6) * 0.025 + (1 / 6) * 0.7 + (3 / 6) * abs(2 / 3 - (0.9 + 0.95 + 0.99) / 3)
    assert C.expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(expected, abs=1e-12)
    bins = C.reliability_bins(probs, labels, n_bins=5)
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
    bins = C.reliability_bins(probs, torch.tensor([0, 0, 0]), n_bins=5)
    assert bins["count"].tolist() == [0, 0, 2, 0, 1]
    assert C.reliability_bins(probs, torch.tensor([0, 0, 0]), n_bins=1)["count"].tolist() == [3]


def test_ece_zero_when_perfectly_calibrated():
    # bin with confidence 0.75: 3 of 4 right; bin with confidence 0.5 (c = 2): 1 of 2 right
    probs, labels = _probs_with_confidence([0.75] * 4, [True, True, True, False], c=4)
    p2 = torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=torch.float64)
    assert C.expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert C.expected_calibration_error(p2, torch.tensor([0, 1])) == pytest.approx(0.0, abs=1e-12)


def test_ece_always_wrong_and_confident_is_one():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert C.expected_calibration_error(probs, torch.tensor([1, 0])) == pytest.approx(1.0)


def test_reliability_counts_sum_to_n_and_ece_matches_bins():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 10, generator=g) * 3
    labels = torch.randint(0, 10, (500,), generator=g)
    probs = logits.softmax(1)
    bins = C.reliability_bins(probs, labels, n_bins=15)
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
    assert C.expected_calibration_error(probs, labels) == pytest.approx(ece, abs=1e-6)
    # half precision input works and agrees
    assert C.expected_calibration_error(probs.half(), labels) == pytest.approx(ece, abs=5e-3)


def test_calibration_bad_input():
    probs = torch.full((4, 2), 0.5)
    labels = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="probs"):
        C.expected_calibration_error(torch.randn(4, 3), labels)  # logits, not probabilities
    with pytest.raises(ValueError, match="labels"):
        C.expected_calibration_error(probs, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="labels"):
        C.reliability_bins(probs, labels[:3])
    with pytest.raises(ValueError, match="n_bins"):
        C.reliability_bins(probs, labels, n_bins=0)
    with pytest.raises(TypeError, match="labels"):
        C.reliability_bins(probs, labels.float())
