"""What every data-set loader returns, and the helpers the family modules share.

:class:`Splits` bundles the ``train``, ``val`` and ``test`` data sets with the
input shape, the number of classes and the normalisation applied;
:func:`default_cache_dir` says where generated or downloaded data lives;
:func:`take` draws a seeded random subset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch.utils.data import Dataset, Subset

from ..checks import check_positive_int

__all__ = ["Splits", "default_cache_dir", "take"]


@dataclass
class Splits:
    """Train/val/test data sets and what evaluation needs to know about their inputs.

    ``mean``/``std`` describe the normalisation the loaders apply (per channel),
    so attacks can work in pixel space ([0, 1] for images); ``None`` means the
    inputs are used as they are (MNIST-1D, already standardised).
    ``input_dtype`` is the dtype of one input (integer for node indices);
    ``graph`` holds what a graph model needs beside the node indices
    (``features`` (N, F) and ``edge_index`` (2, E)), ``None`` for other data.
    ``unlabelled`` holds inputs without labels (N_u, *input_shape) for
    semi-supervised training (the Planetoid graphs: every node outside the
    training split), ``None`` where the data set offers none.
    """

    train: Dataset
    val: Optional[Dataset]
    test: Dataset
    input_shape: Tuple[int, ...]
    num_classes: int
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    input_dtype: torch.dtype = torch.float32
    graph: Optional[Dict[str, Any]] = None
    unlabelled: Optional[torch.Tensor] = None


def default_cache_dir() -> Path:
    """``$MULTIMIX_CACHE`` or ``~/.cache/multimix``."""
    return Path(os.environ.get("MULTIMIX_CACHE", Path.home() / ".cache" / "multimix"))


def take(dataset: Dataset, size: Optional[int], seed: int, name: str) -> Dataset:
    """A random subset of ``size`` examples (all of them when ``size`` is None).

    The order comes from a private ``torch.Generator`` seeded with ``seed``, so
    the global RNG is left alone; ``name`` is the argument named in errors.
    """
    if size is None or size >= len(dataset):
        return dataset
    check_positive_int(size, name)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, order[:size])
