"""The fused Λ sampler at 1 and 2 of torch's threads, each call right after a torch op (as inside a step).

Reproduce (from the repository root)::

    .venv/bin/python benchmarks/sampler_threads.py       # ~5 s

After a parallel torch op, torch's OpenMP workers spin-wait for a while; a
sampler on threads of its own would compete with them, one on torch's runtime
(``multimix.native``) uses them. Prints the median ms of 15 calls of
``dirichlet(n, 128, 1/128)`` per thread count, and the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from multimix import functional as MF


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(128, 256), torch.randn(256, 256)
    median = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        times = []
        for _ in range(args.repeats):
            (x @ w).relu_().sum()  # a parallel torch op just before, as in a training step
            start = time.perf_counter()
            MF.dirichlet(args.n, 128, 1 / 128, generator=g)
            times.append(time.perf_counter() - start)
        median[threads] = statistics.median(times) * 1e3
        print(f"{threads} thread(s): dirichlet({args.n:,}, 128, 1/128) {median[threads]:.2f} ms")
    print(f"speed-up at 2 threads: {median[1] / median[2]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
