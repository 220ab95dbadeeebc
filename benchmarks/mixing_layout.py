"""MultiMix's mixing and loss, forward and backward, with Λ·[g(Z), Y] laid out class-major (as
``functional.interpolate`` returns it) against the row-major product Λ @ [g(Z), Y] (before), side by side.

Reproduce (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mixing_layout.py     # ~20 s

Λ is given (n × 128), logits g(Z) are (128, 10) and require grad, targets Y
are one-hot; each repeat times ``soft_cross_entropy(mixed logits, mixed
targets)`` and its backward in both layouts, interleaved. Prints medians (ms)
and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from multimix import functional as MF


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    m, c = 128, 10
    logits = torch.randn(m, c, generator=g, requires_grad=True)
    targets = MF.as_soft_targets(torch.randint(0, c, (m,), generator=g), c)

    def step(lam: torch.Tensor, row_major: bool) -> float:
        start = time.perf_counter()
        both = torch.cat([logits, targets], dim=1)
        mixed = lam @ both if row_major else MF.interpolate(lam, both)
        MF.soft_cross_entropy(mixed[:, :c], mixed[:, c:]).backward()
        return time.perf_counter() - start

    print(f"m = {m}, c = {c}, one thread, {args.repeats} interleaved repeats; median ms of mixing + loss, fwd + bwd")
    for n in args.ns:
        lam = MF.dirichlet(n, m, 1 / m, generator=g)
        times = {False: [], True: []}
        for round_ in range(args.repeats + 2):  # two warm-up rounds
            for row_major in (False, True):
                elapsed = step(lam, row_major)
                if round_ >= 2:
                    times[row_major].append(elapsed)
        ours, rows = (statistics.median(times[k]) * 1e3 for k in (False, True))
        print(f"n = {n:>7,}: class-major (ours) {ours:8.3f} ms, row-major {rows:8.3f} ms, ratio {rows / ours:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
