"""How MultiMix's validation accuracy varies with the Dirichlet concentration, and with the batch size.

1. Sweep the total concentration A = m·α (``MultiMix(concentration=A)``) at
   batch 128, with and without the clean-example loss.
2. Change the batch size (64, 128, 256) holding either A = 1 fixed or the
   per-example α = 1/128 fixed (the same Λ law at batch 128): with α fixed a
   bigger batch mixes more examples per tuple.

Same data, network, budget and tuning seeds as ``multimix bench --tune``
(MNIST-1D, 2,000 training / 5,000 validation sequences, 1-D CNN, 30 epochs);
validation accuracy only, the test split is not used. Writes a Markdown table
and a PNG.

    .venv/bin/python benchmarks/concentration.py [--seeds 2] [--out docs/results/concentration]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from multimix.engine import train
from multimix.experiments.bench import DEFAULT_CONFIG

CONCENTRATIONS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
BATCH_SIZES = (64, 128, 256)


def val_accuracy(seeds: int, **overrides) -> list:
    method_args = overrides.pop("method_args")
    accs = []
    for s in range(seeds):
        config = replace(DEFAULT_CONFIG, method="multimix", method_args={"n": 1000, **method_args}, seed=1000 + s,
                         out_dir="runs/concentration", **overrides).validate()
        accs.append(train(config)["final"]["val_accuracy"])
    return accs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", default="docs/results/concentration")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sweep = {}
    lines = ["| clean_weight | " + " | ".join(f"A = {a:g}" for a in CONCENTRATIONS) + " |",
             "|---|" + "---|" * len(CONCENTRATIONS)]
    for clean in (0.0, 1.0):
        row = []
        for a in CONCENTRATIONS:
            accs = val_accuracy(args.seeds, method_args={"concentration": a, "clean_weight": clean})
            sweep[(clean, a)] = accs
            row.append(f"{np.mean(accs):.2f} ± {np.std(accs, ddof=1):.2f}")
            print(f"clean_weight {clean:g}, A = {a:g}: {np.mean(accs):.2f}", flush=True)
        lines.append(f"| {clean:g} | " + " | ".join(row) + " |")
    batch = {}
    lines += ["", "| held fixed | " + " | ".join(f"batch {b}" for b in BATCH_SIZES) + " |",
              "|---|" + "---|" * len(BATCH_SIZES)]
    for name, method_args in (("A = 1", {"concentration": 1.0}), ("α = 1/128", {"alpha": 1.0 / 128})):
        row = []
        for b in BATCH_SIZES:
            accs = val_accuracy(args.seeds, batch_size=b, method_args={**method_args, "clean_weight": 0.0})
            batch[(name, b)] = accs
            row.append(f"{np.mean(accs):.2f} ± {np.std(accs, ddof=1):.2f}")
            print(f"{name}, batch {b}: {np.mean(accs):.2f}", flush=True)
        lines.append(f"| {name} (no clean loss) | " + " | ".join(row) + " |")
    table = "\n".join(lines)
    print(table)
    (out / "concentration.md").write_text(
        f"MultiMix validation accuracy (%), mean ± std over tuning seeds 1000–{999 + args.seeds}; "
        f"MNIST-1D 2,000 train / 5,000 validation, 1-D CNN width 32, 30 epochs.\n\n{table}\n")
    (out / "concentration.json").write_text(json.dumps(
        {"sweep": {f"clean={c:g},A={a:g}": v for (c, a), v in sweep.items()},
         "batch": {f"{n},batch={b}": v for (n, b), v in batch.items()}}, indent=2))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for clean, color in ((0.0, "tab:blue"), (1.0, "tab:red")):
        means = [np.mean(sweep[(clean, a)]) for a in CONCENTRATIONS]
        left.plot(CONCENTRATIONS, means, "o-", color=color, label=f"clean_weight {clean:g}")
        for a in CONCENTRATIONS:
            left.scatter([a] * args.seeds, sweep[(clean, a)], color=color, alpha=0.3, s=10)
    left.set_xscale("log", base=2)
    left.set_xlabel("total concentration A = m·α (batch 128)")
    left.set_ylabel("validation accuracy (%)")
    left.legend()
    for name, color in (("A = 1", "tab:green"), ("α = 1/128", "tab:purple")):
        right.plot(BATCH_SIZES, [np.mean(batch[(name, b)]) for b in BATCH_SIZES], "o-", color=color,
                   label=f"{name} fixed")
    right.set_xscale("log", base=2)
    right.set_xlabel("batch size m")
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle("MultiMix on MNIST-1D: validation accuracy vs Dirichlet concentration")
    fig.tight_layout()
    fig.savefig(out / "concentration.png", dpi=120)


if __name__ == "__main__":
    main()
