"""``multimix bench``: compare methods over seeds, with a paired test against the best baseline.

Every method trains with the same data, network, budget and seeds; seed s
fixes the initial weights, the data order and the method's draws. The table
reports mean ± std of test accuracy, and for each of our methods the paired
difference to the best baseline (the baseline with the highest mean) with a
95% t-interval and a paired t-test p-value.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from ..engine import TrainConfig
from ..engine.checkpoint import write_json_atomic
from ..engine.trainer import Interrupted
from ..evaluation.plots import matplotlib_available, new_figure, plot_embeddings, save_figure
from .entries import BenchEntry, load_entries
from .runner import data_sizes, finished
from .stats import paired_comparison
from .sweep import Run, Sweep

__all__ = ["BenchEntry", "DEFAULT_ENTRIES", "DEFAULT_CONFIG", "run_bench", "bench_runs", "results_from_records",
           "summarise", "markdown_table", "missing_note", "evaluation_table", "evaluation_note", "write_results",
           "data_sizes", "finished", "evaluate_once_unless_best_val", "sweep_into"]

# Each method's settings as selected on MNIST-1D's validation split (configs/bench/entries.yaml).
DEFAULT_ENTRIES: List[BenchEntry] = load_entries()

# MNIST-1D with few training examples (headroom: ERM ≈ 96.5%), a 5,000-example validation split generated
# beside them (used by --tune only) and a test set large enough to resolve a few tenths of a point.
DEFAULT_CONFIG = TrainConfig(dataset="mnist1d", model="cnn1d", width=32, num_train=2000, val_size=5000,
                             num_test=10000, epochs=30, eval_every=30, batch_size=128, lr=0.1, schedule="cosine",
                             progress=False, checkpoint=False)


def evaluate_once_unless_best_val(base: TrainConfig) -> TrainConfig:
    """``base`` evaluating once, after the last epoch, to save time, unless it selects the best validation epoch,
    which needs the recipe's per-epoch evaluations."""
    return replace(base, eval_every=base.epochs) if base.select == "last" else base


# Evaluation columns reported per method (mean over seeds): name -> (header, lower is better?)
EXTRA_COLUMNS = {
    "fgsm_error": ("FGSM error %", True),
    "pgd_error": ("PGD error %", True),
    "ece": ("ECE %", True),
    "energy_auroc": ("OOD AUROC % (energy)", False),
    "msp_fpr95": ("OOD FPR95 % (MSP)", True),
    "alignment": ("alignment", True),
    "uniformity": ("uniformity", True),
    "class_distance_ratio": ("intra/inter distance", True),
}


@contextlib.contextmanager
def sweep_into(out_dir: Path, sweep: Optional[Sweep], log) -> Iterator[Sweep]:
    """``sweep`` (already entered by the caller, writing into ``out_dir``), or a default one held for this block."""
    if sweep is not None:
        if Path(sweep.out) != Path(out_dir):
            raise ValueError(f"the sweep writes into {sweep.out}, not into {out_dir}")
        yield sweep
        return
    with Sweep(out_dir, progress=False, log=log) as own:
        yield own


def bench_runs(entries: Sequence[BenchEntry], base: TrainConfig, seeds: Sequence[int], pgd_steps: int,
               attack_limit: int) -> List[Run]:
    """The test runs of the comparison: every entry × every seed, in table order (checked before any work)."""
    role = {"kind": "test", "pgd_steps": pgd_steps, "attack_limit": attack_limit}
    return [Run(replace(base, method=entry.method, method_args=dict(entry.method_args), distill=entry.distill,
                        seed=seed, **entry.config, checkpoint=False, progress=False).validate(), role, entry.label,
                entry.ours)
            for entry in entries for seed in seeds]


