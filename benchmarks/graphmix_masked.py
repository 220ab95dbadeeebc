"""GraphMix's masked path (an accelerator's: the parts kept as masks of the batch, nothing read back) against its
split path (the host's), end to end on Cora with the published recipe, paired by seed.

The masked path is forced on the CPU by :func:`multimix.functional.device_generic`; both draw from the same law
(tests/test_graphmix.py checks the arithmetic with the draws replayed), so their accuracies should agree within
the seed-to-seed noise. Each run trains ``configs/cora_graphmix.yaml`` (2,000 full-batch epochs, test accuracy
at the best validation epoch) in a process of its own with one thread.

    .venv/bin/python benchmarks/graphmix_masked.py --data-dir DIR --seeds 10 --jobs 2   # ~22 minutes on 2 cores
    .venv/bin/python benchmarks/graphmix_masked.py --data-dir DIR --seeds 10 --first-seed 10 --out more.json
    .venv/bin/python benchmarks/graphmix_masked.py --report first.json more.json       # the table of both

DIR holds Planetoid's raw Cora files (``Cora/raw``), e.g. ../shared/data/planetoid-cora.tar.gz unpacked.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def one(mode: str, seed: int, data_dir: str, out_dir: str) -> dict:
    import multimix.functional as MF
    from multimix.engine import Trainer, TrainConfig
    from multimix.engine.config import load_recipe

    recipe = load_recipe("cora_graphmix")
    config = TrainConfig.from_dict({**recipe, "seed": seed, "data_dir": data_dir, "out_dir": out_dir,
                                    "progress": False, "device": "cpu"})
    start = time.perf_counter()
    with MF.device_generic() if mode == "masked" else contextlib.nullcontext():
        summary = Trainer(config).run()
    return {"mode": mode, "seed": seed, "status": summary["status"], "test_accuracy": summary["final"]["test_accuracy"],
            "val_accuracy": summary["final"]["val_accuracy"], "seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--seeds", type=int, default=10, help="seeds FIRST_SEED .. FIRST_SEED+SEEDS-1, each on both "
                                                              "paths")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the runs' results (JSON) here")
    parser.add_argument("--report", nargs="+", metavar="JSON", help="only print the table of runs written by --out")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "SEED"), help=argparse.SUPPRESS)  # a single run (internal)
    parser.add_argument("--out-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.data_dir, args.out_dir)))
        return 0
    if args.report:
        runs = [run for path in args.report for run in json.loads(open(path).read())]
        return report({(run["mode"], run["seed"]): run for run in runs})
    if not args.data_dir:
        parser.error("--data-dir is required to train")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        def run(mode: str, seed: int) -> dict:
            done = subprocess.run([sys.executable, __file__, "--one", mode, str(seed), "--data-dir", args.data_dir,
                                   "--out-dir", os.path.join(tmp, f"{mode}{seed}")],
                                  env=env, capture_output=True, text=True, check=True)
            return json.loads(done.stdout.strip().splitlines()[-1])

        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {(mode, seed): pool.submit(run, mode, seed)
                       for seed in range(args.first_seed, args.first_seed + args.seeds) for mode in ("split", "masked")}
            results = {key: future.result() for key, future in futures.items()}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(list(results.values()), f, indent=1)
    return report(results)


def report(results: dict) -> int:
    """Print the paired table of ``results`` ((mode, seed) → a run's result)."""
    from multimix.experiments.stats import paired_comparison

    seeds = sorted({seed for _, seed in results})
    print("| seed | split (host) test % | masked test % | split val % | masked val % |")
    print("|---:|---:|---:|---:|---:|")
    for seed in seeds:
        a, b = results["split", seed], results["masked", seed]
        print(f"| {seed} | {a['test_accuracy']:.1f} | {b['test_accuracy']:.1f} | {a['val_accuracy']:.1f} | "
              f"{b['val_accuracy']:.1f} |")
    for key in ("test_accuracy", "val_accuracy"):
        split = [results["split", s][key] for s in seeds]
        masked = [results["masked", s][key] for s in seeds]
        c = paired_comparison(masked, split)
        print(f"{key}: split {statistics.mean(split):.2f} ± {statistics.stdev(split):.2f}, masked "
              f"{statistics.mean(masked):.2f} ± {statistics.stdev(masked):.2f}; masked − split {c['mean']:+.2f} "
              f"[{c['low']:+.2f}, {c['high']:+.2f}], p = {c['p']:.2f}")
    if all(run.get("seconds") is not None for run in results.values()):
        seconds = {mode: statistics.mean(results[mode, s]["seconds"] for s in seeds) for mode in ("split", "masked")}
        print(f"mean seconds per run: split {seconds['split']:.0f}, masked {seconds['masked']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
