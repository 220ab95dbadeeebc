"""FSDD leave-one-speaker-out: ``multimix bench`` on each of the six speaker folds, pooled into one paired table.

Each fold holds one speaker's 500 recordings out as the test set (validation:
300 recordings of the other five speakers); every method runs the same seeds on
every fold, and the comparison pairs runs by (fold, seed), so 6 folds × S seeds
give 6·S paired differences and 3,000 test predictions per seed.

    .venv/bin/python benchmarks/fsdd_loso.py --data-dir DIR [--seeds 3] [--methods "ERM,MultiMix"] [--out-dir runs/fsdd-loso]
    .venv/bin/python benchmarks/fsdd_loso.py --data-dir DIR --pool-only     # re-pool the folds without training
    .venv/bin/python benchmarks/fsdd_loso.py --data-dir DIR --entries fsdd_tuned --out-dir runs/fsdd-loso-tuned
    .venv/bin/python benchmarks/fsdd_loso.py --by-speaker runs/fsdd-loso-all2/results.json   # speaker as the unit
    .venv/bin/python benchmarks/fsdd_loso.py --by-speaker RESULTS_JSON --exclude-fold george   # without a fold

The entries are the bench's by default (settings selected on MNIST-1D's validation split, not tuned on FSDD);
``--entries fsdd_tuned`` takes the settings selected on FSDD with george as the validation voice. Writes one
folder per fold, the pooled results.{md,csv,json,png} and by_speaker.md (speaker as the unit, and
the mean of every method on every held-out speaker).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from multimix.cli import keep_methods
from multimix.data.audio import speakers
from multimix.engine import TrainConfig, load_recipe
from multimix.experiments.bench import evaluate_once_unless_best_val, run_bench, summarise, write_results
from multimix.experiments.entries import ENTRIES_PATH, bench_file, load_entries
from multimix.experiments.stats import paired_comparison

FOLD_STRIDE = 1000  # pooled unit = fold index × 1000 + seed: pairs runs by fold and seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", help="the FSDD directory (with recordings/)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", help="comma-separated bench labels or method names (default: all)")
    parser.add_argument("--entries", help="a YAML file of bench entries, or a bundled name in configs/bench "
                                          "(default: entries, the MNIST-1D-tuned settings)")
    parser.add_argument("--exclude-fold", action="append", default=[], metavar="SPEAKER",
                        help="with --by-speaker or --pool-only: leave this speaker's fold out (repeatable), e.g. "
                             "the voice the settings were tuned on")
    parser.add_argument("--attack-limit", type=int, default=500)
    parser.add_argument("--out-dir", default="runs/fsdd-loso")
    parser.add_argument("--pool-only", action="store_true", help="only pool the folds already in --out-dir")
    parser.add_argument("--by-speaker", metavar="RESULTS_JSON",
                        help="only print the speaker-as-unit comparison of a pooled (or merged) results.json")
    args = parser.parse_args()
    if args.by_speaker:
        results = json.loads(Path(args.by_speaker).read_text())
        runs = [r for r in results["runs"] if r["fold"] not in args.exclude_fold]
        if not runs:
            parser.error(f"--exclude-fold {args.exclude_fold} leaves no runs in {args.by_speaker}")
        print(speaker_table(runs, summarise(runs)["best_baseline"]) + "\n\n" + fold_table(runs))
        return
    if not args.data_dir:
        parser.error("--data-dir is required (the FSDD directory with recordings/)")
    if args.exclude_fold and not args.pool_only:
        parser.error("--exclude-fold only re-pools (with --pool-only or --by-speaker); it does not skip training")
    try:
        entries = keep_methods(load_entries(bench_file(args.entries) if args.entries else ENTRIES_PATH), args.methods,
                               "--methods")
    except ValueError as err:
        parser.error(str(err))
    recipe = {k: v for k, v in load_recipe("fsdd_loso_bench").items() if k not in ("method", "method_args", "distill")}
    base = TrainConfig(**{**recipe, "data_dir": args.data_dir, "progress": False, "checkpoint": False})
    base = evaluate_once_unless_best_val(base).validate()
    out = Path(args.out_dir)
    pooled_dir = out / ("without-" + "-".join(args.exclude_fold)) if args.exclude_fold else out
    start, pooled, sizes, folds = time.perf_counter(), [], {}, []
    for fold, speaker in enumerate(speakers(args.data_dir)):
        if speaker in args.exclude_fold:
            continue
        if args.pool_only:  # the folds' results.json from an earlier run
            results = json.loads((out / speaker / "results.json").read_text())
        else:
            config = replace(base, dataset=f"fsdd:loso={speaker}").validate()
            print(f"fold {fold + 1}: test speaker {speaker}", flush=True)
            results = run_bench(out / speaker, seeds=args.seeds, entries=entries, base=config,
                                attack_limit=args.attack_limit, log=lambda line: print("  " + line, flush=True))
        sizes = {k: results["setting"][k] for k in ("num_train", "val_size", "num_test")}
        folds.append(speaker)
        for run in results["runs"]:
            pooled.append({**run, "seed": fold * FOLD_STRIDE + run["seed"], "fold": speaker})
    merged = summarise(pooled)
    merged.update(setting={**{k: v for k, v in vars(base).items() if k not in ("out_dir", "progress", "checkpoint")},
                           "dataset": f"fsdd leave-one-speaker-out ({len(folds)} folds: {', '.join(folds)})",
                           "num_train": f"{sizes['num_train']} per fold", "num_test": f"{sizes['num_test']} per fold"},
                  seeds=f"{len(pooled) // len(merged['rows'])} ({len(folds)} folds × "
                        f"{len(pooled) // len(merged['rows']) // len(folds)})",
                  wall_time_s=time.perf_counter() - start)
    pooled_dir.mkdir(parents=True, exist_ok=True)
    write_results(merged, pooled_dir)
    by_speaker = speaker_table(pooled, merged["best_baseline"]) + "\n\n" + fold_table(pooled)
    (pooled_dir / "by_speaker.md").write_text(by_speaker + "\n")
    print(by_speaker)
    print(f"wrote {pooled_dir}/results.md, by_speaker.md ({merged['wall_time_s']:.0f} s)")


def fold_means(runs):
    """{(label, fold): mean test accuracy over the fold's seeds}, with the labels and folds in run order."""
    labels = list(dict.fromkeys(r["label"] for r in runs))
    folds = list(dict.fromkeys(r["fold"] for r in runs))
    mean = {(label, fold): float(np.mean([r["test_accuracy"] for r in runs
                                          if r["label"] == label and r["fold"] == fold]))
            for label in labels for fold in folds}
    return mean, labels, folds


def fold_table(runs) -> str:
    """Test accuracy per held-out speaker (rows) and method (columns), mean over seeds; the best of a row in bold."""
    mean, labels, folds = fold_means(runs)
    lines = ["Per test speaker (mean over seeds):", "", "| test speaker | " + " | ".join(labels) + " |",
             "|---|" + "---|" * len(labels)]
    for fold in folds:
        best = max(mean[label, fold] for label in labels)
        cells = [f"**{mean[label, fold]:.2f}**" if mean[label, fold] == best else f"{mean[label, fold]:.2f}"
                 for label in labels]
        lines.append(f"| {fold} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def speaker_table(runs, baseline: str) -> str:
    """The paired comparison with the speaker as the unit: one difference per fold (the mean over its seeds).

    Runs within a fold share the held-out voice, which carries most of the variance, so the (fold, seed) pairs of
    results.md are not independent; this is the conservative reading."""
    mean, labels, folds = fold_means(runs)
    lines = [f"Speaker as the unit: {len(folds)} paired differences (fold means over seeds) against {baseline}.", "",
             "| method | mean over speakers | Δ vs " + baseline + " [95% CI] | p |", "|---|---|---|---|"]
    for label in labels:
        ours = [mean[label, fold] for fold in folds]
        row = f"| {label} | {np.mean(ours):.2f} |"
        if label == baseline:
            lines.append(row + " — | — |")
            continue
        cmp = paired_comparison(ours, [mean[baseline, fold] for fold in folds])
        lines.append(row + f" {cmp['mean']:+.2f} [{cmp['low']:+.2f}, {cmp['high']:+.2f}] | {cmp['p']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
