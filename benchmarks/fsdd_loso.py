"""FSDD leave-one-speaker-out: ``multimix bench`` on each of the six speaker folds, pooled into one paired table.

Each fold holds one speaker's 500 recordings out as the test set (validation:
300 recordings of the other five speakers); every method runs the same seeds on
every fold, and the comparison pairs runs by (fold, seed), so 6 folds × S seeds
give 6·S paired differences and 3,000 test predictions per seed.

    .venv/bin/python benchmarks/fsdd_loso.py --data-dir DIR [--seeds 3] [--methods "ERM,MultiMix"] [--out-dir runs/fsdd-loso]
    .venv/bin/python benchmarks/fsdd_loso.py --data-dir DIR --pool-only     # re-pool the folds without training

The entries are the bench's (settings selected on MNIST-1D's validation split,
not tuned on FSDD). Writes one folder per fold and the pooled results.{md,csv,json,png}.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from multimix.data.audio import speakers
from multimix.engine import TrainConfig, load_recipe
from multimix.experiments.bench import DEFAULT_ENTRIES, run_bench, summarise, write_results

FOLD_STRIDE = 1000  # pooled unit = fold index × 1000 + seed: pairs runs by fold and seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="the FSDD directory (with recordings/)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", help="comma-separated bench labels (default: all)")
    parser.add_argument("--attack-limit", type=int, default=500)
    parser.add_argument("--out-dir", default="runs/fsdd-loso")
    parser.add_argument("--pool-only", action="store_true", help="only pool the folds already in --out-dir")
    args = parser.parse_args()
    keep = {m.strip() for m in args.methods.split(",")} if args.methods else None
    entries = [e for e in DEFAULT_ENTRIES if keep is None or e.label in keep]
    recipe = {k: v for k, v in load_recipe("fsdd_loso_bench").items() if k not in ("method", "method_args", "distill")}
    base = TrainConfig(**{**recipe, "data_dir": args.data_dir, "progress": False, "checkpoint": False})
    base = replace(base, eval_every=base.epochs).validate()
    out = Path(args.out_dir)
    start, pooled, sizes = time.perf_counter(), [], {}
    for fold, speaker in enumerate(speakers(args.data_dir)):
        if args.pool_only:  # the folds' results.json from an earlier run
            results = json.loads((out / speaker / "results.json").read_text())
        else:
            config = replace(base, dataset=f"fsdd:loso={speaker}").validate()
            print(f"fold {fold + 1}: test speaker {speaker}", flush=True)
            results = run_bench(out / speaker, seeds=args.seeds, entries=entries, base=config,
                                attack_limit=args.attack_limit, log=lambda line: print("  " + line, flush=True))
        sizes = {k: results["setting"][k] for k in ("num_train", "val_size", "num_test")}
        for run in results["runs"]:
            pooled.append({**run, "seed": fold * FOLD_STRIDE + run["seed"], "fold": speaker})
    merged = summarise(pooled)
    merged.update(setting={**{k: v for k, v in vars(base).items() if k not in ("out_dir", "progress", "checkpoint")},
                           "dataset": "fsdd leave-one-speaker-out (6 folds)",
                           "num_train": f"{sizes['num_train']} per fold", "num_test": f"{sizes['num_test']} per fold"},
                  seeds=f"{len(pooled) // len(merged['rows'])} (6 folds × {len(pooled) // len(merged['rows']) // 6})", wall_time_s=time.perf_counter() - start)
    write_results(merged, out)
    print(f"wrote {out}/results.md ({merged['wall_time_s']:.0f} s)")


if __name__ == "__main__":
    main()
