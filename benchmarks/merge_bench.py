"""Merge the runs of several ``multimix bench`` outputs into one table (rows in the bench's order).

Used when a method was added after the main comparison: every run is fixed by
its seed, so runs from separate invocations with the same setting and seeds
combine into one paired comparison. Settings must match; the first input's
setting is written.

    .venv/bin/python benchmarks/merge_bench.py OUT_DIR RESULTS_JSON [RESULTS_JSON ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from multimix.bench import DEFAULT_ENTRIES, summarise, write_results


def main(out_dir: str, *inputs: str) -> None:
    loaded = [json.loads(Path(p).read_text()) for p in inputs]
    setting = loaded[0]["setting"]
    for other, path in zip(loaded[1:], inputs[1:]):
        if other["setting"] != setting or other["seeds"] != loaded[0]["seeds"]:
            raise ValueError(f"{path}: setting or seeds differ from {inputs[0]}")
    runs, seen = [], set()
    for results in loaded:
        for run in results["runs"]:
            key = (run["label"], run["seed"])
            if key not in seen:  # a method present in several inputs is taken from the first
                seen.add(key)
                runs.append(run)
    order = {entry[0]: i for i, entry in enumerate(DEFAULT_ENTRIES)}  # the bench's row order where known
    runs.sort(key=lambda run: order.get(run["label"], len(order)))
    merged = summarise(runs)
    merged.update(setting=setting, seeds=loaded[0]["seeds"],
                  wall_time_s=sum(r["time_s"] for r in runs), merged_from=list(inputs))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_results(merged, out)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], *sys.argv[2:])
