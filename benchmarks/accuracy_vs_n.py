"""Accuracy against n, the number of interpolated examples per mini-batch (MultiMix on MNIST-1D).

Reproduce (from the repository root; each run is ``multimix train --config
mnist1d_cnn`` with only n, the seed and the budget changed)::

    .venv/bin/python benchmarks/accuracy_vs_n.py --jobs 2              # n in 10..10^5, seeds 0-4, 15 epochs
    .venv/bin/python benchmarks/accuracy_vs_n.py --method dense_multimix --ns 10 100 1000 10000 --jobs 2
    .venv/bin/python benchmarks/accuracy_vs_n.py --ns 10 1000 --seeds 0 --epochs 3   # a quick look

For every (n, seed) it trains in a subprocess (``--jobs`` at once, one
thread each: on a machine with that many idle cores, epoch times are those of
one thread) with a 500-example validation
split held out of the 4,000 training examples, reads ``summary.json`` and
prints one row per n: validation and test accuracy (mean ± std over seeds,
and a 95% t-interval of the mean) and the mean time per epoch. The rows go to
``--out`` as JSON, and ``--plot`` draws both accuracies with their intervals
against n (``--replot`` redraws from an existing ``--out`` without training).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from scipy import stats


def train(method: str, n: int, seed: int, epochs: int, out_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "multimix", "train", "--config", "mnist1d_cnn", "--method", method,
           "--num-mix", str(n), "--seed", str(seed), "--epochs", str(epochs), "--val-size", "500",
           "--out-dir", str(out_dir), "--no-progress"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    final = json.loads((out_dir / "summary.json").read_text())["final"]
    history = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"val_accuracy": final["val_accuracy"], "test_accuracy": final["test_accuracy"],
            "epoch_time_s": statistics.mean(row["epoch_time_s"] for row in history)}


def summarise(values):
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, 0.0, (mean, mean)
    std = statistics.stdev(values)
    half = stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values))
    return mean, std, (mean - half, mean + half)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[10, 100, 1000, 10_000, 100_000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--method", default="multimix", choices=["multimix", "dense_multimix"])
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once (one thread each)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("runs/accuracy_vs_n.json"))
    parser.add_argument("--plot", type=Path, default=None, help="PNG of accuracy against n")
    parser.add_argument("--replot", action="store_true", help="only draw --plot from the rows in --out")
    args = parser.parse_args(argv)
    if args.replot:
        return plot(json.loads(args.out.read_text()), args.plot or args.out.with_suffix(".png"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        print("| n | val accuracy % (mean ± std) | 95% CI | test accuracy % (mean ± std) | 95% CI | s / epoch |")
        print("|---:|---|---|---|---|---:|")
        pool = concurrent.futures.ThreadPoolExecutor(args.jobs)  # threads that wait on the subprocesses
        futures = {(n, seed): pool.submit(train, args.method, n, seed, args.epochs, Path(tmp) / f"n{n}_s{seed}")
                   for n in args.ns for seed in args.seeds}
        for n in args.ns:
            runs = [futures[n, seed].result() for seed in args.seeds]
            row = {"n": n, "method": args.method, "seeds": args.seeds, "epochs": args.epochs, "jobs": args.jobs,
                   "runs": runs}
            cells = []
            for key in ("val_accuracy", "test_accuracy"):
                mean, std, (lo, hi) = summarise([r[key] for r in runs])
                row[key] = {"mean": mean, "std": std, "ci95": [lo, hi]}
                cells += [f"{mean:.2f} ± {std:.2f}", f"[{lo:.2f}, {hi:.2f}]"]
            row["epoch_time_s"] = statistics.mean(r["epoch_time_s"] for r in runs)
            rows.append(row)
            print(f"| {n:,} | {' | '.join(cells)} | {row['epoch_time_s']:.2f} |", flush=True)
        pool.shutdown()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")
    return plot(rows, args.plot) if args.plot else 0


def plot(rows, path: Path) -> int:
    from multimix.evaluation.plots import new_figure, save_figure

    fig = new_figure(figsize=(6.0, 4.0))
    ax = fig.subplots()
    ns = [r["n"] for r in rows]
    for key, label, style in (("val_accuracy", "validation", "o-"), ("test_accuracy", "test", "s--")):
        means = [r[key]["mean"] for r in rows]
        lo = [r[key]["mean"] - r[key]["ci95"][0] for r in rows]
        hi = [r[key]["ci95"][1] - r[key]["mean"] for r in rows]
        ax.errorbar(ns, means, yerr=[lo, hi], fmt=style, capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("interpolated examples per mini-batch, n")
    ax.set_ylabel("accuracy (%), mean and 95% interval")
    name = {"multimix": "MultiMix", "dense_multimix": "Dense MultiMix"}[rows[0].get("method", "multimix")]
    ax.set_title(f"{name} on MNIST-1D, {rows[0]['epochs']} epochs, seeds {rows[0]['seeds']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
