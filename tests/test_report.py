"""The evaluation report: predictions, attack budget, robustness, OOD detection, embedding metrics, report."""

import types

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from multimix.evaluation.calibration import expected_calibration_error
from multimix.evaluation.geometry import alignment, class_distance_ratio, uniformity
from multimix.evaluation.ood import auroc, energy_score, fpr_at_tpr, msp_score
from multimix.evaluation.report import (
    default_epsilon, embedding_metrics, ood_detection, predict, report, robustness,
)

MEAN, STD = (0.5, 0.4), (0.25, 0.2)  # per channel of the conftest model's (m, 2, 12) inputs

REPORT_KEYS = {
    "accuracy", "ece", "eps", "clean_error", "fgsm_error", "pgd_error", "pgd_steps",
    "msp_auroc", "msp_fpr95", "energy_auroc", "energy_fpr95",
    "alignment", "uniformity", "class_distance_ratio", "_predictions",
}


def _splits(x, y, mean=None, std=None):
    """A ``multimix.data.Splits``-like object holding only a test set."""
    return types.SimpleNamespace(train=None, val=None, test=TensorDataset(x, y), input_shape=tuple(x.shape[1:]),
                                 num_classes=4, mean=mean, std=std)


def _data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 12, generator=g), torch.randint(0, 4, (n,), generator=g)


