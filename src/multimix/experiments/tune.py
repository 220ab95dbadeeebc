"""Select each method's hyper-parameters on a validation split, with the same budget for every method.

The protocol behind ``multimix bench --tune``: every method gets the same
number of candidate settings (``GRID_SIZE``), each trained with the same
network, data, epochs and tuning seeds (disjoint from the seeds of the final
comparison), and the candidate with the best mean *validation* accuracy is
kept. The test split is never looked at here. ERM has nothing to tune and
gets one candidate.

A candidate is ``(method_args, distill)``. An entry may inherit the tuned
arguments of an earlier entry (``MultiMix + self-distillation`` starts from
whatever ``MultiMix`` won and tunes only the distillation settings).
"""

from __future__ import annotations

import csv
import json
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..engine import Trainer, TrainConfig
from ..evaluation.plots import matplotlib_available, new_figure, save_figure
from .bench import data_sizes, finished
from .entries import BenchEntry, TuneSpec, load_grid

__all__ = ["TuneSpec", "DEFAULT_GRID", "GRID_SIZE", "TUNING_SEED_OFFSET", "tune", "candidate_name"]

GRID_SIZE = 5  # candidates per tunable method
TUNING_SEED_OFFSET = 1000  # tuning seeds are 1000, 1001, ...: never the seeds of the final comparison

# The same five candidates of α for every pairwise baseline; five for each of ours (configs/bench/grid.yaml).
DEFAULT_GRID: List[TuneSpec] = load_grid()


_DISTILL_SYMBOLS = {"momentum": "μ", "temperature": "T", "weight": "weight", "warmup_steps": "warm-up"}


def candidate_name(args: Dict[str, Any], distill: Optional[Dict[str, float]]) -> str:
    """A short readable name of a candidate, e.g. ``concentration=1, clean_weight=1``."""
    skip = {"n", "layers"}
    parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in args.items() if k not in skip]
    if distill:
        parts += [f"{_DISTILL_SYMBOLS.get(k, k)}={v:g}" for k, v in distill.items()]
    return ", ".join(parts) or "(defaults)"


