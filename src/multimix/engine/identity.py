"""A run's identity: what a resumed run must share with its checkpoint, and a trained model read back.

:data:`RUN_IDENTITY` lists the settings a ``--resume`` must keep (the rest,
e.g. epochs, device, out_dir, may change); the data's fingerprint is checked
beside them. :func:`load_method_state` restores a method's state (its EMA
teacher, its step count) from a checkpoint, also from one of multimix <= 0.1
that kept the teacher in its own entry. :func:`load_trained` reads a
checkpoint's configuration, migrating those of older versions, and rebuilds
the model with the run's weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..data import Splits
from ..methods import METHODS, Method, SelfDistillation
from .build import build_data_and_model
from .checkpoint import CheckpointError, load_checkpoint, load_into
from .config import TrainConfig, resolve_device

__all__ = ["RUN_IDENTITY", "config_differences", "check_same_run", "load_method_state", "load_trained"]


RUN_IDENTITY = ("dataset", "num_train", "num_test", "val_size", "image_size", "augment", "model", "width", "method",
                "method_args", "distill", "unlabelled_batch", "seed", "batch_size", "optimizer", "lr", "momentum", "nesterov",
                "weight_decay", "schedule", "milestones", "gamma", "select")


def config_differences(saved: Dict[str, Any], config: TrainConfig) -> List[str]:
    """``key: saved → now`` for every :data:`RUN_IDENTITY` field that differs (the method's settings that it
    declares free on resume, such as the mixing scope, may change)."""
    now = config.to_dict()
    free = METHODS[config.method].free_on_resume if config.method in METHODS else frozenset()
    out = []
    for key in RUN_IDENTITY:
        before, after = saved.get(key), now[key]
        if key == "method_args":
            before = {k: v for k, v in (before or {}).items() if k not in free}
            after = {k: v for k, v in after.items() if k not in free}
        elif key == "distill" and before is not None and after is not None:
            # a setting left out means its default (checkpoints from before a setting existed lack it)
            before, after = {**SelfDistillation.DEFAULTS, **before}, {**SelfDistillation.DEFAULTS, **after}
        if key in saved and before != after:
            out.append(f"{key}: {before!r} → {after!r}")
    return out



def check_same_run(state: Dict[str, Any], config: TrainConfig, fingerprint: Optional[str], path: Path) -> None:
    """:class:`CheckpointError` unless checkpoint ``state`` is of this run: the same :data:`RUN_IDENTITY` settings
    and the same data (``fingerprint``, the data's :attr:`~multimix.data.Splits.fingerprint`)."""
    differences = config_differences(state.get("config", {}), config)
    if differences:
        raise CheckpointError(f"--resume: {path} is from another run ({'; '.join(differences)}); use the same "
                              "settings, or another --out-dir for a new run")
    before = state.get("data_fingerprint")
    if before is not None and fingerprint is not None and before != fingerprint:  # checkpoints before 0.2 carry none
        raise CheckpointError(f"--resume: {path} was trained on other data (fingerprint {before} → {fingerprint}, "
                              f"dataset {config.dataset}, data_dir {config.data_dir}); resume with the run's data, or "
                              "start a new run in another --out-dir")


def load_method_state(method: Method, state: Dict[str, Any], path: Path) -> None:
    """Restore ``method``'s state (EMA teacher, step count) from checkpoint ``state``.

    Checkpoints of multimix <= 0.1 hold the teacher as ``state["teacher"]`` = ``{"teacher": weights, "updates":
    n}`` and no method entry: the teacher is loaded from there and the step count is the checkpoint's epoch ×
    steps per epoch. A mismatch is a :class:`CheckpointError` naming the file.
    """
    if "method" in state:
        load_into(method, state["method"], "method (EMA teacher, step count)", path)
        return
    teacher = state.get("teacher")
    if (teacher is None) != (method.distill is None):
        has = "no EMA teacher" if teacher is None else "an EMA teacher"
        uses = "uses" if method.distill is not None else "does not use"
        raise CheckpointError(f"checkpoint {path} has {has} but this run {uses} self-distillation")
    if teacher is not None:
        load_into(method.distill, teacher, "EMA teacher", path)
    method.steps = int(state.get("epoch", 0)) * int(state.get("steps_per_epoch", 0) or 0)


def load_trained(path, *, device="cpu", **overrides) -> Tuple[TrainConfig, Splits, torch.nn.Module]:
    """(config, splits, model with the checkpoint's weights) from a checkpoint written by the trainer.

    The weights are the run's result: the last epoch's, or with ``select="best_val"`` the best validation epoch's.

    ``overrides`` replace config fields (e.g. ``data_dir`` when the data moved).
    """
    state = load_checkpoint(path)
    if "config" not in state:
        raise CheckpointError(f"checkpoint {path} carries no run configuration (an interrupted.pt?); use last.pt")
    saved = dict(state["config"])
    # Checkpoints of multimix <= 0.1 kept the mixing scope beside the method's settings.
    scope = saved.pop("mix_scope", "local")
    if scope != "local":
        saved["method_args"] = {**saved.get("method_args", {}), "mix_scope": scope}
    valid = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in saved.items() if k in valid})
    # The device is where we load now, not where the checkpoint was trained (a GPU run evaluated on a laptop).
    config = dataclasses.replace(config, **{"device": str(device), **overrides}).validate()
    splits, model = build_data_and_model(config, resolve_device(device) if isinstance(device, str) else device)
    # A select="best_val" run's result is its best validation epoch, kept beside the last epoch's weights.
    best = state.get("best") if config.select == "best_val" else None
    load_into(model, best["state"] if best else state["model"], "model", Path(path))
    return config, splits, model


