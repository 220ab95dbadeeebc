"""What a run is built from: its data and model, its method's arguments, the batch size and each epoch's loader,
the optimiser (with its parameter groups) and the schedule.

Each function takes the run's :class:`~multimix.engine.config.TrainConfig`; the
trainer calls them in :meth:`~multimix.engine.trainer.Trainer.set_up`.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Tuple

import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..contract import eval_mode
from ..data import Splits, load_dataset
from ..methods import Method, SelfDistillation
from ..models import build_model, default_model_for
from . import distributed as ED
from .config import TrainConfig
from .processes import Processes, epoch_seed
from .signals import worker_ignores_stop_signals

__all__ = ["build_data_and_model", "model_name", "method_arguments", "check_splits", "batch_size_for", "make_loader",
           "measure_communication", "compile_in_place", "parameter_groups", "make_optimizer", "make_scheduler",
           "check_batch_norm"]

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
        model = build_model(model_name(config), num_classes=splits.num_classes, input_shape=splits.input_shape,
                            width=config.width, input_dtype=splits.input_dtype, graph=splits.graph)
    return splits, model.to(device)


def model_name(config: TrainConfig) -> str:
    """The run's model: ``config.model``, or the data family's default when it is unset (``default_model_for``)."""
    return config.model or default_model_for(config.dataset)


def method_arguments(config: TrainConfig, model: torch.nn.Module, num_classes: int,
                     generator: torch.Generator) -> Dict[str, Any]:
    """The keyword arguments of ``create_method(config.method, ...)``: the method's settings, the number of
    classes, the run's generator and, when ``config.distill`` is set, an EMA teacher of ``model``."""
    arguments = dict(config.method_args, num_classes=num_classes, generator=generator)
    if config.distill:
        arguments["distill"] = SelfDistillation(model, **config.distill)
    return arguments


def check_splits(config: TrainConfig, splits: Splits) -> None:
    """``ValueError`` when the data lacks what ``config`` asks of it (unlabelled examples, a validation split)."""
    if config.unlabelled_batch and splits.unlabelled is None:
        raise ValueError(f"unlabelled_batch: {config.dataset} has no unlabelled examples (data sets that do: "
                         "planetoid)")
    if config.select == "best_val" and splits.val is None:
        raise ValueError(f"select 'best_val' needs a validation split, and {config.dataset} has none with "
                         f"val_size {config.val_size}: set val_size > 0")


def batch_size_for(config: TrainConfig, splits: Splits, procs: Processes) -> int:
    """Examples per step and process: ``config.batch_size``, or with None the whole shard (full-batch);
    ``ValueError`` when the training set cannot fill one step of every process."""
    world = procs.world
    batch_size = config.batch_size or max(1, len(splits.train) // world)
    if len(splits.train) < batch_size * world:
        across = f" × {world} processes" if procs.distributed else ""
        raise ValueError(f"batch_size ({batch_size}{across}) is larger than the training set ({len(splits.train)})")
    return batch_size


def make_loader(splits: Splits, config: TrainConfig, procs: Processes, epoch: int, batch_size: int,
                device: torch.device) -> DataLoader:
    """Epoch ``epoch``'s shuffled batches: this process's shard under torchrun, the whole set otherwise; the
    order follows from (seed, epoch)."""
    if procs.distributed:
        sampler = DistributedSampler(splits.train, num_replicas=procs.world, rank=procs.rank, shuffle=True,
                                     seed=config.seed, drop_last=True)
        sampler.set_epoch(epoch)
        order = dict(sampler=sampler)
    else:
        order = dict(shuffle=True, generator=torch.Generator().manual_seed(epoch_seed(config.seed, epoch) + 2))
    workers = dict(num_workers=config.workers, worker_init_fn=worker_ignores_stop_signals) if config.workers else {}
    return DataLoader(splits.train, batch_size=batch_size, drop_last=True, pin_memory=device.type == "cuda",
                      **workers, **order)


def measure_communication(model: torch.nn.Module, method: Method, splits: Splits, batch_size: int, world: int,
                          device: torch.device, use_amp: bool) -> Dict[str, Any]:
    """Bytes per step of a method's global mixing against the gradient all-reduce, from this model's tensor sizes
    (what the method gathers: :meth:`~multimix.methods.Method.gathered_sizes`)."""
    with eval_mode(model), torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
        features = model.encode(torch.zeros(1, *splits.input_shape, dtype=splits.input_dtype, device=device))
    return ED.mixing_communication(
        batch_size=batch_size, world_size=world, embed_dim=features.shape[1], num_classes=splits.num_classes,
        num_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        **method.gathered_sizes(features), element_bytes=features.element_size())


def compile_in_place(model: torch.nn.Module) -> None:
    """``torch.compile`` each stage and the head in place: methods call encode/pool/head, not only forward."""
    for stage in model.stages:
        stage.compile()
    model.head.compile()


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
