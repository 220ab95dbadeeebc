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

from ..engine import TrainConfig
from ..engine.checkpoint import write_json_atomic
from ..evaluation.plots import matplotlib_available, new_figure, save_figure
from .bench import sweep_into
from .entries import BenchEntry, TuneSpec, load_grid
from .sweep import Run, Sweep

__all__ = ["TuneSpec", "DEFAULT_GRID", "GRID_SIZE", "TUNING_SEED_OFFSET", "tune", "tuning_runs", "candidate_records",
           "candidate_name"]

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


def tuning_runs(spec: TuneSpec, inherited: Dict[str, Any], base: TrainConfig, seeds: int) -> List[Run]:
    """Every candidate of ``spec`` × every tuning seed, each candidate starting from the ``inherited`` arguments."""
    runs = []
    for index, (args, distill) in enumerate(spec.candidates):
        own_args = {**spec.fixed, **args}
        for s in range(seeds):
            config = replace(base, method=spec.method, method_args={**inherited, **own_args}, distill=distill,
                             seed=TUNING_SEED_OFFSET + s, **spec.config, checkpoint=False, progress=False).validate()
            runs.append(Run(config, {"kind": "tune"}, spec.label, spec.ours,
                            {"candidate": index, "name": candidate_name(own_args, distill)}))
    return runs


def tune(out_dir: Path, base: TrainConfig, *, seeds: int = 2, grid: Sequence[TuneSpec] = DEFAULT_GRID,
         log=print, sweep: Optional[Sweep] = None) -> Tuple[List[BenchEntry], Dict[str, Any]]:
    """Train every candidate of every spec for ``seeds`` tuning seeds and keep the best by validation accuracy.

    ``base`` must hold out a validation split (``val_size > 0``). The candidates run as one sweep (one record per
    run in ``out_dir/runs``), in stages: a spec that inherits another's choice runs after it. The choice and
    tuning.{md,csv,json,png} in ``out_dir`` are computed from the records alone. A candidate whose runs failed is
    named and cannot be chosen; a spec whose candidates all failed is left out of the returned entries (in grid
    order), as is any spec inheriting from it.
    """
    if base.val_size < 1:
        raise ValueError(f"tuning selects on a validation split: base.val_size must be >= 1, got {base.val_size}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    labels = [spec.label for spec in grid]
    for i, spec in enumerate(grid):
        if spec.inherit is not None and spec.inherit not in labels[:i]:
            raise ValueError(f"{spec.label!r} inherits from {spec.inherit!r}, which must be tuned before it")
    out_dir = Path(out_dir)
    chosen: Dict[str, Dict[str, Any]] = {}  # label -> chosen record
    records_by_label: Dict[str, List[Dict[str, Any]]] = {}
    sizes: Dict[str, int] = {}
    start = time.perf_counter()
    remaining = list(grid)
    with sweep_into(out_dir, sweep, log) as active:
        while remaining:
            stage = [spec for spec in remaining if spec.inherit is None or spec.inherit in chosen]
            if not stage:  # what is left inherits from a spec whose candidates all failed
                for spec in remaining:
                    log(f"tune {spec.label}: left out; it inherits from {spec.inherit!r}, which could not be tuned")
                break
            remaining = [spec for spec in remaining if spec not in stage]
            runs = {spec.label: tuning_runs(spec, chosen[spec.inherit]["method_args"] if spec.inherit else {}, base,
                                            seeds) for spec in stage}
            records = active.run([run for spec_runs in runs.values() for run in spec_runs], "tuning runs")
            for spec in stage:
                records_by_label[spec.label] = candidate_records(spec, runs[spec.label], records)
                sizes = sizes or next((records[r.id]["sizes"] for r in runs[spec.label]
                                       if records.get(r.id, {}).get("status") == "completed"), {})
                valid = [r for r in records_by_label[spec.label] if not np.isnan(r["val_mean"])]
                if not valid:
                    log(f"tune {spec.label}: every candidate failed; the method is left out of the comparison")
                    continue
                best = max(valid, key=lambda r: r["val_mean"])  # the first of equals, in grid order
                best["chosen"] = True
                chosen[spec.label] = best
    entries = [BenchEntry(spec.label, spec.method, chosen[spec.label]["method_args"], chosen[spec.label]["distill"],
                          spec.ours, dict(spec.config)) for spec in grid if spec.label in chosen]
    result = {"records": [r for spec in grid for r in records_by_label.get(spec.label, [])],
              "seeds": [TUNING_SEED_OFFSET + s for s in range(seeds)],
              "setting": {**{k: v for k, v in base.to_dict().items() if k not in ("out_dir", "progress", "checkpoint")},
                          **sizes},
              "wall_time_s": time.perf_counter() - start}
    write_tuning(result, out_dir)
    return entries, result


def candidate_records(spec: TuneSpec, runs: Sequence[Run], records: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per candidate of ``spec`` from its runs' records: validation accuracies of the completed seeds,
    their mean and std (NaN when none completed), and the failed runs' errors."""
    rows = []
    for index in range(len(spec.candidates)):
        mine = [run for run in runs if run.meta["candidate"] == index]
        done = [records[run.id] for run in mine if records.get(run.id, {}).get("status") == "completed"]
        failed = [f"seed {run.config.seed}: {records.get(run.id, {}).get('error', 'missing')}" for run in mine
                  if records.get(run.id, {}).get("status") != "completed"]
        accuracies = [record["result"]["val_accuracy"] for record in done]
        seeds = [run.config.seed for run in mine if records.get(run.id, {}).get("status") == "completed"]
        rows.append({"label": spec.label, "method": spec.method, "ours": spec.ours, "candidate": index,
                     "name": mine[0].meta["name"], "method_args": mine[0].config.method_args,
                     "distill": mine[0].config.distill, "config": dict(spec.config), "val_accuracies": accuracies, "val_seeds": seeds,
                     "val_mean": float(np.mean(accuracies)) if accuracies else float("nan"),
                     "val_std": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else float("nan"),
                     "run_ids": [run.id for run in mine], **({"failed": failed} if failed else {})})
    return rows


def tuning_table(result: Dict[str, Any]) -> str:
    lines = ["| method | candidate | validation accuracy (%) mean ± std | chosen |", "|---|---|---|---|"]
    for r in result["records"]:
        std = "" if np.isnan(r["val_std"]) else f" ± {r['val_std']:.2f}"
        mean = "—" if np.isnan(r["val_mean"]) else f"{r['val_mean']:.2f}"
        failed = f" (failed: {'; '.join(r['failed'])})" if r.get("failed") else ""
        lines.append(f"| {r['label']} | {r['name']} | {mean}{std}{failed} | {'✓' if r.get('chosen') else ''} |")
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
            for seed, acc in zip(r.get("val_seeds", result["seeds"]), r["val_accuracies"]):
                writer.writerow([r["label"], r["name"], seed, f"{acc:.4f}", bool(r.get("chosen"))])
    write_json_atomic(json.loads(json.dumps(result, default=str)), out_dir / "tuning.json")
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
