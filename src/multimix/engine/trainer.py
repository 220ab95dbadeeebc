"""The trainer: ``Trainer(config).run()`` (or ``train(config)``), readable top to bottom.

    run()  =  set_up()  ->  resume()  ->  for each epoch: train_epoch() -> evaluate() -> save()  ->  summary

Every epoch starts from random states derived from (seed, epoch, rank), and a
checkpoint (model, optimiser, scheduler, the method's state: its EMA teacher) is written atomically
after every epoch, so ``resume=True`` continues to exactly the same result on
the CPU as an uninterrupted run. The run owns torch's global RNG only inside
:meth:`Trainer.run` (``torch.random.fork_rng``): the caller's RNG state is the
same afterwards. Ctrl-C keeps the last epoch's checkpoint, saves the
interrupted weights beside it and returns a summary marked interrupted; a
non-finite loss stops the run with :class:`NonFiniteLossError` and leaves the
last good checkpoint as it was.

Under ``torchrun`` the same code runs in every process (one per GPU); what
differs is gathered in :class:`Processes` and :mod:`multimix.engine.distributed`:
DistributedDataParallel, a DistributedSampler, per-rank random streams, metrics
averaged over ranks, files written by rank 0 only.

The method owns its teacher, needs, mixing scope and per-step update (hooked to the optimiser's step): the
trainer names none of its settings. Building is in :mod:`.build`, the resume identity and checkpoint migration in
:mod:`.identity`, process helpers in :mod:`.processes`; the loop and its exits are read here, top to bottom.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from .. import distributed as D
from .. import functional as MF
from ..methods import UNLABELLED, Method, create_method
from . import distributed as ED
from .budget import check_memory
from .build import (batch_size_for, build_data_and_model, check_batch_norm, check_splits, compile_in_place, make_loader,
                    make_optimizer, make_scheduler, measure_communication, method_arguments, model_name)
from .checkpoint import CheckpointError, load_checkpoint, load_into, save_atomic, write_json_atomic
from .config import TrainConfig, resolve_device
from .evaluate import evaluate_sharded
from .folder import FolderLock
from .identity import check_same_run, load_method_state
from .logging import MetricsLogger, ProgressBar, format_row
from .processes import Processes, check_writable, epoch_seed, run_in_processes
from .signals import Interrupted, StopRequest, is_worker_killed, stop_signals_blocked

__all__ = ["Trainer", "train", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


# Steps between host reads of device values on an accelerator: the epoch's loss is summed on the device and read
# back this often (and at the end), and the ranks of a distributed job agree on a stop request as often; a read
# each step would make the host wait for the device at every step.
HOST_READ_EVERY = 50


# One training per process: a run draws from torch's global RNG (initialisation, dropout), which threads share, so
# two runs in two threads would interleave their draws and neither would reproduce.
ACTIVE_RUN = threading.Lock()


class Trainer:
    """One model trained with one method, as :class:`TrainConfig` says.

    After :meth:`run`, ``model``, ``splits`` and ``method`` hold the trained
    model, the data and the method (for evaluation by the caller).
    """

    def __init__(self, config: TrainConfig, device: Optional[torch.device] = None):
        self.config = config.ensure_validated()  # a config from the command line is trusted as validated
        self.device = device if device is not None else resolve_device(config.device)
        self.out = Path(config.out_dir)
        self.checkpoint_path = self.out / "last.pt"
        self.procs = Processes.current()
        self.history: List[Dict[str, Any]] = []
        self.best: Optional[Dict[str, Any]] = None  # select="best_val": {"row", "state"} of the best epoch so far
        self.start_epoch = 0
        self.communication: Optional[Dict[str, Any]] = None
        self.prepared = False
        self.status, self.signal, self.error = "created", None, None
        self.stop = StopRequest()
        self.lock = FolderLock(self.out, "run")
        self.claimed = False

    @property
    def writes(self) -> bool:
        """Whether this process writes the output directory (rank 0 with checkpointing on)."""
        return self.config.checkpoint and self.procs.main

    # ------------------------------------------------------------------ set-up

    def set_up(self) -> None:
        """Data, model, method, optimiser and schedule; refuses to overwrite a finished run.

        The process that writes the output directory locks it first (:class:`FolderLock`): a second run into the
        same directory is refused before it touches anything.
        """
        config, device = self.config, self.device
        if self.writes:
            check_writable(self.out)
            self.lock.acquire()
            for stale in self.out.glob(".*.tmp*"):  # left by a process killed mid-write (SIGKILL, power loss)
                stale.unlink(missing_ok=True)
        if config.checkpoint:
            ED.run_on_main(self.check_fresh)  # rank 0 decides, every rank raises
        ED.run_on_main(lambda: check_memory(config, device))  # before any data is made; rank 0 decides
        self.splits, self.model = ED.main_first(lambda: build_data_and_model(config, device))  # rank 0 fills caches first
        self.generator = torch.Generator(device=device)
        self.unlabelled_generator = torch.Generator()
        self.method: Method = create_method(config.method, **method_arguments(config, self.model,
                                                                               self.splits.num_classes, self.generator))
        self.method.check_data(self.splits.input_shape, dataset=config.dataset)
        check_splits(config, self.splits)
        self.batch_size = batch_size_for(config, self.splits, self.procs)
        check_batch_norm(self.model, self.batch_size, model_name(config))
        self.steps_per_epoch = (len(self.splits.train) // self.procs.world) // self.batch_size
        self.method.check_steps(config.epochs * self.steps_per_epoch)
        self.optimizer = make_optimizer(self.model, config)
        self.method.attach(self.optimizer, self.model)  # the teacher's update: once per optimiser step
        self.scheduler = self.make_scheduler(start_step=0)
        self.use_amp = config.amp and device.type == "cuda"
        if self.procs.distributed and self.method.global_mixing and self.procs.main:
            self.communication = measure_communication(self.model, self.method, self.splits, self.batch_size,
                                                       self.procs.world, device, self.use_amp)
            print(ED.format_communication(self.communication), flush=True)
        if config.compile:
            compile_in_place(self.model)

    def check_fresh(self) -> None:
        if not self.config.resume and self.checkpoint_path.exists():
            raise FileExistsError(f"{self.checkpoint_path} exists: pass --resume to continue that run or choose "
                                  "another --out-dir")

    def make_scheduler(self, start_step: int):
        """The learning-rate schedule over ``epochs × steps_per_epoch`` steps, advanced to ``start_step``."""
        return make_scheduler(self.optimizer, self.config, self.config.epochs * self.steps_per_epoch, start_step)

    # ------------------------------------------------------------------ resume

    def resume(self) -> None:
        """Continue from ``last.pt``: weights, optimiser, the method's state (EMA teacher) and the metrics history.

        The learning-rate schedule is rebuilt for this run's ``epochs`` and advanced to the checkpoint's step,
        so a longer ``--epochs`` extends the schedule instead of restarting it. A checkpoint of another run
        (method, model, data, optimisation) is refused with the list of differences, and so is other data under the
        same settings (another ``data_dir``, changed files: the data's fingerprint differs).
        """
        if not self.config.resume:
            return
        path = self.checkpoint_path
        # Rank 0 reads the checkpoint and sends it to the others (no shared file system needed).
        state = ED.run_on_main(lambda: load_checkpoint(path) if path.exists() else None)
        if state is None:
            raise CheckpointError(f"--resume: no checkpoint at {path}; run without --resume to start a new run")
        check_same_run(state, self.config, self.splits.fingerprint, path)
        load_into(self.model, state["model"], "model", path)
        load_into(self.optimizer, state["optimizer"], "optimizer", path)
        self.scheduler = self.make_scheduler(start_step=state["epoch"] * self.steps_per_epoch)
        load_method_state(self.method, state, path)
        self.start_epoch, self.history = state["epoch"], state.get("history", [])
        self.best = state.get("best")

    # ------------------------------------------------------------------ one epoch

    def train_epoch(self, epoch: int) -> Dict[str, Any]:
        """One pass over the training data; returns the epoch's row of metrics."""
        config, procs, device = self.config, self.procs, self.device
        # Every random draw of this epoch follows from (seed, epoch, rank): resuming reproduces it.
        seed = epoch_seed(config.seed, epoch, procs.rank)
        torch.manual_seed(seed)
        self.generator.manual_seed(seed + 1)
        self.unlabelled_generator.manual_seed(seed + 3)
        loader = make_loader(self.splits, config, procs, epoch, self.batch_size, device)
        self.model.train()
        bar = ProgressBar(len(loader), config.progress and procs.main, f"epoch {epoch + 1}/{config.epochs}")
        start, loss_sum, seen = time.perf_counter(), 0.0, 0
        device_sum, first_unread = None, 0  # the loss summed on the device since the last read (accelerators)
        with stop_signals_blocked():  # the workers start here: a signal to the process group must not end them
            batches = iter(loader)
        try:
            for step, (x, y) in enumerate(batches):
                x, y = self.with_unlabelled(x, y)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                    loss = self.step_module(x, y) if procs.distributed else self.method(self.model, x, y)
                # The mean over ranks: the same value (and the same decision to stop) on every rank.
                logged = D.mean_across_ranks(loss.detach().float()) if procs.distributed else loss.detach().float()
                on_host = MF.on_host(logged)
                if on_host:  # read now: a non-finite loss stops before its update
                    loss_sum += self.read_loss(logged, x.shape[0], epoch, step, step)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                self.check_stop(step)
                seen += x.shape[0]
                if not on_host:
                    device_sum = logged * x.shape[0] if device_sum is None else device_sum + logged * x.shape[0]
                    if (step + 1) % HOST_READ_EVERY == 0:
                        loss_sum += self.read_loss(device_sum, 1, epoch, first_unread, step)
                        device_sum, first_unread = None, step + 1
                bar.step(loss=f"{loss_sum / seen:.4f}",
                         ex_s=f"{procs.world * seen / (time.perf_counter() - start):.0f}")
            if device_sum is not None:
                loss_sum += self.read_loss(device_sum, 1, epoch, first_unread, step)
        finally:
            bar.close()
        elapsed = time.perf_counter() - start
        return {"epoch": epoch + 1, "train_loss": loss_sum / seen, "lr": self.scheduler.get_last_lr()[0],
                "epoch_time_s": elapsed, "examples_per_s": procs.world * seen / elapsed}

    def read_loss(self, total: torch.Tensor, count: int, epoch: int, first: int, last: int) -> float:
        """``count`` × the loss ``total`` (0-d) read back as a float; :class:`NonFiniteLossError` when it is NaN or
        infinite, naming the steps ``first``..``last`` (0-based) whose losses it sums."""
        value = float(total)
        if not math.isfinite(value):
            where = " on at least one process" if self.procs.distributed else ""
            steps = f"step {last + 1}" if first == last else f"one of steps {first + 1}-{last + 1}"
            kept = (f"The last good checkpoint ({self.checkpoint_path}, epoch {epoch}) is kept."
                    if self.config.checkpoint and epoch > 0 else "No checkpoint was written.")
            raise NonFiniteLossError(f"loss became {value}{where} at epoch {epoch + 1}, {steps}; stopped. {kept} "
                                     "Try a lower --lr.")
        return value * count

    def with_unlabelled(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(x, y) with ``unlabelled_batch`` random unlabelled inputs appended (label ``UNLABELLED``), as many as the
        method asks for now (its teacher's predictions, their targets, mature over its warm-up)."""
        count = round(self.config.unlabelled_batch * self.method.unlabelled_fraction)
        if not count:
            return x, y
        pool = self.splits.unlabelled
        pick = torch.randint(len(pool), (count,), generator=self.unlabelled_generator)
        return torch.cat([x, pool[pick].to(x.dtype)]), torch.cat([y, torch.full((count,), UNLABELLED, dtype=y.dtype)])

    def evaluate(self, row: Dict[str, Any]) -> None:
        """Add validation (if any) and test accuracy and loss to ``row``, on every ``eval_every``-th epoch."""
        epoch = row["epoch"]
        if epoch % self.config.eval_every and epoch != self.config.epochs:
            return
        D.broadcast_buffers(self.model)  # every rank evaluates rank 0's weights (batch-norm statistics differ)
        for name, split in (("val", self.splits.val), ("test", self.splits.test)):
            if split is not None:
                # Full-batch training evaluates in one batch too: a graph model computes every node at once.
                size = max(1, len(split)) if self.config.batch_size is None else 512
                row.update({f"{name}_{k}": v for k, v in evaluate_sharded(self.model, split, self.device, size).items()})
        self.track_best(row)

    def track_best(self, row: Dict[str, Any]) -> None:
        """With ``select="best_val"``, keep a copy of the weights of the best validation epoch so far."""
        if self.config.select != "best_val" or "val_accuracy" not in row:
            return
        rank = (row["val_accuracy"], -row["val_loss"])
        if self.best is None or rank > (self.best["row"]["val_accuracy"], -self.best["row"]["val_loss"]):
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best = {"row": dict(row), "state": state}

    @property
    def selected(self) -> Dict[str, Any]:
        """The row of the epoch whose weights are the run's result (``select``): the best validation or the last."""
        if self.best is not None:
            return self.best["row"]
        return self.history[-1] if self.history else {}

    def save(self, epoch: int) -> None:
        """Write ``last.pt`` atomically (rank 0 only)."""
        if not self.writes:
            return
        save_atomic({
            "epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "method": self.method.state_dict(),
            "config": self.config.to_dict(), "history": self.history, "world_size": self.procs.world,
            "steps_per_epoch": self.steps_per_epoch, "best": self.best, "data_fingerprint": self.splits.fingerprint,
        }, self.checkpoint_path)
        (self.out / "interrupted.pt").unlink(missing_ok=True)  # older than last.pt now

    # ------------------------------------------------------------------ the run

    def run(self) -> Dict[str, Any]:
        """Prepare (if not done yet), train every remaining epoch; returns the summary (also summary.json).

        On the way out, also on errors, the output directory's lock is released.
        """
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with self.exclusive(), torch.random.fork_rng(devices=devices), self.stop:
                return self._run()
        finally:
            self.close()

    def prepare(self) -> "Trainer":
        """:meth:`set_up` and :meth:`resume`: every check of the input (data, method, checkpoint) before training.

        SIGINT/SIGTERM during set-up are kept, not lost: set-up finishes, then :class:`Interrupted` is raised.
        """
        if self.prepared:
            return self
        try:
            with self.exclusive(), self.stop:
                self.set_up()
                self.resume()
                self.check_stop()
        except BaseException:
            self.close()
            raise
        self.prepared = True
        return self

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """This process's claim to build or train, held for the block: a second trainer that prepares or runs
        meanwhile (in another thread) gets ``RuntimeError``, since runs share torch's global random state."""
        if self.claimed:
            yield
            return
        if not ACTIVE_RUN.acquire(blocking=False):
            raise RuntimeError("another Trainer is preparing or running in this process: runs share torch's global "
                               "random state, so a process trains one run at a time (run several in processes)")
        self.claimed = True
        try:
            yield
        finally:
            self.claimed = False
            ACTIVE_RUN.release()

    def close(self) -> None:
        """Release the output directory's lock (:meth:`run` does it on its way out)."""
        self.lock.release()

    def _run(self) -> Dict[str, Any]:
        config, procs = self.config, self.procs
        self.prepare()
        if self.writes:
            write_json_atomic(config.to_dict(), self.out / "config.json")
        self.metrics = MetricsLogger(self.out, self.writes)
        self.metrics.write(self.history, new_row=False)  # rows past the checkpoint (a kill before it) are dropped
        # DDP synchronises gradients of work done inside its forward: wrap the whole loss computation. The method
        # goes in as a plain callable, not a submodule: each rank keeps its own teacher, as the DDP docs of
        # MethodModule say.
        self.step_module = ED.wrap_ddp(self.model, self.method.__call__, self.device) if procs.distributed else None
        last = config.epochs if config.stop_after_epochs is None else min(config.epochs,
                                                                          self.start_epoch + config.stop_after_epochs)
        self.status, epoch = "running", self.start_epoch
        try:
            self.check_stop()
            for epoch in range(self.start_epoch, last):
                row = self.train_epoch(epoch)
                self.evaluate(row)
                self.history.append(row)
                try:  # the checkpoint first: metrics and summary never describe an epoch that last.pt lacks
                    self.save(epoch + 1)
                except BaseException:
                    self.history.pop()
                    raise
                self.metrics.write(self.history)
                self.write_summary()
                if config.progress and procs.main:
                    print(format_row(row), flush=True)
                self.check_stop()
            self.status = "completed" if len(self.history) >= config.epochs else "stopped"
            if self.best is not None:  # the run's result is the best validation epoch's model
                self.model.load_state_dict(self.best["state"])
        except (Interrupted, KeyboardInterrupt) as stop:
            self.status = "interrupted"
            self.signal = stop.name if isinstance(stop, Interrupted) else "SIGINT"
            self.save_interrupted(epoch)
        except BaseException as err:
            if self.stop.signum is not None and is_worker_killed(err):  # the group's signal reached a worker anyway
                self.status, self.signal = "interrupted", self.stop.name
                self.save_interrupted(epoch)
            else:
                self.status, self.error = "failed", f"{type(err).__name__}: {err}"
                self.write_summary(quiet=True)
                raise
        finally:
            self.metrics.close()
        summary = self.write_summary()
        if procs.distributed:
            D.barrier()  # no process exits (and gets its peers stopped by torchrun) before rank 0 has written
        return summary

    def check_stop(self, step: Optional[int] = None) -> None:
        """Raise :class:`Interrupted` when SIGINT/SIGTERM arrived (on any process: all stop at the same step).

        In a distributed job the ranks agree through a collective whose result is read back; when it runs on an
        accelerator (NCCL), the training loop asks (``step``: the epoch's 0-based step) only every
        ``HOST_READ_EVERY`` steps, so that a step never waits for the device.
        """
        requested = self.stop.signum or 0
        if self.procs.distributed:
            if step is not None and (step + 1) % HOST_READ_EVERY and D.comm_device().type != "cpu":
                return
            requested = int(D.sum_across_ranks(float(requested)) > 0) * (requested or signal.SIGTERM)
        if requested:
            raise Interrupted(requested)

    def save_interrupted(self, epoch: int) -> None:
        """Keep ``last.pt`` (the last completed epoch) and save the current weights as ``interrupted.pt``."""
        if self.writes:
            save_atomic({"epoch": epoch, "model": self.model.state_dict(), "interrupted": True},
                        self.out / "interrupted.pt")
        if not self.procs.main:
            return
        if self.history and self.config.checkpoint:
            advice = f"{self.checkpoint_path} holds epoch {len(self.history)}; run again with --resume to continue"
        elif self.history:
            advice = "checkpoints are off, so there is nothing to resume"
        else:
            advice = "no epoch was completed, so there is nothing to resume; run the same command to start over"
        print(f"\n{self.signal}: stopped during epoch {epoch + 1}; {advice}", flush=True)

    def summary(self) -> Dict[str, Any]:
        """The run's state as JSON: status (running / interrupted / failed / completed / stopped), final metrics."""
        summary = {"status": self.status, "epochs_completed": len(self.history), "config": self.config.to_dict(),
                   "final": self.history[-1] if self.history else {}, "selected": self.selected,
                   "num_parameters": sum(p.numel() for p in self.model.parameters()),
                   "world_size": self.procs.world, "rank": self.procs.rank}
        if self.signal:
            summary["signal"] = self.signal
        if self.error:
            summary["error"] = self.error
        if self.communication is not None:
            summary["communication"] = self.communication
        return summary

    def write_summary(self, quiet: bool = False) -> Dict[str, Any]:
        """Write ``summary.json`` atomically (rank 0) and return the summary; ``quiet`` ignores write errors."""
        summary = self.summary()
        if self.writes:
            try:
                write_json_atomic(summary, self.out / "summary.json")
            except OSError:
                if not quiet:
                    raise
        return summary


def train(config: TrainConfig) -> Dict[str, Any]:
    """Train one model with one method; returns the summary (also written to summary.json).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process runs this function:
    the model is wrapped in DistributedDataParallel, each process reads its own
    shard of ``batch_size`` examples per step (global batch = batch_size × W),
    losses and accuracies are averaged over all processes, and only rank 0
    writes files. A process group created here is destroyed on the way out,
    also on errors; a collective that fails because another process crashed or
    did not answer within ``dist_timeout`` seconds raises
    :class:`multimix.engine.distributed.DistributedError`.
    """
    return run_in_processes(config, lambda device: Trainer(config, device).run())
