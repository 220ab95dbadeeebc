"""``multimix bench --tune``: settings selected on the validation split, with the same budget for every method."""

import json
from dataclasses import replace

import pytest

from multimix.cli import main
from multimix.experiments.bench import DEFAULT_CONFIG
from multimix.experiments.tune import tune


def test_bench_tune_selects_on_validation_and_inherits(tmp_path, capsys, png_ok):
    """--tune: one chosen candidate per method, the best by validation accuracy; SD starts from MultiMix's choice."""
    code = main(["bench", "--tune", "--out-dir", str(tmp_path / "b"), "--seeds", "1", "--tune-seeds", "1",
                 "--epochs", "2", "--num-train", "256", "--num-test", "128", "--val-size", "256",
                 "--attack-limit", "64", "--methods", "ERM,input mixup,multimix"])
    assert code == 0
    tuning = json.loads((tmp_path / "b" / "tuning.json").read_text())
    labels = ["ERM", "input mixup", "MultiMix", "MultiMix + self-distillation"]
    assert list(dict.fromkeys(r["label"] for r in tuning["records"])) == labels
    for label in labels:
        records = [r for r in tuning["records"] if r["label"] == label]
        chosen = [r for r in records if r.get("chosen")]
        assert len(chosen) == 1 and chosen[0]["val_mean"] == max(r["val_mean"] for r in records)
        assert all(seed >= 1000 for seed in tuning["seeds"])  # never the final comparison's seeds
    multimix_choice = next(r for r in tuning["records"] if r["label"] == "MultiMix" and r.get("chosen"))
    for r in tuning["records"]:
        if r["label"] == "MultiMix + self-distillation":
            assert r["distill"] and all(r["method_args"][k] == v for k, v in multimix_choice["method_args"].items())
    assert all(not k.startswith("_") for k in tuning["setting"])  # the config's fields, nothing it holds besides
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    used = {r["label"]: r["method_args"] for r in results["runs"]}
    assert used["MultiMix"] == multimix_choice["method_args"]
    assert png_ok(tmp_path / "b" / "tuning.png")


def test_tune_needs_a_validation_split(tmp_path):
    with pytest.raises(ValueError, match="val_size"):
        tune(tmp_path, replace(DEFAULT_CONFIG, val_size=0), seeds=1)
