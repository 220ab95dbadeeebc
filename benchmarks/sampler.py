"""ns per entry of the Λ sampler, one thread, against its physical floor and torch's references.

Reproduce (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sampler.py            # m = 128, n = 10,000 (~1 min)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sampler.py --repeats 30

Every variant is timed round-robin (interleaved) in one process, each call's
thread CPU time (``time.thread_time``, which other processes' load on a shared
machine does not inflate as much as wall time), and the minimum and median over
repeats are printed in ns per entry of Λ (n·m entries). Beside
``multimix.functional.dirichlet`` at each α, by its fused route (``native``,
the default in float32 when it compiled) and its eager one (``eager``):

- ``random bits``: numpy SFC64 ``random_raw``, one 64-bit word per entry, the
  bits the sampler consumes for α ≠ 1 (α = 1 uses half);
- ``write n·m floats``: a fresh (n, m) float32 tensor filled once, the floor of
  returning Λ;
- ``torch.rand``: torch's uniform_ of n·m float32 (its own generator);
- ``torch.distributions.Dirichlet``: torch's sampler, for reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    import multimix  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from multimix import functional as MF
from multimix import native


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--m", type=int, default=128)
    parser.add_argument("--alphas", type=float, nargs="+", default=[1 / 128, 0.01, 0.2, 1.0, 5.0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n, m = args.n, args.m
    entries = n * m
    g = torch.Generator().manual_seed(0)
    bits = np.random.SFC64(0)
    scratch = torch.empty(entries)
    variants = {}
    for method in ("native", "eager"):
        if method == "native" and native.kernels() is None:
            print("the fused sampler did not compile here: eager only")
            continue
        for a in args.alphas:
            variants[f"dirichlet {method}, alpha = {a:.4g}"] = (
                lambda a=a, method=method: MF.dirichlet(n, m, a, generator=g, method=method))
    variants["random bits (numpy SFC64, 64 per entry)"] = lambda: bits.random_raw(entries)
    variants["write n*m floats"] = lambda: torch.empty(n, m).fill_(0.5)
    variants["torch.rand (uniform_)"] = lambda: scratch.uniform_(generator=g)
    reference = torch.distributions.Dirichlet(torch.full((m,), 1.0))
    variants["torch.distributions.Dirichlet, alpha = 1"] = lambda: reference.sample((n,))
    times = {name: [] for name in variants}
    for round_ in range(args.repeats + 1):  # the first round warms up
        for name, fn in variants.items():
            start = time.thread_time_ns()
            fn()
            if round_:
                times[name].append(time.thread_time_ns() - start)
    print(f"n = {n:,}, m = {m}, one thread, {args.repeats} interleaved repeats; ns per entry (min / median)")
    print(f"{'':44s} {'min':>7s} {'median':>7s}")
    for name, values in times.items():
        print(f"{name:44s} {min(values) / entries:7.2f} {statistics.median(values) / entries:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
