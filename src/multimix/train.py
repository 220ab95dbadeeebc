"""The trainer: one function, ``train(config)``, readable top to bottom.

Every epoch starts from RNG states derived from (seed, epoch), and a
checkpoint (model, optimiser, scheduler, EMA teacher, RNG states) is written
atomically after every epoch, so ``resume=True`` continues to exactly the
same result on the CPU as an uninterrupted run. Ctrl-C keeps the last epoch's
checkpoint, saves the interrupted weights beside it and exits cleanly; a
non-finite loss stops the run with :class:`NonFiniteLossError` and leaves the
last good checkpoint as it was.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from .data import DATASETS, load_dataset
from .evaluation import evaluate
from .methods import METHODS, SelfDistillation, create_method
from .models import MODELS, TORCHVISION_RESNETS, build_model

__all__ = ["TrainConfig", "train", "NonFiniteLossError", "CheckpointError", "load_checkpoint", "load_trained",
           "build_data_and_model"]

SCHEDULES = ("cosine", "step", "constant")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class CheckpointError(ValueError):
    """A checkpoint is unreadable or does not match the run."""


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``config.json`` in the output directory."""

    # data
    dataset: str = "mnist1d"
    data_dir: Optional[str] = None
    download: bool = False
    num_train: Optional[int] = None
    num_test: Optional[int] = None
    val_size: int = 0
    image_size: int = 32
    augment: bool = True
    # model and method
    model: str = "cnn1d"
    width: Optional[int] = None
    method: str = "erm"
    method_args: Dict[str, Any] = field(default_factory=dict)
    distill: Optional[Dict[str, float]] = None  # {"momentum", "temperature", "weight"}
    # optimisation (SGD with momentum, as in the papers)
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of the run, for "step"
    gamma: float = 0.1
    # machinery
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bfloat16 autocast, on CUDA only
    compile: bool = False
    workers: int = 0
    out_dir: str = "runs/train"
    resume: bool = False
    stop_after_epochs: Optional[int] = None  # end this invocation early (the schedule still spans `epochs`); resume later
    checkpoint: bool = True
    progress: bool = True
    eval_every: int = 1

    def validate(self) -> "TrainConfig":
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid datasets: {', '.join(DATASETS)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid methods: {', '.join(METHODS)}")
        if not (self.model in MODELS or self.model in TORCHVISION_RESNETS or self.model.startswith("timm:")):
            valid = ", ".join([*MODELS, *TORCHVISION_RESNETS, "timm:<name>"])
            raise ValueError(f"unknown model {self.model!r}; valid models: {valid}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid schedules: {', '.join(SCHEDULES)}")
        for name in ("epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        return self


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 1) % (2**63 - 1)


def _scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config.schedule == "step":
        milestones = sorted(int(f * total) for f in config.milestones)
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _save_atomic(obj: Dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Read a checkpoint, turning torch's low-level failures into a clear :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # unpickling, truncated zip, wrong format: all mean "unreadable"
        raise CheckpointError(f"checkpoint {path} is corrupted or not a multimix checkpoint ({type(err).__name__})") from err
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"checkpoint {path} is not a multimix checkpoint (missing model/epoch)")
    return state


def _load_into(module, state, what: str, path: Path) -> None:
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not match this run's {what}: {first}") from err


class _Metrics:
    """Per-epoch metrics to metrics.jsonl and metrics.csv, and to TensorBoard when it is installed."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.out_dir, self.enabled, self.writer = out_dir, enabled, None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(out_dir / "tensorboard"))
            except Exception:  # tensorboard not installed
                self.writer = None

    def log(self, row: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        csv_path = self.out_dir / "metrics.csv"
        new = not csv_path.exists()
        with open(csv_path, "a") as f:
            if new:
                f.write(",".join(row) + "\n")
            f.write(",".join(str(v) for v in row.values()) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


def build_data_and_model(config: TrainConfig, device) -> Tuple[Any, torch.nn.Module]:
    """The run's data splits and its freshly initialised model (seeded by ``config.seed``)."""
    splits = load_dataset(config.dataset, data_dir=config.data_dir, num_train=config.num_train,
                          num_test=config.num_test, num_val=config.val_size, download=config.download,
                          augment=config.augment, image_size=config.image_size, seed=config.seed)
    torch.manual_seed(config.seed)
    model = build_model(config.model, num_classes=splits.num_classes, input_shape=splits.input_shape,
                        width=config.width).to(device)
    return splits, model


def load_trained(path, *, device="cpu", **overrides) -> Tuple[TrainConfig, Any, torch.nn.Module]:
    """(config, splits, model with the checkpoint's weights) from a checkpoint written by :func:`train`.

    ``overrides`` replace config fields (e.g. ``data_dir`` when the data moved).
    """
    state = load_checkpoint(path)
    if "config" not in state:
        raise CheckpointError(f"checkpoint {path} carries no run configuration (an interrupted.pt?); use last.pt")
    valid = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in state["config"].items() if k in valid})
    config = dataclasses.replace(config, **overrides).validate()
    splits, model = build_data_and_model(config, _device(device) if isinstance(device, str) else device)
    _load_into(model, state["model"], "model", Path(path))
    return config, splits, model


