"""Reference row for the Planetoid comparison: PyTorch Geometric's own two-layer GCN, outside multimix.

The network and protocol of PyG's ``examples/gcn.py`` (Kipf & Welling, 2017): two ``GCNConv`` layers (hidden 16),
dropout 0.5 on the input and the hidden layer, Adam lr 0.01 with weight decay 5e-4 on the first layer only, 200
full-batch epochs, row-normalised features, test accuracy at the epoch of best validation accuracy (first best).
It checks that ``multimix train --config cora_gcn`` (ERM) is the published GCN, and reports the mean confidence and
ECE of its test predictions (GCNs trained this way are under-confident).

    .venv/bin/python benchmarks/gcn_reference.py --data-dir ~/.cache/multimix/planetoid [--graph Cora] [--seeds 20]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from multimix.data.graph import planetoid_name
from multimix.evaluation.calibration import expected_calibration_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="DIR with <Graph>/raw/ind.<graph>.*")
    parser.add_argument("--graph", default="Cora")
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import torch_geometric.transforms as T
        from torch_geometric.io import read_planetoid_data
        from torch_geometric.nn import GCNConv
    name = planetoid_name(args.graph)
    data = T.NormalizeFeatures()(read_planetoid_data(f"{args.data_dir}/{name}/raw", name.lower()))
    num_classes = int(data.y.max()) + 1
    best_acc, last_acc, confidence, ece = [], [], [], []
    start = time.perf_counter()
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        conv1, conv2 = GCNConv(data.num_features, 16), GCNConv(16, num_classes)
        optimizer = torch.optim.Adam([dict(params=conv1.parameters(), weight_decay=5e-4),
                                      dict(params=conv2.parameters(), weight_decay=0.0)], lr=0.01)

        def forward(train: bool) -> torch.Tensor:
            x = F.dropout(data.x, 0.5, train)
            x = F.dropout(F.relu(conv1(x, data.edge_index)), 0.5, train)
            return conv2(x, data.edge_index)

        best_val, chosen = -1.0, None
        for _ in range(200):
            optimizer.zero_grad()
            F.cross_entropy(forward(True)[data.train_mask], data.y[data.train_mask]).backward()
            optimizer.step()
            with torch.no_grad():
                logits = forward(False)
            correct = logits.argmax(1) == data.y
            val = correct[data.val_mask].float().mean().item()
            test = 100.0 * correct[data.test_mask].float().mean().item()
            if val > best_val:
                best_val, chosen = val, (test, logits[data.test_mask].softmax(1))
        best_acc.append(chosen[0])
        last_acc.append(test)
        confidence.append(100.0 * chosen[1].max(1).values.mean().item())
        ece.append(100.0 * expected_calibration_error(chosen[1], data.y[data.test_mask], n_bins=15))

    def summary(values) -> str:
        return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else f"{values[0]:.2f}"

    print(f"PyG GCN on {name}, {args.seeds} seeds ({time.perf_counter() - start:.0f} s): test accuracy at best "
          f"validation {summary(best_acc)}, at the last epoch {summary(last_acc)}; mean confidence "
          f"{summary(confidence)}%, ECE {summary(ece)}%")


if __name__ == "__main__":
    main()
