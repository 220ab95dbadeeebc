"""Merge the runs of several ``multimix bench`` outputs into one table (rows in the bench's order).

Used when a method or seeds were added after the main comparison: every run
is fixed by its seed, so runs from separate invocations with the same setting
combine into one paired comparison. Settings must match, and every method
must end up with the same seeds.

    .venv/bin/python benchmarks/merge_bench.py OUT_DIR RESULTS_JSON [RESULTS_JSON ...] [--only LABEL,LABEL]
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from multimix.engine import TrainConfig
from multimix.experiments.bench import DEFAULT_ENTRIES, summarise, write_results

# A setting written before a field existed ran with that field's default (e.g. optimizer "sgd", select "last").
DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


def completed(setting: dict) -> dict:
    """``setting`` with the fields it predates filled in with their defaults."""
    return {**{k: v for k, v in DEFAULTS.items() if k not in ("out_dir", "progress", "checkpoint")}, **setting}


def main(out_dir: str, *inputs: str, only=None) -> None:
    loaded = [json.loads(Path(p).read_text()) for p in inputs]
    setting = completed(loaded[0]["setting"])
    for other, path in zip(loaded[1:], inputs[1:]):
        if completed(other["setting"]) != setting:
            raise ValueError(f"{path}: setting differs from {inputs[0]}")
    runs, seen = [], set()
    for results in loaded:
        for run in results["runs"]:
            key = (run["label"], run["seed"])
            if only and run["label"] not in only:
                continue
            if key not in seen:  # a method present in several inputs is taken from the first
                seen.add(key)
                runs.append(run)
    order = {entry.label: i for i, entry in enumerate(DEFAULT_ENTRIES)}  # the bench's row order where known
    runs.sort(key=lambda run: order.get(run["label"], len(order)))
    seed_sets = {label: sorted(r["seed"] for r in runs if r["label"] == label) for label in {r["label"] for r in runs}}
    if len({tuple(v) for v in seed_sets.values()}) != 1:
        raise ValueError(f"paired comparisons need the same seeds for every method, got {seed_sets}")
    merged = summarise(runs)
    merged.update(setting=setting, seeds=len(next(iter(seed_sets.values()))),
                  wall_time_s=sum(r["time_s"] for r in runs), merged_from=list(inputs))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_results(merged, out)


if __name__ == "__main__":
    args = sys.argv[1:]
    only = None
    if "--only" in args:
        i = args.index("--only")
        only = {label.strip() for label in args[i + 1].split(",")}
        del args[i:i + 2]
    if len(args) < 2:
        sys.exit(__doc__)
    main(args[0], *args[1:], only=only)
