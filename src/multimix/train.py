"""The trainer: one function, ``train(config)``, readable top to bottom.

Every epoch starts from RNG states derived from (seed, epoch), and a
checkpoint (model, optimiser, scheduler, EMA teacher, RNG states) is written
atomically after every epoch, so ``resume=True`` continues to exactly the
same result on the CPU as an uninterrupted run. Ctrl-C keeps the last epoch's
checkpoint, saves the interrupted weights beside it and exits cleanly; a
non-finite loss stops the run with :class:`NonFiniteLossError` and leaves the
last good checkpoint as it was.

Under ``torchrun`` the same function runs in every process (one per GPU):
DistributedDataParallel, a DistributedSampler, per-rank random streams,
metrics averaged over ranks, files written by rank 0 only; see :func:`train`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from . import distributed as D
from .data import DATASETS, load_dataset
from .evaluation import evaluate
from .methods import METHODS, SelfDistillation, create_method
from .methods.multimix import MIX_SCOPES
from .models import build_model, check_model_name

__all__ = ["TrainConfig", "train", "NonFiniteLossError", "CheckpointError", "load_checkpoint", "load_trained",
           "build_data_and_model"]

SCHEDULES = ("cosine", "step", "constant")
MIX_SCOPE_METHODS = ("multimix", "dense_multimix")  # the methods that can mix over the global batch


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
    batch_size: int = 128  # per process: the global batch is batch_size × the number of processes
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
    # several processes (torchrun): see multimix.distributed
    mix_scope: str = "local"  # "global": MultiMix over the batches of all processes
    dist_timeout: float = 600.0  # seconds a collective waits for another process before the job fails

    def validate(self) -> "TrainConfig":
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid datasets: {', '.join(DATASETS)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid methods: {', '.join(METHODS)}")
        check_model_name(self.model)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid schedules: {', '.join(SCHEDULES)}")
        for name in ("epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.mix_scope not in MIX_SCOPES:
            raise ValueError(f"unknown mix_scope {self.mix_scope!r}; valid: {', '.join(MIX_SCOPES)}")
        if self.mix_scope == "global" and self.method not in MIX_SCOPE_METHODS:
            raise ValueError(f"mix_scope 'global' mixes embeddings over all processes and applies to "
                             f"{' and '.join(MIX_SCOPE_METHODS)} only, not {self.method!r}; use mix_scope 'local'")
        if not self.dist_timeout > 0:
            raise ValueError(f"dist_timeout must be > 0 seconds, got {self.dist_timeout}")
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


def _rank_seed(seed: int, epoch: int, rank: int) -> int:
    """The epoch's seed for one process; rank 0 (and a single process) gets ``_epoch_seed(seed, epoch)``."""
    return (_epoch_seed(seed, epoch) + rank * 0x9E3779B97F4A7C15) % (2**63 - 1)


