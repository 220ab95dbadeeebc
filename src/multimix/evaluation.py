"""Evaluation of a trained classifier."""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Dataset, *, batch_size: int = 512, device="cpu",
             num_workers: int = 0) -> Dict[str, float]:
    """Top-1 accuracy (%) and mean cross-entropy of ``model`` in eval mode over ``dataset``."""
    was_training = model.training
    model.eval()
    correct, loss, count = 0, 0.0, 0
    for x, y in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x).float()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += y.numel()
    model.train(was_training)
    return {"accuracy": 100.0 * correct / count, "loss": loss / count}
