"""``multimix bench``: compare methods over seeds, with a paired test against the best baseline.

Every method trains with the same data, network, budget and seeds; seed s
fixes the initial weights, the data order and the method's draws. The table
reports mean ± std of test accuracy, and for each of our methods the paired
difference to the best baseline (the baseline with the highest mean) with a
95% t-interval and a paired t-test p-value.
"""

from __future__ import annotations

import csv
import json
import math
import signal
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from ..engine import Trainer, TrainConfig
from ..engine.trainer import Interrupted
from ..evaluation.plots import matplotlib_available, new_figure, plot_embeddings, save_figure
from ..evaluation.report import report
from .entries import BenchEntry, load_entries
from .stats import paired_comparison

__all__ = ["BenchEntry", "DEFAULT_ENTRIES", "DEFAULT_CONFIG", "run_bench", "summarise", "markdown_table",
           "evaluation_table", "evaluation_note", "write_results", "data_sizes", "finished",
           "evaluate_once_unless_best_val"]

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


def finished(summary: Dict[str, Any]) -> Dict[str, Any]:
    """``summary`` of a completed run; a run stopped by SIGINT/SIGTERM stops the whole experiment the same way."""
    if summary["status"] == "interrupted":
        raise Interrupted(getattr(signal, summary.get("signal", "SIGINT")))
    return summary


def data_sizes(splits) -> Dict[str, int]:
    """The number of training, validation and test examples a run used."""
    return {"num_train": len(splits.train), "val_size": len(splits.val) if splits.val is not None else 0,
            "num_test": len(splits.test)}


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


def run_bench(out_dir: Path, *, seeds: int = 5, first_seed: int = 0, entries: Sequence[BenchEntry] = DEFAULT_ENTRIES,
              base: TrainConfig = DEFAULT_CONFIG, pgd_steps: int = 7, attack_limit: int = 1000,
              log=print) -> Dict[str, Any]:
    """Train every entry for seeds ``first_seed`` … ``first_seed + seeds − 1``, evaluate it, and write
    results.{md,csv,json}, results.png and embeddings.png (a 2-D PCA of the first seed's test embeddings,
    one panel per method) to ``out_dir``."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if first_seed < 0:
        raise ValueError(f"first_seed must be >= 0, got {first_seed}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not matplotlib_available():
        log("matplotlib is not installed: the tables will be written, the plots skipped (pip install matplotlib)")
    runs: List[Dict[str, Any]] = []
    embeddings: Dict[str, Any] = {}
    start = time.perf_counter()
    for entry in entries:
        label, method, args, distill, ours = entry.label, entry.method, entry.method_args, entry.distill, entry.ours
        for seed in range(first_seed, first_seed + seeds):
            config = replace(base, method=method, method_args=dict(args), distill=distill, seed=seed, **entry.config,
                             out_dir=str(out_dir / "runs" / f"{method}-{seed}"), checkpoint=False, progress=False)
            t0 = time.perf_counter()
            trainer = Trainer(config)
            summary = finished(trainer.run())
            final = summary["selected"]  # the last epoch, or the best validation epoch with select="best_val"
            sizes = data_sizes(trainer.splits)
            extra = report(trainer.model, trainer.splits, pgd_steps=pgd_steps, attack_limit=attack_limit,
                           device=trainer.device, seed=seed)
            predictions = extra.pop("_predictions")
            if seed == first_seed:
                embeddings[label] = (predictions["embeddings"][:2000], predictions["labels"][:2000])
            runs.append({"label": label, "method": method, "ours": ours, "seed": seed,
                         "test_accuracy": final["test_accuracy"], "epoch": final["epoch"],
                         "test_accuracy_last": summary["final"]["test_accuracy"], "time_s": time.perf_counter() - t0,
                         "method_args": args, "distill": distill, "config": dict(entry.config),
                         **{k: v for k, v in extra.items() if k in EXTRA_COLUMNS}})
            pgd = f"PGD error {extra['pgd_error']:.1f}%, " if "pgd_error" in extra else ""
            log(f"{label:30s} seed {seed}: test accuracy {final['test_accuracy']:.2f}%, {pgd}ECE {extra['ece']:.2f}%  "
                f"({runs[-1]['time_s']:.1f} s, {time.perf_counter() - start:.0f} s total)")
    results = summarise(runs)
    results["setting"] = {k: v for k, v in vars(base).items() if k not in ("out_dir", "progress", "checkpoint")}
    results["setting"].update(sizes)  # the sizes used, also where the config says "all" (None)
    results["seeds"] = seeds
    results["wall_time_s"] = time.perf_counter() - start
    write_results(results, out_dir)
    if matplotlib_available():
        plot_embeddings(embeddings, out_dir / "embeddings.png", method="pca",
                    title=f"test embeddings (seed {first_seed}), 2-D PCA, coloured by class")
    return results


def summarise(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    labels = list(dict.fromkeys(r["label"] for r in runs))
    acc = {label: [r["test_accuracy"] for r in sorted(runs, key=lambda r: r["seed"]) if r["label"] == label]
           for label in labels}
    is_ours = {r["label"]: r["ours"] for r in runs}
    baselines = [label for label in labels if not is_ours[label]]
    best = max(baselines, key=lambda label: np.mean(acc[label])) if baselines else None
    rows = []
    for label in labels:
        values = acc[label]
        row = {"method": label, "ours": is_ours[label], "mean": float(np.mean(values)),
               "std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"), "accuracies": values}
        last = [r["test_accuracy_last"] for r in runs if r["label"] == label and "test_accuracy_last" in r]
        if len(last) == len(values):
            row["mean_last"] = float(np.mean(last))
        for key in EXTRA_COLUMNS:
            column = [r[key] for r in runs if r["label"] == label and key in r]
            if column:
                row[key] = float(np.mean(column))
        if best is not None and is_ours[label]:
            row["vs_best_baseline"] = paired_comparison(values, acc[best])
        rows.append(row)
    return {"best_baseline": best, "rows": rows, "runs": runs}


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
    (out_dir / "results.md").write_text(header + "\n\n" + markdown_table(results) + "\n\n" + evaluation + note)
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        extra = [k for k in EXTRA_COLUMNS if any(k in r for r in results["runs"])]
        writer.writerow(["method", "ours", "seed", "test_accuracy", "time_s", *extra])
        for r in results["runs"]:
            writer.writerow([r["label"], r["ours"], r["seed"], f"{r['test_accuracy']:.4f}", f"{r['time_s']:.2f}",
                             *(f"{r[k]:.5g}" for k in extra)])
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
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
