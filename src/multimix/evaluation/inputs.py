"""Tensor argument checks shared by the evaluation modules, their working dtype, and ordered batches of a data set.

Each check raises before any work is done (``TypeError`` for a wrong type or
dtype, ``ValueError`` for a wrong shape or value, both naming the argument)
and returns its argument so that it can be used inline. Scalar checks live in
:mod:`multimix.checks`; checks used by a single module stay private there.

Notation: N examples, d embedding channels.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..checks import check_int

__all__ = ["check_tensor", "check_labels", "check_embeddings", "check_max_points", "work_dtype"]


def check_tensor(x, name: str, shape_doc: str) -> Tensor:
    """``x`` if it is a tensor; else ``TypeError`` naming ``name`` and the expected shape ``shape_doc``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape_doc}, got {type(x).__name__}")
    return x


def check_labels(labels, n: int, name: str = "labels", num_classes: Optional[int] = None) -> Tensor:
    """``labels`` if it is an (n,) integer tensor of class indices (in [0, num_classes) when given)."""
    check_tensor(labels, name, "(N,)")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class indices, got dtype {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) (one class index per row), got {tuple(labels.shape)}")
    if num_classes is not None:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes}) (c = {num_classes}), got values in [{lo}, {hi}]")
    return labels


def check_embeddings(z, name: str = "z", min_points: int = 2) -> Tensor:
    """``z`` if it is a finite floating (N, d) tensor with N >= ``min_points`` and d >= 1."""
    check_tensor(z, name, "(N, d)")
    if z.dim() != 2 or z.shape[0] < min_points or z.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, d) with N >= {min_points} and d >= 1, got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {z.dtype}")
    if not bool(torch.isfinite(z.detach()).all()):
        raise ValueError(f"{name} must be finite")
    return z


def check_max_points(max_points) -> Optional[int]:
    """``max_points`` if it is None (use every example) or an integer >= 2."""
    if max_points is None:
        return None
    return check_int(max_points, "max_points", 2)


def work_dtype(x: Tensor) -> torch.dtype:
    """The dtype metrics compute in: ``x``'s dtype promoted to at least float32."""
    return torch.promote_types(x.dtype, torch.float32)
