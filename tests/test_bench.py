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