def _image_data(n=32, seed=0):
    """Normalised inputs whose pixels ((x · std) + mean) lie well inside [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    pixels = 0.1 + 0.8 * torch.rand(n, 2, 12, generator=g)
    mean, std = torch.tensor(MEAN).view(1, 2, 1), torch.tensor(STD).view(1, 2, 1)
    return (pixels - mean) / std, torch.randint(0, 4, (n,), generator=g)


def _with_running_stats(model, x):
    """Give batch norm non-default running statistics, so that eval and train mode differ."""
    with torch.no_grad():
        model.train()(x * 2 + 1)
    return model


# ---------------------------------------------------------------- predict

def test_predict_matches_the_model_in_eval_mode_and_restores_its_mode(tiny_model):
    x, y = _data()
    model = _with_running_stats(tiny_model, x)
    out = predict(model, TensorDataset(x, y), batch_size=20)  # 3 batches, the last one short
    assert model.training
    with torch.no_grad():
        expected_logits = model.eval()(x)
        expected_embeddings = model.pool(model.encode(x))
        train_logits = model.train()(x)
    assert set(out) == {"logits", "embeddings", "labels"}
    assert out["logits"].shape == (48, 4) and out["embeddings"].shape == (48, 6)
    torch.testing.assert_close(out["logits"], expected_logits)
    torch.testing.assert_close(out["embeddings"], expected_embeddings)
    assert torch.equal(out["labels"], y)
    assert not torch.allclose(out["logits"], train_logits)  # eval mode was used


def test_predict_limit_keeps_the_first_examples(tiny_model):
    x, y = _data()
    full = predict(tiny_model, TensorDataset(x, y))
    first = predict(tiny_model, TensorDataset(x, y), batch_size=7, limit=10)
    assert first["logits"].shape == (10, 4)
    torch.testing.assert_close(first["logits"], full["logits"][:10])
    assert torch.equal(first["labels"], y[:10])
    assert predict(tiny_model, TensorDataset(x, y), limit=1000)["logits"].shape == (48, 4)


# ---------------------------------------------------------------- attack budget

def test_default_epsilon_is_8_over_255_for_images():
    x, y = _image_data()
    assert default_epsilon(_splits(x, y, MEAN, STD)) == 8 / 255


def test_default_epsilon_is_8_over_255_of_the_percentile_span():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2100, 2, 12, generator=g) * 3 + 1
    x[2000:] = 1000.0  # beyond the first 2000 examples: not looked at
    y = torch.zeros(2100, dtype=torch.long)
    low, high = np.quantile(x[:2000].numpy().ravel(), [0.01, 0.99])
    assert default_epsilon(_splits(x, y)) == pytest.approx(8 / 255 * (high - low), rel=1e-5)
    # an explicit data set replaces the test set
    other = torch.linspace(-2.0, 2.0, 100 * 24).view(100, 2, 12)
    low, high = np.quantile(other.numpy().ravel(), [0.01, 0.99])
    eps = default_epsilon(_splits(x, y), TensorDataset(other, y[:100]))
    assert eps == pytest.approx(8 / 255 * (high - low), rel=1e-5)
    assert eps == pytest.approx(8 / 255 * 4 * 0.98, rel=1e-3)  # 1st..99th percentile of a uniform ramp on [-2, 2]


# ---------------------------------------------------------------- robustness

def test_robustness_on_images_is_reproducible_and_counts_clean_errors(tiny_model):
    x, y = _image_data()
    splits = _splits(x, y, MEAN, STD)
    model = _with_running_stats(tiny_model, x)
    out = robustness(model, splits, pgd_steps=2, limit=24, batch_size=10, seed=5)
    assert model.training
    assert set(out) == {"eps", "clean_error", "fgsm_error", "pgd_error", "pgd_steps"}
    assert out["eps"] == 8 / 255 and out["pgd_steps"] == 2
    with torch.no_grad():
        wrong = (model.eval()(x[:24]).argmax(1) != y[:24]).sum().item()
    assert out["clean_error"] == pytest.approx(100.0 * wrong / 24)
    assert all(0.0 <= out[k] <= 100.0 for k in ("fgsm_error", "pgd_error"))
    model.train()
    assert robustness(model, splits, pgd_steps=2, limit=24, batch_size=10, seed=5) == out


def test_robustness_without_pixel_range_uses_the_percentile_budget(tiny_model):
    x, y = _data()
    splits = _splits(x, y)
    out = robustness(tiny_model, splits, pgd_steps=1, limit=None)
    assert out["eps"] == default_epsilon(splits)
    with torch.no_grad():
        wrong = (tiny_model.eval()(x).argmax(1) != y).sum().item()
    assert out["clean_error"] == pytest.approx(100.0 * wrong / 48)
    # a zero budget leaves the inputs as they are: every error is the clean error (the default PGD step,
    # eps / 4, would be 0, which pgd refuses, so the step is given)
    zero = robustness(tiny_model, splits, eps=0.0, pgd_steps=1, pgd_step_size=0.01, limit=None)
    assert zero["fgsm_error"] == zero["pgd_error"] == zero["clean_error"] == out["clean_error"]


# ---------------------------------------------------------------- OOD detection and embeddings

def test_ood_detection_reports_both_scores_in_percent():
    g = torch.Generator().manual_seed(0)
    in_logits = torch.randn(60, 5, generator=g) * 3
    out_logits = torch.randn(40, 5, generator=g)
    result = ood_detection(in_logits, out_logits)
    assert set(result) == {"msp_auroc", "msp_fpr95", "energy_auroc", "energy_fpr95"}
    for name, score in (("msp", msp_score), ("energy", energy_score)):
        s_in, s_out = score(in_logits), score(out_logits)
        assert result[f"{name}_auroc"] == 100.0 * auroc(s_in, s_out)
        assert result[f"{name}_fpr95"] == 100.0 * fpr_at_tpr(s_in, s_out, 0.95)
    # confident in-distribution logits, flat OOD logits: perfectly separated by both scores
    separated = ood_detection(torch.eye(5).repeat(4, 1) * 10, torch.zeros(7, 5))
    assert separated == {"msp_auroc": 100.0, "msp_fpr95": 0.0, "energy_auroc": 100.0, "energy_fpr95": 0.0}


def test_embedding_metrics_reproducible_for_a_seed():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(300, 8, generator=g)
    labels = torch.randint(0, 3, (300,), generator=g)
    state = torch.get_rng_state()
    a = embedding_metrics(z, labels, max_points=100, seed=4)
    assert a == embedding_metrics(z, labels, max_points=100, seed=4)
    assert a != embedding_metrics(z, labels, max_points=100, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    # the three metrics draw their subsets one after the other from one generator seeded with ``seed``
    shared = torch.Generator().manual_seed(4)
    assert a == {"alignment": alignment(z, labels, max_points=100, generator=shared),
                 "uniformity": uniformity(z, max_points=100, generator=shared),
                 "class_distance_ratio": class_distance_ratio(z, labels, max_points=100, generator=shared)}
    # with every point used the seed does not matter
    assert embedding_metrics(z, labels, seed=0) == embedding_metrics(z, labels, seed=9)


# ---------------------------------------------------------------- report

def test_report_keys_and_accuracy(tiny_model):
    x, y = _data()
    ood_x, ood_y = _data(n=20, seed=1)
    model = _with_running_stats(tiny_model, x)
    out = report(model, _splits(x, y), ood=TensorDataset(ood_x * 5, ood_y), pgd_steps=2, attack_limit=16)
    assert model.training
    assert set(out) == REPORT_KEYS
    with torch.no_grad():
        logits = model.eval()(x)
    correct = sum(int(logits[i].argmax()) == int(y[i]) for i in range(48))
    assert out["accuracy"] == pytest.approx(100.0 * correct / 48)
    assert out["ece"] == pytest.approx(100.0 * expected_calibration_error(logits.softmax(1), y))
    assert out["pgd_steps"] == 2 and out["eps"] == default_epsilon(_splits(x, y))
    with torch.no_grad():
        ood_logits = model(ood_x * 5)
    expected_ood = ood_detection(logits, ood_logits)
    assert all(out[k] == pytest.approx(v) for k, v in expected_ood.items())
    assert out["_predictions"]["logits"].shape == (48, 4)
    assert torch.equal(out["_predictions"]["labels"], y)
    assert all(isinstance(out[k], float) for k in REPORT_KEYS - {"_predictions", "pgd_steps"})


def test_report_default_ood_set_is_the_shuffled_test_set(tiny_model):
    from multimix.data import ShuffledPositions

    x, y = _data(n=24)
    splits = _splits(x, y)
    default = report(tiny_model, splits, pgd_steps=1, attack_limit=8, seed=2)
    explicit = report(tiny_model, splits, ood=ShuffledPositions(splits.test, seed=2), pgd_steps=1, attack_limit=8,
                      seed=2)
    for key in REPORT_KEYS - {"_predictions"}:
        assert default[key] == explicit[key], key
