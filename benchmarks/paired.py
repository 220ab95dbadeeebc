"""Paired comparisons of every method of a ``multimix bench`` results.json against one named baseline.

``bench`` compares our methods with the best baseline only; this prints each method's paired difference
(by seed) to ``--baseline`` and, with ``--reference``, a one-sample t-test of each method's accuracies against a
published number.

    .venv/bin/python benchmarks/paired.py docs/results/cora/results.json --baseline ERM --reference 83.94
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats

from multimix.experiments.stats import paired_comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", help="a results.json written by multimix bench")
    parser.add_argument("--baseline", required=True, help="the label of the method to compare against")
    parser.add_argument("--reference", type=float, help="a published accuracy (%%) to test each mean against")
    args = parser.parse_args()
    rows = {row["method"]: row for row in json.loads(Path(args.results).read_text())["rows"]}
    if args.baseline not in rows:
        parser.error(f"--baseline {args.baseline!r} is not in {args.results}; methods: {', '.join(rows)}")
    base = rows[args.baseline]["accuracies"]  # summarise() orders each method's accuracies by seed
    for label, row in rows.items():
        line = f"{label:45s} {row['mean']:6.2f}"
        if label != args.baseline:
            cmp = paired_comparison(row["accuracies"], base)
            line += f"  Δ vs {args.baseline} {cmp['mean']:+.2f} [{cmp['low']:+.2f}, {cmp['high']:+.2f}] p={cmp['p']:.3g}"
        if args.reference is not None:
            a = np.asarray(row["accuracies"])
            low, high = stats.t.interval(0.95, len(a) - 1, loc=a.mean(), scale=stats.sem(a))
            line += f"  95% CI [{low:.2f}, {high:.2f}], vs {args.reference}: p={stats.ttest_1samp(a, args.reference).pvalue:.3g}"
        print(line)


if __name__ == "__main__":
    main()