def run_bench(out_dir: Path, *, seeds: int = 5, first_seed: int = 0, entries: Sequence[BenchEntry] = DEFAULT_ENTRIES,
              base: TrainConfig = DEFAULT_CONFIG, pgd_steps: int = 7, attack_limit: int = 1000,
              log=print, sweep: Optional[Sweep] = None) -> Dict[str, Any]:
    """Train and evaluate every entry for seeds ``first_seed`` … ``first_seed + seeds − 1`` as one sweep (one record
    per run in ``out_dir/runs``; finished runs are not run again), then write results.{md,csv,json}, results.png and
    embeddings.png (a 2-D PCA of the first seed's test embeddings, one panel per method) from the records.

    ``sweep``: an entered :class:`Sweep` into ``out_dir`` (its executor, e.g. Ray); default: local processes.
    On SIGINT/SIGTERM the tables of the runs finished so far are written and :class:`Interrupted` is raised.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if first_seed < 0:
        raise ValueError(f"first_seed must be >= 0, got {first_seed}")
    out_dir = Path(out_dir)
    runs = bench_runs(entries, base, range(first_seed, first_seed + seeds), pgd_steps, attack_limit)
    if not matplotlib_available():
        log("matplotlib is not installed: the tables will be written, the plots skipped (pip install matplotlib)")
    start = time.perf_counter()
    with sweep_into(out_dir, sweep, log) as active:
        try:
            records = active.run(runs, "bench runs")
        except Interrupted:
            write_results(results_from_records(runs, active.records(runs), base, seeds), out_dir)
            raise
        results = results_from_records(runs, records, base, seeds)
        results["wall_time_s"] = time.perf_counter() - start
        write_results(results, out_dir)
        if matplotlib_available():
            panels = {}
            for run in sorted(runs, key=lambda run: run.config.seed):
                saved = active.embeddings(run) if run.label not in panels else None
                if saved is not None:
                    panels[run.label] = (torch.from_numpy(saved["embeddings"]), torch.from_numpy(saved["labels"]))
            if panels:
                panels = {label: panels[label] for label in dict.fromkeys(run.label for run in runs) if label in panels}
                plot_embeddings(panels, out_dir / "embeddings.png", method="pca",
                                title=f"test embeddings (seed {first_seed}), 2-D PCA, coloured by class")
    return results


def results_from_records(runs: Sequence[Run], records: Dict[str, Dict[str, Any]], base: TrainConfig,
                         seeds: int) -> Dict[str, Any]:
    """The comparison computed from the runs' records alone; runs without a completed record are listed in
    ``missing`` (status failed with its error, or missing)."""
    rows, missing, sizes = [], [], {}
    for run in runs:
        record = records.get(run.id)
        if record is None or record["status"] != "completed":
            missing.append({"label": run.label, "seed": run.config.seed, "id": run.id,
                            "status": record["status"] if record else "missing",
                            "error": record.get("error") if record else None})
            continue
        result = record["result"]
        sizes = sizes or record.get("sizes", {})
        rows.append({"label": run.label, "method": run.config.method, "ours": run.ours, "seed": run.config.seed,
                     "id": run.id, "test_accuracy": result["test_accuracy"], "epoch": result.get("epoch"),
                     "test_accuracy_last": result.get("test_accuracy_last", result["test_accuracy"]),
                     "time_s": record.get("time_s", 0.0), "host": record.get("host"),
                     "method_args": run.config.method_args, "distill": run.config.distill,
                     **{k: result[k] for k in EXTRA_COLUMNS if isinstance(result.get(k), (int, float))}})
    results = summarise(rows, labels=list(dict.fromkeys(run.label for run in runs)),
                        ours={run.label: run.ours for run in runs})
    results["missing"] = missing
    results["setting"] = {k: v for k, v in base.to_dict().items() if k not in ("out_dir", "progress", "checkpoint")}
    results["setting"].update(sizes)  # the sizes used, also where the config says "all" (None)
    results["seeds"] = seeds
    results["wall_time_s"] = sum(r["time_s"] for r in rows)
    return results


def summarise(runs: List[Dict[str, Any]], labels: Optional[List[str]] = None,
              ours: Optional[Dict[str, bool]] = None) -> Dict[str, Any]:
    """Rows (mean ± std per label) and, for each of ours, the paired comparison with the best baseline over the
    seeds both have (complete pairs only; ``pairs`` counts them). Labels without a completed run get no row."""
    labels = [label for label in (labels or dict.fromkeys(r["label"] for r in runs)) if any(r["label"] == label
                                                                                          for r in runs)]
    by_seed = {label: {r["seed"]: r["test_accuracy"] for r in runs if r["label"] == label} for label in labels}
    acc = {label: [by_seed[label][seed] for seed in sorted(by_seed[label])] for label in labels}
    is_ours = {**(ours or {}), **{r["label"]: r["ours"] for r in runs}}
    baselines = [label for label in labels if not is_ours[label]]
    best = max(baselines, key=lambda label: np.mean(acc[label])) if baselines else None
    rows = []
    for label in labels:
        values = acc[label]
        row = {"method": label, "ours": is_ours[label], "mean": float(np.mean(values)),
               "std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"), "accuracies": values,
               "seeds": sorted(by_seed[label])}
        last = [r["test_accuracy_last"] for r in runs if r["label"] == label and "test_accuracy_last" in r]
        if len(last) == len(values):
            row["mean_last"] = float(np.mean(last))
        for key in EXTRA_COLUMNS:
            column = [r[key] for r in runs if r["label"] == label and key in r]
            if column:
                row[key] = float(np.mean(column))
        common = sorted(set(by_seed[label]) & set(by_seed[best])) if best is not None else []
        if best is not None and is_ours[label] and common:
            row["vs_best_baseline"] = {**paired_comparison([by_seed[label][s] for s in common],
                                                           [by_seed[best][s] for s in common]), "pairs": len(common)}
        rows.append(row)
    return {"best_baseline": best, "rows": rows, "runs": runs}


def missing_note(results: Dict[str, Any]) -> str:
    """The runs not in the table (failed with their error, or missing) and the pairs the paired statistics used."""
    parts = []
    missing = results.get("missing", [])
    if missing:
        named = "; ".join(f"{m['label']} seed {m['seed']} ({m['status']}" + (f": {m['error']}" if m.get("error") else "")
                          + ")" for m in missing)
        parts.append(f"Not in the table ({len(missing)} run(s)): {named}.")
    seeds = results.get("seeds")
    pairs = {row["method"]: row["vs_best_baseline"].get("pairs") for row in results["rows"] if "vs_best_baseline" in row}
    short = {label: k for label, k in pairs.items() if k is not None and k != seeds}
    if short:
        parts.append("Paired statistics use complete pairs only: " + ", ".join(
            f"{label} {k} of {seeds} seeds" for label, k in short.items()) + ".")
    return " ".join(parts)


def markdown_table(results: Dict[str, Any]) -> str:
    """Accuracy, paired Δ to the best baseline and p per method; with ``select="best_val"`` the accuracy is at the
    best validation epoch, and the last epoch's mean gets a column of its own."""
    best = results["best_baseline"]
    best_val = results.get("setting", {}).get("select") == "best_val"
    accuracy = "test accuracy (%) at the best validation epoch" if best_val else "test accuracy (%)"
    lines = [f"| method | {accuracy}, mean ± std | Δ vs best baseline ({best}) [95% CI] | paired t-test p |"
             + (" last epoch (%) |" if best_val else ""), "|---|---|---|---|" + ("---|" if best_val else "")]
    for row in results["rows"]:
        cmp = row.get("vs_best_baseline")
        delta = f"{cmp['mean']:+.2f} [{cmp['low']:+.2f}, {cmp['high']:+.2f}]" if cmp else "—"
        p = f"{cmp['p']:.3f}" if cmp and not math.isnan(cmp["p"]) else "—"
        name = f"**{row['method']}**" if row["ours"] else row["method"]
        last = (f" {row['mean_last']:.2f} |" if "mean_last" in row else " — |") if best_val else ""
        lines.append(f"| {name} | {row['mean']:.2f} ± {row['std']:.2f} | {delta} | {p} |{last}")
    return "\n".join(lines)