def tune(out_dir: Path, base: TrainConfig, *, seeds: int = 2, grid: Sequence[TuneSpec] = DEFAULT_GRID,
         log=print) -> Tuple[List[BenchEntry], Dict[str, Any]]:
    """Train every candidate of every spec for ``seeds`` tuning seeds and keep the best by validation accuracy.

    ``base`` must hold out a validation split (``val_size > 0``). Writes
    tuning.{md,csv,json,png} to ``out_dir`` and returns the chosen bench
    entries (in grid order) and the full record.
    """
    if base.val_size < 1:
        raise ValueError(f"tuning selects on a validation split: base.val_size must be >= 1, got {base.val_size}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen_args: Dict[str, Dict[str, Any]] = {}
    entries: List[BenchEntry] = []
    records: List[Dict[str, Any]] = []
    start = time.perf_counter()
    for spec in grid:
        if spec.inherit is not None and spec.inherit not in chosen_args:
            raise ValueError(f"{spec.label!r} inherits from {spec.inherit!r}, which must be tuned before it")
        inherited = chosen_args.get(spec.inherit, {}) if spec.inherit else {}
        best = None
        for index, (args, distill) in enumerate(spec.candidates):
            own_args = {**spec.fixed, **args}
            args = {**inherited, **own_args}
            accuracies = []
            for s in range(seeds):
                seed = TUNING_SEED_OFFSET + s
                config = replace(base, method=spec.method, method_args=dict(args), distill=distill, seed=seed, **spec.config,
                                 out_dir=str(out_dir / "tuning-runs" / f"{spec.method}-{index}-{seed}"),
                                 checkpoint=False, progress=False).validate()
                trainer = Trainer(config)
                accuracies.append(finished(trainer.run())["selected"]["val_accuracy"])
                sizes = data_sizes(trainer.splits)
            record = {"label": spec.label, "method": spec.method, "ours": spec.ours, "candidate": index,
                      "name": candidate_name(own_args, distill), "method_args": args, "distill": distill,
                      "config": dict(spec.config),
                      "val_accuracies": accuracies, "val_mean": float(np.mean(accuracies)),
                      "val_std": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else float("nan")}
            records.append(record)
            log(f"tune {spec.label:30s} [{record['name']}]: validation accuracy {record['val_mean']:.2f}% "
                f"({time.perf_counter() - start:.0f} s total)")
            if best is None or record["val_mean"] > best["val_mean"]:
                best = record
        best["chosen"] = True
        chosen_args[spec.label] = best["method_args"]
        entries.append(BenchEntry(spec.label, spec.method, best["method_args"], best["distill"], spec.ours,
                                  dict(spec.config)))
    result = {"records": records, "seeds": [TUNING_SEED_OFFSET + s for s in range(seeds)],
              "setting": {**{k: v for k, v in vars(base).items() if k not in ("out_dir", "progress", "checkpoint")},
                          **sizes},
              "wall_time_s": time.perf_counter() - start}
    write_tuning(result, out_dir)
    return entries, result


def tuning_table(result: Dict[str, Any]) -> str:
    lines = ["| method | candidate | validation accuracy (%) mean ± std | chosen |", "|---|---|---|---|"]
    for r in result["records"]:
        std = "" if np.isnan(r["val_std"]) else f" ± {r['val_std']:.2f}"
        lines.append(f"| {r['label']} | {r['name']} | {r['val_mean']:.2f}{std} | {'✓' if r.get('chosen') else ''} |")
    return "\n".join(lines)


def write_tuning(result: Dict[str, Any], out_dir: Path) -> None:
    setting = result["setting"]
    header = (f"Validation-split tuning: {setting.get('dataset')} ({setting.get('num_train')} train / "
              f"{setting.get('val_size')} validation), {setting.get('model')} (width {setting.get('width')}), "
              f"{setting.get('epochs')} epochs, tuning seeds {result['seeds']}. The test split is not used.")
    (out_dir / "tuning.md").write_text(header + "\n\n" + tuning_table(result) + "\n")
    with open(out_dir / "tuning.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "candidate", "seed", "val_accuracy", "chosen"])
        for r in result["records"]:
            for seed, acc in zip(result["seeds"], r["val_accuracies"]):
                writer.writerow([r["label"], r["name"], seed, f"{acc:.4f}", bool(r.get("chosen"))])
    (out_dir / "tuning.json").write_text(json.dumps(result, indent=2, default=str))
    if matplotlib_available():
        plot_tuning(result, out_dir / "tuning.png")


def plot_tuning(result: Dict[str, Any], path: Path) -> None:
    """One panel per method: validation accuracy of each candidate (mean and seeds), the chosen one in red."""
    labels = list(dict.fromkeys(r["label"] for r in result["records"]))
    cols = 2
    rows = -(-len(labels) // cols)
    # Candidate names with many settings are wrapped (and the panels made taller) so the panels keep their width.
    wrap = lambda text: textwrap.fill(text, 40)  # noqa: E731
    lines = max(sum(wrap(r["name"]).count("\n") + 1 for r in result["records"] if r["label"] == label)
                for label in labels)
    height = max(1.9, 0.17 * lines + 0.8) * rows + 0.6
    fig = new_figure(figsize=(11, height))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, label in zip(axes.flat, labels):
        records = [r for r in result["records"] if r["label"] == label]
        for i, r in enumerate(records):
            color = "tab:red" if r.get("chosen") else ("tab:orange" if r["ours"] else "tab:blue")
            ax.scatter(r["val_accuracies"], [i] * len(r["val_accuracies"]), color=color, alpha=0.35, s=12)
            ax.plot(r["val_mean"], i, "o", color=color)
        ax.set_yticks(range(len(records)), [wrap(r["name"]) for r in records], fontsize=7)
        ax.set_ylim(len(records) - 0.5, -0.5)
        ax.set_title(wrap(label), fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(labels):]:
        ax.axis("off")
    fig.suptitle("validation accuracy (%) of each candidate: mean (dot) and seeds; red = chosen", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / height))  # the top 0.35 inch stays the suptitle's
    save_figure(fig, path)