def train(config: TrainConfig) -> Dict[str, Any]:
    """Train one model with one method; returns the summary (also written to summary.json)."""
    config.validate()
    out = Path(config.out_dir)
    device = _device(config.device)
    write = config.checkpoint
    if write:
        out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / "last.pt"
    if write and not config.resume and checkpoint_path.exists():
        raise FileExistsError(f"{checkpoint_path} exists: pass --resume to continue that run or choose another --out-dir")

    # ---- data, model, method, optimiser
    splits, model = build_data_and_model(config, device)
    distill = SelfDistillation(model, **config.distill) if config.distill else None
    method_generator = torch.Generator(device=device)
    method = create_method(config.method, num_classes=splits.num_classes, generator=method_generator,
                           distill=distill, **config.method_args)
    if len(splits.train) < config.batch_size:
        raise ValueError(f"batch_size ({config.batch_size}) is larger than the training set ({len(splits.train)})")
    steps_per_epoch = len(splits.train) // config.batch_size
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    scheduler = _scheduler(optimizer, config, steps_per_epoch)
    if config.compile:
        # Compile each piece in place: methods call encode/pool/head, not only forward.
        for stage in model.stages:
            stage.compile()
        model.head.compile()
    use_amp = config.amp and device.type == "cuda"

    # ---- resume
    start_epoch, history = 0, []
    if config.resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        _load_into(model, state["model"], "model", checkpoint_path)
        _load_into(optimizer, state["optimizer"], "optimizer", checkpoint_path)
        scheduler.load_state_dict(state["scheduler"])
        if distill is not None:
            if state.get("teacher") is None:
                raise CheckpointError(f"checkpoint {checkpoint_path} has no EMA teacher but this run uses self-distillation")
            _load_into(distill, state["teacher"], "EMA teacher", checkpoint_path)
        start_epoch, history = state["epoch"], state.get("history", [])
    if write:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    metrics = _Metrics(out, write)

    # ---- the loop
    status, epoch = "completed", start_epoch
    try:
        last_epoch = config.epochs if config.stop_after_epochs is None else min(config.epochs, start_epoch + config.stop_after_epochs)
        for epoch in range(start_epoch, last_epoch):
            # Every random draw of this epoch follows from (seed, epoch): resuming reproduces it.
            torch.manual_seed(_epoch_seed(config.seed, epoch))
            method_generator.manual_seed(_epoch_seed(config.seed, epoch) + 1)
            order = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch) + 2)
            loader = DataLoader(splits.train, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                generator=order, num_workers=config.workers, pin_memory=device.type == "cuda")
            model.train()
            start, loss_sum, seen = time.perf_counter(), 0.0, 0
            bar = _progress(loader, config.progress, f"epoch {epoch + 1}/{config.epochs}")
            for x, y in bar:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    loss = method(model, x, y)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"loss became {loss.item()} at epoch {epoch + 1}; stopped. The last good checkpoint "
                        f"({checkpoint_path if write else 'none written'}) is kept. Try a lower --lr.")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                method.update(model)
                loss_sum += loss.item() * x.shape[0]
                seen += x.shape[0]
                if bar is not loader:
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}", ex_s=f"{seen / (time.perf_counter() - start):.0f}")
            elapsed = time.perf_counter() - start
            row: Dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "lr": scheduler.get_last_lr()[0],
                                   "epoch_time_s": elapsed, "examples_per_s": seen / elapsed}
            if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                if splits.val is not None:
                    row.update({f"val_{k}": v for k, v in evaluate(model, splits.val, device=device).items()})
                row.update({f"test_{k}": v for k, v in evaluate(model, splits.test, device=device).items()})
            history.append(row)
            metrics.log(row)
            if config.progress:
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
            if write:
                _save_atomic({
                    "epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "teacher": distill.state_dict() if distill else None,
                    "rng": {"torch": torch.get_rng_state(), "method": method_generator.get_state()},
                    "config": dataclasses.asdict(config), "history": history,
                }, checkpoint_path)
    except KeyboardInterrupt:
        status = "interrupted"
        if write:
            _save_atomic({"epoch": epoch, "model": model.state_dict(), "interrupted": True}, out / "interrupted.pt")
        print(f"\ninterrupted during epoch {epoch + 1}: {checkpoint_path} holds the last completed epoch; "
              f"run again with --resume to continue", flush=True)
    finally:
        metrics.close()

    if status == "completed" and len(history) < config.epochs:
        status = "stopped"
    final = history[-1] if history else {}
    summary = {"status": status, "epochs_completed": len(history), "config": dataclasses.asdict(config),
               "final": final, "num_parameters": sum(p.numel() for p in model.parameters())}
    if write:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["model"], summary["splits"] = model, splits
    return summary
