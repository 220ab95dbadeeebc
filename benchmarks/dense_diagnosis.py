"""Why does Dense MultiMix lose on MNIST-1D? Validation-split probes of the per-position loss.

Each probe trains the 1-D CNN (dense features: 5 positions, receptive field 19
of the 40 samples) on the same data and seeds and reports validation accuracy
and ECE. The test split is not used.

- ERM: the pooled loss, no mixing.
- dense ERM: ``dense_multimix`` with tuple_size = 1, so every Λ row is one-hot
  (attention plays no part) and the loss is the per-position cross-entropy of
  un-mixed examples against their inherited label. If this alone loses, the
  per-position loss (not the mixing) is the cause.
- the same plus the pooled cross-entropy (``pooled_weight``);
- MultiMix and Dense MultiMix at the same concentration, and Dense MultiMix
  plus a MultiMix loss on the pooled embeddings (``pooled_weight`` 1 and 3).

The data, network, budget and tuning seeds are those of ``multimix bench --tune``.

    .venv/bin/python benchmarks/dense_diagnosis.py [--seeds 2] [--epochs 30]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np

from multimix.engine import Trainer, TrainConfig
from multimix.evaluation.calibration import expected_calibration_error
from multimix.evaluation.report import predict

PROBES = [
    ("ERM", "erm", {}),
    ("dense ERM (tuple_size=1: per-position CE, no mixing)", "dense_multimix",
     {"n": 1000, "tuple_size": 1, "alpha": 1.0}),
    ("dense ERM + pooled CE (pooled_weight=1)", "dense_multimix",
     {"n": 1000, "tuple_size": 1, "alpha": 1.0, "pooled_weight": 1.0}),
    ("MultiMix (concentration 0.5, no clean loss)", "multimix", {"n": 1000, "concentration": 0.5, "clean_weight": 0.0}),
    ("Dense MultiMix (concentration 0.5, self)", "dense_multimix", {"n": 1000, "concentration": 0.5}),
    ("Dense MultiMix + pooled MultiMix (pooled_weight=1)", "dense_multimix",
     {"n": 1000, "concentration": 0.5, "pooled_weight": 1.0}),
    ("Dense MultiMix + pooled MultiMix (pooled_weight=3)", "dense_multimix",
     {"n": 1000, "concentration": 0.5, "pooled_weight": 3.0}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", default="runs/dense_diagnosis.json")
    args = parser.parse_args()
    base = TrainConfig(dataset="mnist1d", model="cnn1d", width=32, num_train=2000, num_test=10000, val_size=5000,
                       epochs=args.epochs, eval_every=args.epochs, progress=False, checkpoint=False,
                       out_dir="runs/dense-diagnosis")
    results = []
    print("| probe | validation accuracy (%) | validation ECE (%) |\n|---|---|---|", flush=True)
    for label, method, method_args in PROBES:
        accs, eces = [], []
        for s in range(args.seeds):
            trainer = Trainer(replace(base, method=method, method_args=dict(method_args), seed=1000 + s))
            summary = trainer.run()
            pred = predict(trainer.model, trainer.splits.val)
            accs.append(summary["final"]["val_accuracy"])
            eces.append(100 * expected_calibration_error(pred["logits"].softmax(-1), pred["labels"]))
        results.append({"probe": label, "val_accuracy": accs, "val_ece": eces})
        print(f"| {label} | {np.mean(accs):.2f} ± {np.std(accs, ddof=1):.2f} | {np.mean(eces):.1f} |", flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
