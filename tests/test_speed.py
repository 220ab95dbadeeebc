"""``multimix speed``: ERM, MultiMix at each n, Dense MultiMix and input mixup, interleaved in one run."""

import pytest

from multimix.experiments.speed import format_speed_table, measure_speed
from multimix.sampling import cpu_route


def test_measure_speed_reports_every_ratio_and_the_floors():
    lines = []
    rows = measure_speed(width=8, batch_size=16, ns=(10, 40), repeats=1, log=lines.append)
    assert [r["n"] for r in rows] == [10, 40]
    for r in rows:
        assert r["multimix_over_erm_step"] == r["multimix_step_s"] / r["erm_step_s"] > 0
        assert r["dense_over_erm_step"] == r["dense_multimix_step_s"] / r["erm_step_s"] > 0
        assert r["sampler_s"] > 0 and r["write_s"] > 0 and r["mixing_s"] > 0 and r["mixed_term_s"] > 0
        assert r["sampler"] == cpu_route()  # which Λ sampler was timed
        # one round: the median of the per-round ratios is that round's ratio
        assert r["multimix_over_erm_paired"] == pytest.approx(r["multimix_over_erm_step"])
        assert r["dense_over_erm_paired"] == pytest.approx(r["dense_over_erm_step"])
    assert rows[0]["erm_step_s"] == rows[1]["erm_step_s"]  # one ERM measurement, interleaved with all
    assert lines[0].startswith("ERM step") and "Dense MultiMix" in lines[0] and f"Λ sampler: {cpu_route()}" in lines[0]
    table = format_speed_table(rows)
    assert table.count("\n| ") == 2 and "Dense MultiMix (defaults) step / ERM" in table and "| paired |" in table


def test_cpu_clock_and_its_check():
    rows = measure_speed(width=8, batch_size=16, ns=(20,), repeats=1, clock="cpu", log=lambda line: None)
    assert rows[0]["erm_step_s"] > 0 and rows[0]["sampler_s"] > 0
    with pytest.raises(ValueError, match="clock must be"):
        measure_speed(ns=(20,), repeats=1, clock="gpu", log=lambda line: None)
