"""Out-of-distribution data sets built from in-distribution ones: :class:`ShuffledPositions`."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["ShuffledPositions"]


class ShuffledPositions(Dataset):
    """A data set with the spatial positions of every input permuted by one fixed permutation.

    The out-of-distribution set used here when no other is given: it keeps each
    input's values (and so their statistics) but destroys the structure, e.g.
    MNIST-1D vs its spatially shuffled version.
    """

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset = dataset
        x0, _ = dataset[0]
        positions = int(np.prod(x0.shape[1:]))
        self.permutation = torch.randperm(positions, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        x, y = self.dataset[index]
        flat = x.reshape(x.shape[0], -1)[:, self.permutation]
        return flat.reshape(x.shape), y