def evaluation_table(results: Dict[str, Any]) -> str:
    """Mean over seeds of the evaluation columns (robustness, calibration, OOD, embeddings)."""
    keys = [k for k in EXTRA_COLUMNS if any(k in row for row in results["rows"])]
    if not keys:
        return ""
    lines = ["| method | " + " | ".join(EXTRA_COLUMNS[k][0] for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for row in results["rows"]:
        name = f"**{row['method']}**" if row["ours"] else row["method"]
        lines.append(f"| {name} | " + " | ".join(f"{row[k]:.3g}" if k in row else "—" for k in keys) + " |")
    return "\n".join(lines)


def evaluation_note(results: Dict[str, Any]) -> str:
    """What the evaluation columns measure, for the columns present (attacks and the shuffled OOD set are skipped
    where inputs cannot be perturbed or shuffled, e.g. node indices)."""
    present = {k for row in results["rows"] for k in EXTRA_COLUMNS if k in row}
    parts = ["Means over seeds."]
    if present & {"fgsm_error", "pgd_error"}:
        parts.append("Attacks: L∞ FGSM and PGD on the first test examples (ε = 8/255 of the input range).")
    if "ece" in present:
        parts.append("ECE with 15 bins.")
    if present & {"energy_auroc", "msp_fpr95"}:
        parts.append("OOD: test set vs its spatially shuffled copy.")
    if "alignment" in present:
        parts.append("Embedding metrics on ℓ2-normalised pooled embeddings (Wang & Isola, 2020; lower is better "
                     "for all three).")
    skipped = [name for name, keys in (("attacks (inputs that are not values, e.g. node indices)",
                                        {"fgsm_error", "pgd_error"}),
                                       ("the shuffled OOD set (inputs without positions: table rows, nodes)",
                                        {"energy_auroc"})) if not present & keys]
    if skipped:
        parts.append(f"Not measured here: {'; '.join(skipped)}.")
    return " ".join(parts)


def write_results(results: Dict[str, Any], out_dir: Path) -> None:
    setting = results.get("setting", {})
    validation = f"{setting.get('val_size')} validation / " if setting.get("val_size") else ""
    header = (f"{setting.get('dataset')} ({setting.get('num_train')} train / {validation}"
              f"{setting.get('num_test')} test), "
              f"{setting.get('model')} (width {setting.get('width')}), {setting.get('epochs')} epochs, "
              f"{results.get('seeds')} seeds; bold = ours.")
    evaluation = evaluation_table(results)
    note = "\n\n" + evaluation_note(results) + "\n"
    missing = missing_note(results)
    missing = f"\n{missing}\n" if missing else ""
    (out_dir / "results.md").write_text(header + "\n\n" + markdown_table(results) + "\n" + missing + "\n" + evaluation
                                        + note)
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        extra = [k for k in EXTRA_COLUMNS if any(k in r for r in results["runs"])]
        writer.writerow(["method", "ours", "seed", "test_accuracy", "time_s", *extra])
        for r in results["runs"]:
            writer.writerow([r["label"], r["ours"], r["seed"], f"{r['test_accuracy']:.4f}", f"{r['time_s']:.2f}",
                             *(f"{r[k]:.5g}" for k in extra)])
    write_json_atomic(json.loads(json.dumps(results, default=str)), out_dir / "results.json")
    if matplotlib_available():
        plot_results(results, out_dir / "results.png")


def plot_results(results: Dict[str, Any], path: Path) -> None:
    rows = results["rows"]
    fig = new_figure(figsize=(8, 0.5 * len(rows) + 1.5))
    ax = fig.subplots()
    for i, row in enumerate(rows):
        color = "tab:red" if row["ours"] else "tab:blue"
        ax.errorbar(row["mean"], i, xerr=0 if math.isnan(row["std"]) else row["std"], fmt="o", color=color, capsize=4)
        ax.scatter(row["accuracies"], [i] * len(row["accuracies"]), color=color, alpha=0.35, s=14)
    ax.set_yticks(range(len(rows)), [row["method"] for row in rows])
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy (%) — mean ± std, dots are seeds")
    setting = results.get("setting", {})
    ax.set_title(textwrap.fill(f"{setting.get('dataset')}, {setting.get('model')}, {results.get('seeds')} seeds "
                               "(red: ours)", 70))  # a long data set name (FSDD's folds) stays inside the figure
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
