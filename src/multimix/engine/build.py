"""What a run is built from: its data and model, the optimiser (with its parameter groups) and the schedule.

Each function takes the run's :class:`~multimix.engine.config.TrainConfig`; the
trainer calls them in :meth:`~multimix.engine.trainer.Trainer.set_up`.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Tuple

import torch

from ..data import Splits, load_dataset
from ..models import build_model
from .config import TrainConfig

__all__ = ["build_data_and_model", "parameter_groups", "make_optimizer", "make_scheduler", "check_batch_norm"]

BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


def build_data_and_model(config: TrainConfig, device) -> Tuple[Splits, torch.nn.Module]:
    """The run's data splits and its freshly initialised model (weights fixed by ``config.seed``).

    The initialisation draws from a forked global RNG: the caller's state is untouched.
    """
    splits = load_dataset(config.dataset, data_dir=config.data_dir, num_train=config.num_train,
                          num_test=config.num_test, num_val=config.val_size, download=config.download,
                          augment=config.augment, image_size=config.image_size, seed=config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config.model, num_classes=splits.num_classes, input_shape=splits.input_shape,
                            width=config.width, input_dtype=splits.input_dtype, graph=splits.graph)
    return splits, model.to(device)



def parameter_groups(model: torch.nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Optimiser parameter groups: ``weight_decay`` for every parameter except those the model names in
    ``no_weight_decay()`` (timm's convention; the GCN decays its first layer only, as Kipf & Welling do)."""
    skip = set(model.no_weight_decay()) if callable(getattr(model, "no_weight_decay", None)) else set()
    named = list(model.named_parameters())
    unknown = skip - {name for name, _ in named}
    if unknown:
        raise ValueError(f"{type(model).__name__}.no_weight_decay() names unknown parameters {sorted(unknown)}")
    groups = [{"params": [p for n, p in named if n not in skip], "weight_decay": weight_decay},
              {"params": [p for n, p in named if n in skip], "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]



def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or Adam over :func:`parameter_groups`, as ``config`` says."""
    groups = parameter_groups(model, config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov and config.momentum > 0)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int, start_step: int = 0):
    """The learning-rate schedule over ``total_steps`` steps (``config.schedule``), advanced to ``start_step``."""
    if start_step:
        for group in optimizer.param_groups:
            group["lr"] = group.get("initial_lr", config.lr)
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    elif config.schedule == "step":
        milestones = sorted(int(f * total_steps) for f in config.milestones)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.gamma)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
        for _ in range(start_step):
            scheduler.step()
    return scheduler


def check_batch_norm(model: torch.nn.Module, batch_size: int, name: str) -> None:
    """``ValueError`` when ``model`` has batch normalisation and a step sees one example (it cannot train on it)."""
    if batch_size == 1 and any(isinstance(m, BATCH_NORMS) for m in model.modules()):
        raise ValueError(f"batch_size 1: model {name!r} has batch normalisation, which cannot train on one example "
                         "per batch (per process); use batch_size >= 2")
