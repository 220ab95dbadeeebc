"""The trainer's own evaluation: top-1 accuracy and mean cross-entropy of a model over a data set.

The wider evaluation suite (robustness, calibration, OOD detection, embedding
geometry) lives in :mod:`multimix.evaluation`, which builds on this module.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from .. import distributed as D
from ..contract import eval_mode

from ..data import batches

__all__ = ["evaluate", "evaluate_sharded"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Dataset, *, batch_size: int = 512, device="cpu",
             num_workers: int = 0) -> Dict[str, float]:
    """Top-1 accuracy (%) and mean cross-entropy over ``dataset``."""
    correct, loss, count = 0, 0.0, 0
    with eval_mode(model):
        for x, y in batches(dataset, batch_size, device, num_workers):
            logits = model(x).float()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            count += y.numel()
    return {"accuracy": 100.0 * correct / count, "loss": loss / count}


def evaluate_sharded(model: torch.nn.Module, dataset: Dataset, device, batch_size: int = 512) -> Dict[str, float]:
    """:func:`evaluate` over all torchrun processes: each takes every W-th example, and the sums are all-reduced.

    The counts are exact (no padding), so the result equals one process evaluating the whole set.
    """
    world, rank = D.world_size(), D.rank()
    if world == 1:
        return evaluate(model, dataset, batch_size=batch_size, device=device)
    shard = Subset(dataset, range(rank, len(dataset), world))
    correct = loss_sum = 0.0
    if len(shard):
        result = evaluate(model, shard, batch_size=batch_size, device=device)
        correct, loss_sum = round(result["accuracy"] * len(shard) / 100.0), result["loss"] * len(shard)
    totals = D.sum_across_ranks(torch.tensor([correct, loss_sum, float(len(shard))], dtype=torch.float64,
                                             device=D.comm_device()))
    correct, loss_sum, count = totals.tolist()
    return {"accuracy": 100.0 * correct / count, "loss": loss_sum / count}
