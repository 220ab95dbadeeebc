"""MultiMix's and Dense MultiMix's mixed terms in one pass (``multimix.fused``: Λ drawn, mixed, scored and
back-propagated row by row, never stored) against sampling Λ and then mixing it, side by side.

Reproduce (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/one_pass.py     # ~1 minute

Logits (128, 10) require grad, targets are one-hot. MultiMix (α = 1/128): each
repeat times ``functional.mixed_cross_entropy`` and its backward (one pass)
against ``dirichlet`` + ``interpolate_pair`` + ``soft_cross_entropy`` and its
backward (three products), both drawing Λ from equal generators, interleaved.
Dense MultiMix (its defaults: α = 0.5/128, self-attention, the pooled term; 5
positions, as on the bench's network) called without Λ (one pass) and with a
sampled Λ. Prints medians (ms), their ratio,
and the fused sampler alone for scale.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import multimix
from multimix import functional as MF


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    m, c, r = 128, 10, 5
    logits = torch.randn(m, c, generator=g, requires_grad=True)
    position_logits = torch.randn(m, c, r, generator=g, requires_grad=True)
    labels = torch.randint(0, c, (m,), generator=g)
    targets = MF.as_soft_targets(labels, c)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn().backward()
        return time.perf_counter() - start

    def variants(n: int) -> dict:
        # the dense "embeddings" are the per-position logits and the head the identity (affine: the same path)
        dense = multimix.DenseMultiMix(n, affine=True, num_classes=c, generator=torch.Generator().manual_seed(1))
        alpha, head = 1 / m, torch.nn.Identity()
        return {
            "MultiMix, one pass": lambda: MF.mixed_cross_entropy(logits, targets, n, alpha, generator=g),
            "MultiMix, three products": lambda: MF.soft_cross_entropy(
                *MF.interpolate_pair(MF.dirichlet(n, m, alpha, generator=g), logits, targets)),
            "Dense MultiMix, one pass": lambda: dense(position_logits, labels, head),
            "Dense MultiMix, sampled then mixed": lambda: dense(position_logits, labels, head, lam=dense.sample_lam(m)),
            "the fused sampler alone": lambda: MF.dirichlet(n, m, alpha, generator=g).sum().requires_grad_(),
        }

    print(f"m = {m}, c = {c}, Dense r = {r} (+ pooled), {torch.get_num_threads()} thread(s), {args.repeats} "
          "interleaved repeats; median ms, forward + backward")
    for n in args.ns:
        steps = variants(n)
        times = {name: [] for name in steps}
        for round_ in range(args.repeats + 2):  # two warm-up rounds
            for name, fn in steps.items():
                elapsed = timed(fn)
                if round_ >= 2:
                    times[name].append(elapsed)
        median = {name: statistics.median(values) * 1e3 for name, values in times.items()}
        print(f"n = {n:>7,}: " + ", ".join(f"{name} {ms:.3f}" for name, ms in median.items()))
        print(f"           MultiMix three products / one pass {median['MultiMix, three products'] / median['MultiMix, one pass']:.2f}; "
              f"Dense sampled then mixed / one pass "
              f"{median['Dense MultiMix, sampled then mixed'] / median['Dense MultiMix, one pass']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
