"""Which ingredient carries GraphMix's gain over the GCN? One change at a time, on the validation split.

Each variant changes one thing in GraphMix's recipe (``configs/cora_graphmix.yaml``, its published settings) and
trains on the tuning seeds (1000, 1001, ...: never the seeds of the test comparison). The table gives each variant's
validation accuracy at its best validation epoch (mean and 95% t-interval over the seeds) and its paired
difference from full GraphMix on the same seeds. The test split is never read for it. The runs form one sweep
(``OUT/runs/<id>.json`` per run): rerunning the command skips the finished ones.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/graphmix_ablation.py --data-dir ~/.cache/multimix/planetoid \\
        --seeds 6 --jobs 2 --out-dir runs/graphmix-ablation
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from multimix.engine import TrainConfig
from multimix.engine.config import load_recipe
from multimix.experiments.executors import LocalExecutor, default_jobs
from multimix.experiments.stats import paired_comparison
from multimix.experiments.sweep import Run, Sweep
from multimix.experiments.tune import TUNING_SEED_OFFSET

# label: (method, method_args changed from the recipe's, other config fields changed)
VARIANTS = {
    "GraphMix (published settings)": ("graphmix", {}, {}),
    "GCN alone (no mixing, no unlabelled nodes)": ("erm", None, {"unlabelled_batch": 0}),
    "no FCN: mix the GCN's propagated embeddings": ("graphmix", {"path": "gcn"}, {}),
    "no averaged sharpened targets: K = 1, T = 1": ("graphmix", {"predictions": 1, "temperature": 1.0}, {}),
    "no unlabelled nodes (γ = 0)": ("graphmix", {"unlabelled_weight": 0.0}, {"unlabelled_batch": 0}),
    "no coin: every step adds both losses": ("graphmix", {"step_choice": "sum"}, {}),
    "short schedule: 200 epochs, ramp over 50–100": ("graphmix", {"ramp_start": 50, "ramp_end": 100},
                                                     {"epochs": 200}),
    # γ = 10 reached at epoch 100 collapses the short run; a tenth of it shows what the schedule alone costs
    "short schedule, γ = 1: 200 epochs, ramp over 50–100": ("graphmix", {"ramp_start": 50, "ramp_end": 100,
                                                                          "unlabelled_weight": 1.0}, {"epochs": 200}),
}


def variant_runs(base: TrainConfig, seeds: int):
    """Every variant × every tuning seed, as sweep runs (role ``tune``: validation accuracy only)."""
    runs = []
    for label, (method, args, fields) in VARIANTS.items():
        method_args = {} if args is None else {**base.method_args, **args}
        for s in range(seeds):
            config = replace(base, method=method, method_args=method_args, seed=TUNING_SEED_OFFSET + s,
                             checkpoint=False, progress=False, **fields).validate()
            runs.append(Run(config, {"kind": "tune"}, label))
    return runs


def t_interval(values) -> str:
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return f"{values.mean():.2f}"
    from scipy import stats

    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return f"{values.mean():.2f} ± {half:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="DIR with Cora/raw/ind.cora.*")
    parser.add_argument("--dataset", default="planetoid:Cora")
    parser.add_argument("--seeds", type=int, default=6, help="tuning seeds per variant (1000, 1001, ...)")
    parser.add_argument("--jobs", type=int, default=None, help="runs at a time (default: one per usable core)")
    parser.add_argument("--out-dir", default="runs/graphmix-ablation")
    args = parser.parse_args()
    base = TrainConfig.from_dict({**load_recipe("cora_graphmix"), "dataset": args.dataset, "data_dir": args.data_dir,
                                  "progress": False, "checkpoint": False})
    runs = variant_runs(base, args.seeds)
    with Sweep(Path(args.out_dir), LocalExecutor(args.jobs or default_jobs(1 << 30), 1), progress=False) as sweep:
        records = sweep.run(runs, "ablation runs")
    accuracy = {}
    for run in runs:
        record = records.get(run.id, {})
        if record.get("status") == "completed":
            accuracy.setdefault(run.label, {})[run.config.seed] = record["result"]["val_accuracy"]
    full = accuracy.get("GraphMix (published settings)", {})
    lines = [f"{args.dataset}, validation accuracy at the best validation epoch, tuning seeds "
             f"{TUNING_SEED_OFFSET}–{TUNING_SEED_OFFSET + args.seeds - 1}", "",
             "| variant | seeds | validation accuracy (%), mean ± 95% CI | Δ vs GraphMix [95% CI] | p |",
             "|---|---:|---:|---:|---:|"]
    for label in VARIANTS:
        values = accuracy.get(label, {})
        if not values:
            lines.append(f"| {label} | 0 | — | — | — |")
            continue
        pairs = sorted(set(values) & set(full))
        delta = "—"
        p = "—"
        if label != "GraphMix (published settings)" and len(pairs) >= 2:
            stats = paired_comparison([values[s] for s in pairs], [full[s] for s in pairs])
            delta = f"{stats['mean']:+.2f} [{stats['low']:+.2f}, {stats['high']:+.2f}]"
            p = f"{stats['p']:.3f}"
        lines.append(f"| {label} | {len(values)} | {t_interval(list(values.values()))} | {delta} | {p} |")
    print("\n".join(lines))
    (Path(args.out_dir) / "ablation.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
