"""Merge the run records of several ``multimix bench`` output folders into one (for runs made on other machines).

Every run of a sweep is recorded on its own in ``OUT/runs/<id>.json`` (with
its log and embeddings beside it), under an id that hashes its whole
configuration, so merging is copying: records of the same id describe the same
run, and one already in the target is kept. Afterwards, the bench command
with ``--out-dir TARGET`` finds the copied runs recorded, trains only what is
still missing, and writes the table from the records:

    .venv/bin/python benchmarks/merge_bench.py TARGET SOURCE [SOURCE ...]
    multimix bench --out-dir TARGET [the comparison's flags]

Adding a method or seeds to a finished comparison needs no merge at all: run
``multimix bench`` into the same folder with the larger set of methods or seeds.

Tables written before runs were recorded one by one (and the pooled tables of
``fsdd_loso.py``) merge from their ``results.json`` files, by (label, seed), as
docs/results.md does; settings must match and every method must end up with
the same seeds:

    .venv/bin/python benchmarks/merge_bench.py OUT_DIR RESULTS_JSON [RESULTS_JSON ...] [--only LABEL,LABEL]
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

from multimix.engine import TrainConfig
from multimix.engine.folder import FolderLock
from multimix.experiments.bench import DEFAULT_ENTRIES, summarise, write_results

# A setting written before a field existed ran with that field's default (e.g. optimizer "sgd", select "last").
DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


def merge(target: Path, sources) -> int:
    """Copy every record (and its log and embeddings) of ``sources``' runs folders missing from ``target``'s;
    returns the number copied. Holds ``target``'s lock, so it never runs beside a sweep into it."""
    copied = 0
    with FolderLock(target, "sweep"):
        runs = target / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        for source in sources:
            found = sorted((Path(source) / "runs").glob("*.json"))
            if not found:
                raise FileNotFoundError(f"{source} has no run records (runs/*.json)")
            for record in found:
                if (runs / record.name).exists():
                    continue
                for companion in (record.with_suffix(".log"), record.with_suffix(".npz")):
                    if companion.exists():
                        shutil.copy2(companion, runs / companion.name)
                tmp = runs / f".{record.stem}.tmp-merge.json"
                shutil.copy2(record, tmp)
                tmp.replace(runs / record.name)  # the record last: its presence means the run is complete
                copied += 1
    return copied


def completed(setting: dict) -> dict:
    """``setting`` with the fields it predates filled in with their defaults."""
    return {**{k: v for k, v in DEFAULTS.items() if k not in ("out_dir", "progress", "checkpoint")}, **setting}


def merge_results(out_dir: str, *inputs: str, only=None) -> None:
    """One table from several results.json files (runs taken by (label, seed), the first input winning)."""
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
            if key not in seen:
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
    if all(Path(a).is_file() and a.endswith(".json") for a in args[1:]):
        merge_results(args[0], *args[1:], only=only)
    else:
        count = merge(Path(args[0]), args[1:])
        print(f"copied {count} run record(s) into {args[0]}/runs; now run the bench command with --out-dir "
              f"{args[0]} to write the table")
