"""``multimix bench``: the comparison table, its files and plots."""

import json

from multimix.cli import main


def test_bench_writes_table_and_plot(tmp_path, capsys, png_ok):
    code = main(["bench", "--out-dir", str(tmp_path / "bench"), "--seeds", "2", "--epochs", "1",
                 "--num-train", "256", "--num-test", "128", "--methods", "ERM,input mixup,MultiMix"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| method |" in out and "Δ vs best baseline" in out
    for name in ("results.md", "results.csv", "results.json"):
        assert (tmp_path / "bench" / name).stat().st_size > 100
    png = tmp_path / "bench" / "results.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert len(results["runs"]) == 6 and results["best_baseline"] in ("ERM", "input mixup")
    mm = next(r for r in results["rows"] if r["method"] == "MultiMix")
    assert "vs_best_baseline" in mm
    assert {"pgd_error", "ece", "energy_auroc", "alignment", "uniformity"} <= set(mm)
    assert "PGD error" in (tmp_path / "bench" / "results.md").read_text()
    assert png_ok(tmp_path / "bench" / "embeddings.png")


def test_bench_stops_cleanly_when_a_run_is_interrupted(tmp_path, capsys, monkeypatch):
    """SIGTERM during a bench run stops the bench with 143, not with a KeyError on the missing accuracy."""
    import signal

    import multimix.engine.trainer as trainer_module

    real = trainer_module.Trainer.train_epoch

    def train_then_signal(self, epoch):
        row = real(self, epoch)
        self.stop.handle(signal.SIGTERM, None)  # as if SIGTERM arrived during this epoch
        return row

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", train_then_signal)
    code = main(["bench", "--methods", "ERM", "--seeds", "1", "--epochs", "2", "--num-train", "256",
                 "--num-test", "128", "--attack-limit", "16", "--out-dir", str(tmp_path / "b")])
    assert code == 143
    assert "stopped by SIGTERM" in capsys.readouterr().err


def test_fsdd_loso_speaker_tables_pair_fold_means():
    """benchmarks/fsdd_loso.py: one paired difference per held-out speaker (the mean over its seeds), and the
    per-speaker table bolds each row's best method."""
    import importlib.util
    from pathlib import Path

    import numpy as np
    from multimix.experiments.stats import paired_comparison

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fsdd_loso.py"
    spec = importlib.util.spec_from_file_location("fsdd_loso", path)
    fsdd_loso = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fsdd_loso)
    accuracy = {("A", "ann"): [60, 62], ("B", "ann"): [70, 74], ("A", "bob"): [50, 50], ("B", "bob"): [49, 47],
                ("A", "cy"): [80, 90], ("B", "cy"): [86, 88]}
    runs = [{"label": label, "fold": fold, "seed": seed, "test_accuracy": acc}
            for (label, fold), accs in accuracy.items() for seed, acc in enumerate(accs)]
    table = fsdd_loso.speaker_table(runs, "A")
    expected = paired_comparison([72, 48, 87], [61, 50, 85])
    assert f"| B | {np.mean([72, 48, 87]):.2f} | {expected['mean']:+.2f} [{expected['low']:+.2f}, " in table
    assert "3 paired differences" in table
    folds = fsdd_loso.fold_table(runs)
    assert "| ann | 61.00 | **72.00** |" in folds and "| bob | **50.00** | 48.00 |" in folds
