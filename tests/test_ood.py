"""Out-of-distribution scores (MSP, energy) and detection metrics (AUROC, FPR at TPR)."""

import math

import numpy as np
import pytest
import torch

import multimix.evaluation.ood as O


def test_msp_and_energy_hand_values():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [1.0, 2.0]])
    torch.testing.assert_close(O.msp_score(logits), torch.tensor([0.5, 0.75, math.exp(2) / (math.e + math.exp(2))]))
    torch.testing.assert_close(O.energy_score(logits),
                               torch.tensor([math.log(2.0), math.log(4.0), math.log(math.e + math.exp(2))]))
    # T = 2: 2·log(e^{0/2} + e^{0/2}) = 2 log 2; 2·log(e^{1/2} + e^{1})
    torch.testing.assert_close(O.energy_score(logits, temperature=2.0)[[0, 2]],
                               torch.tensor([2 * math.log(2.0), 2 * math.log(math.exp(0.5) + math.e)]))
    assert O.msp_score(logits.half()).dtype == torch.float32
    with pytest.raises(ValueError, match="temperature"):
        O.energy_score(logits, temperature=0.0)
    with pytest.raises(ValueError, match="logits"):
        O.msp_score(torch.zeros(3))


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
    assert O.auroc(scores_in, scores_out) == pytest.approx(auc, abs=1e-12)
    assert O.fpr_at_tpr(scores_in, scores_out) == pytest.approx(fpr, abs=1e-12)
    # float32 and integer scores give the same
    assert O.auroc(scores_in.float(), scores_out.float()) == pytest.approx(auc, abs=1e-12)
    assert O.auroc(scores_in.long(), scores_out.long()) == pytest.approx(auc, abs=1e-12)
    assert O.fpr_at_tpr(scores_in.long(), scores_out.float()) == pytest.approx(fpr, abs=1e-12)


def test_auroc_and_fpr_continuous_scores_match_sklearn():
    g = torch.Generator().manual_seed(7)
    scores_in, scores_out = torch.randn(1000, generator=g) + 1.0, torch.randn(1500, generator=g)
    auc, fpr = _sklearn_reference(scores_in, scores_out)
    assert O.auroc(scores_in, scores_out) == pytest.approx(auc, abs=1e-12)
    assert O.fpr_at_tpr(scores_in, scores_out, tpr=0.95) == pytest.approx(fpr, abs=1e-12)


def test_auroc_extremes():
    a = torch.arange(10.0)
    assert O.auroc(a + 100, a) == 1.0
    assert O.auroc(a, a + 100) == 0.0
    assert O.auroc(a, a.clone()) == 0.5
    assert O.auroc(torch.ones(7), torch.ones(3)) == 0.5
    assert O.fpr_at_tpr(a + 100, a) == 0.0
    assert O.fpr_at_tpr(a, a + 100) == 1.0


def test_fpr_at_tpr_definition():
    # 20 in-distribution scores 1..20: TPR ≥ 0.95 needs 19 of them, threshold = 19th largest = 2
    scores_in = torch.arange(1.0, 21.0)
    scores_out = torch.tensor([0.0, 1.0, 1.9, 2.0, 2.1, 50.0])
    assert O.fpr_at_tpr(scores_in, scores_out, tpr=0.95) == pytest.approx(3 / 6)  # 2.0, 2.1, 50 ≥ 2
    assert O.fpr_at_tpr(scores_in, scores_out, tpr=1.0) == pytest.approx(5 / 6)  # threshold 1
    assert O.fpr_at_tpr(scores_in, scores_out, tpr=0.05) == pytest.approx(1 / 6)  # threshold 20
    with pytest.raises(ValueError, match="tpr"):
        O.fpr_at_tpr(scores_in, scores_out, tpr=0.0)
    with pytest.raises(ValueError, match="scores_out"):
        O.fpr_at_tpr(scores_in, torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="scores_in"):
        O.auroc(torch.zeros(0), scores_out)