def _scheduler_at(optimizer, config: TrainConfig, steps_per_epoch: int, step: int):
    """A fresh schedule advanced to ``step``: resuming with another number of processes changes steps per epoch."""
    for group in optimizer.param_groups:
        group["lr"] = group.get("initial_lr", config.lr)
    scheduler = _scheduler(optimizer, config, steps_per_epoch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(step):
            scheduler.step()
    return scheduler


def _evaluate_sharded(model, dataset, device) -> Dict[str, float]:
    """:func:`evaluate` over all ranks: each takes every W-th example, and the sums are all-reduced.

    The counts are exact (no padding), so the result equals one process evaluating the whole set.
    """
    world, rank = D.world_size(), D.rank()
    if world == 1:
        return evaluate(model, dataset, device=device)
    shard = Subset(dataset, range(rank, len(dataset), world))
    correct = loss_sum = 0.0
    if len(shard):
        result = evaluate(model, shard, device=device)
        correct, loss_sum = round(result["accuracy"] * len(shard) / 100.0), result["loss"] * len(shard)
    totals = D.sum_across_ranks(torch.tensor([correct, loss_sum, float(len(shard))], dtype=torch.float64,
                                             device=D.comm_device()))
    correct, loss_sum, count = totals.tolist()
    return {"accuracy": 100.0 * correct / count, "loss": loss_sum / count}


def _communication(config: TrainConfig, model, splits, device, use_amp: bool) -> Dict[str, Any]:
    """Bytes per step of global mixing against the gradient all-reduce, from this model's tensor sizes."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
        features = model.encode(torch.zeros(1, *splits.input_shape, device=device))
    model.train(was_training)
    dense = config.method == "dense_multimix"
    positions = math.prod(features.shape[2:]) if dense else 1
    return D.mixing_communication(
        batch_size=config.batch_size, world_size=D.world_size(), embed_dim=features.shape[1],
        num_classes=splits.num_classes, num_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        positions=positions, dense_targets=dense and bool(config.distill), element_bytes=features.element_size())


def train(config: TrainConfig) -> Dict[str, Any]:
    """Train one model with one method; returns the summary (also written to summary.json).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process runs this function:
    the model is wrapped in DistributedDataParallel, each process reads its own
    shard of ``batch_size`` examples per step (global batch = batch_size × W),
    losses and accuracies are averaged over all processes, and only rank 0
    writes files. A process group created here is destroyed on the way out,
    also on errors; a collective that fails because another process crashed or
    did not answer within ``dist_timeout`` seconds raises
    :class:`multimix.distributed.DistributedError`.
    """
    config.validate()
    device = _device(config.device)
    owns_group = D.init_from_env(backend="nccl" if device.type == "cuda" else "gloo", timeout_s=config.dist_timeout)
    try:
        if D.is_distributed() and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", D.local_rank())
        return _train(config, device)
    except Exception as err:
        if D.is_distributed() and D.is_collective_failure(err):
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise D.DistributedError(
                f"rank {D.rank()} of {D.world_size()}: a collective failed — another process crashed, was killed or "
                f"did not answer within --dist-timeout {config.dist_timeout:g} s (see the other ranks' output): "
                f"{first}") from err
        raise
    finally:
        if owns_group:
            D.cleanup()


def _train(config: TrainConfig, device: torch.device) -> Dict[str, Any]:
    distributed, rank, world = D.is_distributed(), D.rank(), D.world_size()
    main = rank == 0
    out = Path(config.out_dir)
    write = config.checkpoint and main
    if write:
        out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / "last.pt"

    def _check_fresh() -> None:
        if not config.resume and checkpoint_path.exists():
            raise FileExistsError(f"{checkpoint_path} exists: pass --resume to continue that run or choose another --out-dir")

    if config.checkpoint:
        D.run_on_main(_check_fresh)  # rank 0 decides, every rank raises

    # ---- data, model, method, optimiser
    splits, model = D.main_first(lambda: build_data_and_model(config, device))  # rank 0 fills the data cache first
    distill = SelfDistillation(model, **config.distill) if config.distill else None
    method_generator = torch.Generator(device=device)
    method_args = dict(config.method_args)
    if config.method in MIX_SCOPE_METHODS:
        method_args["mix_scope"] = config.mix_scope
    method = create_method(config.method, num_classes=splits.num_classes, generator=method_generator,
                           distill=distill, **method_args)
    if len(splits.train) < config.batch_size * world:
        across = f" × {world} processes" if distributed else ""
        raise ValueError(f"batch_size ({config.batch_size}{across}) is larger than the training set ({len(splits.train)})")
    steps_per_epoch = (len(splits.train) // world) // config.batch_size
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    scheduler = _scheduler(optimizer, config, steps_per_epoch)
    use_amp = config.amp and device.type == "cuda"
    communication = None
    if distributed and config.mix_scope == "global" and main:
        communication = _communication(config, model, splits, device, use_amp)
        print(D.format_communication(communication), flush=True)
    if config.compile:
        # Compile each piece in place: methods call encode/pool/head, not only forward.
        for stage in model.stages:
            stage.compile()
        model.head.compile()

    # ---- resume
    start_epoch, history = 0, []
    if config.resume:
        # Rank 0 reads the checkpoint and sends it to the others (no shared file system needed).
        state = D.run_on_main(lambda: load_checkpoint(checkpoint_path) if checkpoint_path.exists() else None)
        if state is not None:
            _load_into(model, state["model"], "model", checkpoint_path)
            _load_into(optimizer, state["optimizer"], "optimizer", checkpoint_path)
            if state.get("steps_per_epoch", steps_per_epoch) == steps_per_epoch:
                scheduler.load_state_dict(state["scheduler"])
            else:  # saved by another number of processes: same point of the schedule, in this run's steps
                scheduler = _scheduler_at(optimizer, config, steps_per_epoch, state["epoch"] * steps_per_epoch)
            if distill is not None:
                if state.get("teacher") is None:
                    raise CheckpointError(f"checkpoint {checkpoint_path} has no EMA teacher but this run uses self-distillation")
                _load_into(distill, state["teacher"], "EMA teacher", checkpoint_path)
            start_epoch, history = state["epoch"], state.get("history", [])
            del state
    if write:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    metrics = _Metrics(out, write)
    # DDP synchronises gradients of work done inside its forward: wrap the whole loss computation.
    step_module = D.wrap_ddp(model, method, device) if distributed else None

    # ---- the loop
    status, epoch = "completed", start_epoch
    try:
        last_epoch = config.epochs if config.stop_after_epochs is None else min(config.epochs, start_epoch + config.stop_after_epochs)
        for epoch in range(start_epoch, last_epoch):
            # Every random draw of this epoch follows from (seed, epoch, rank): resuming reproduces it.
            epoch_seed = _rank_seed(config.seed, epoch, rank)
            torch.manual_seed(epoch_seed)
            method_generator.manual_seed(epoch_seed + 1)
            if distributed:
                sampler = DistributedSampler(splits.train, num_replicas=world, rank=rank, shuffle=True,
                                             seed=config.seed, drop_last=True)
                sampler.set_epoch(epoch)
                loader = DataLoader(splits.train, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                                    num_workers=config.workers, pin_memory=device.type == "cuda")
            else:
                order = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch) + 2)
                loader = DataLoader(splits.train, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                    generator=order, num_workers=config.workers, pin_memory=device.type == "cuda")
            model.train()
            start, loss_sum, seen = time.perf_counter(), 0.0, 0
            bar = _progress(loader, config.progress and main, f"epoch {epoch + 1}/{config.epochs}")
            for x, y in bar:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    loss = step_module(x, y) if distributed else method(model, x, y)
                # The mean over ranks: the same value (and the same decision to stop) on every rank.
                logged = D.mean_across_ranks(loss.detach().float()) if distributed else loss
                if not torch.isfinite(logged):
                    where = " on at least one process" if distributed else ""
                    raise NonFiniteLossError(
                        f"loss became {logged.item()}{where} at epoch {epoch + 1}; stopped. The last good checkpoint "
                        f"({checkpoint_path if config.checkpoint else 'none written'}) is kept. Try a lower --lr.")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                method.update(model)
                loss_sum += logged.item() * x.shape[0]
                seen += x.shape[0]
                if bar is not loader:
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}", ex_s=f"{world * seen / (time.perf_counter() - start):.0f}")
            elapsed = time.perf_counter() - start
            row: Dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "lr": scheduler.get_last_lr()[0],
                                   "epoch_time_s": elapsed, "examples_per_s": world * seen / elapsed}
            if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                D.broadcast_buffers(model)  # every rank evaluates rank 0's weights (batch-norm statistics differ)
                if splits.val is not None:
                    row.update({f"val_{k}": v for k, v in _evaluate_sharded(model, splits.val, device).items()})
                row.update({f"test_{k}": v for k, v in _evaluate_sharded(model, splits.test, device).items()})
            history.append(row)
            metrics.log(row)
            if config.progress and main:
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
            if write:
                _save_atomic({
                    "epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "teacher": distill.state_dict() if distill else None,
                    "rng": {"torch": torch.get_rng_state(), "method": method_generator.get_state()},
                    "config": dataclasses.asdict(config), "history": history,
                    "world_size": world, "steps_per_epoch": steps_per_epoch,
                }, checkpoint_path)
    except KeyboardInterrupt:
        status = "interrupted"
        if write:
            _save_atomic({"epoch": epoch, "model": model.state_dict(), "interrupted": True}, out / "interrupted.pt")
        if main:
            print(f"\ninterrupted during epoch {epoch + 1}: {checkpoint_path} holds the last completed epoch; "
                  f"run again with --resume to continue", flush=True)
    finally:
        metrics.close()

    if status == "completed" and len(history) < config.epochs:
        status = "stopped"
    final = history[-1] if history else {}
    summary = {"status": status, "epochs_completed": len(history), "config": dataclasses.asdict(config),
               "final": final, "num_parameters": sum(p.numel() for p in model.parameters()), "world_size": world}
    if communication is not None:
        summary["communication"] = communication
    if write:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["model"], summary["splits"], summary["rank"] = model, splits, rank
    return summary
