"""``multimix bench``: the comparison table, its files and plots."""

import dataclasses
import json

from multimix.cli import main
from multimix.engine import TrainConfig


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
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(results["setting"]) <= fields and results["setting"]["num_train"] == 256  # the config's fields only
    mm = next(r for r in results["rows"] if r["method"] == "MultiMix")
    assert "vs_best_baseline" in mm
    assert {"pgd_error", "ece", "energy_auroc", "alignment", "uniformity"} <= set(mm)
    assert "PGD error" in (tmp_path / "bench" / "results.md").read_text()
    assert png_ok(tmp_path / "bench" / "embeddings.png")


def test_bench_stops_on_sigterm_with_143_and_says_how_to_resume(tmp_path):
    """SIGTERM (a scheduler's stop) during the sweep: workers ended within seconds, status 143, resume advice."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "b"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "multimix", "bench", "--methods", "ERM", "--seeds", "4",
                             "--epochs", "1", "--num-train", "128", "--num-test", "128", "--attack-limit", "16",
                             "--jobs", "1", "--no-progress", "--out-dir", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list((out / "runs").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    stopped = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and time.monotonic() - stopped < 10, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr and "Run the same command again" in stdout
    assert 1 <= len(list((out / "runs").glob("*.json"))) < 4


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
