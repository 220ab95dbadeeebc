"""The processes of a run: where this one stands among torchrun's, the process group around a run, per-rank seeds,
and the check that the output directory is writable before any work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed as D
from . import distributed as ED
from .config import TrainConfig, resolve_device

__all__ = ["Processes", "run_in_processes", "epoch_seed", "check_writable"]


def check_writable(directory: Path) -> None:
    """Create ``directory`` and write and remove a probe file in it, so that an unwritable output directory
    fails before any work (with the OSError naming the path)."""
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()



def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of every random draw of one epoch of one process (rank 0: the single-process stream)."""
    base = (seed * 1_000_003 + epoch * 7919 + 1) % (2**63 - 1)
    return (base + rank * 0x9E3779B97F4A7C15) % (2**63 - 1)



@dataclass(frozen=True)
class Processes:
    """Where this process stands among the torchrun processes (W = 1, rank 0 for a plain run)."""

    world: int
    rank: int

    @classmethod
    def current(cls) -> "Processes":
        return cls(D.world_size(), D.rank())

    @property
    def distributed(self) -> bool:
        return self.world > 1 or D.is_distributed()

    @property
    def main(self) -> bool:
        return self.rank == 0



def run_in_processes(config: TrainConfig, fn):
    """``fn(device)`` inside the torchrun process group (joined here, left on the way out, also on errors);
    ``config`` is validated here unless it already is (:meth:`TrainConfig.ensure_validated`)."""
    config.ensure_validated()
    device = resolve_device(config.device)
    owns_group = D.init_from_env(backend="nccl" if device.type == "cuda" else "gloo", timeout_s=config.dist_timeout)
    try:
        if D.is_distributed() and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", D.local_rank())
        return fn(device)
    except Exception as err:
        if D.is_distributed() and ED.is_collective_failure(err):
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ED.DistributedError(
                f"rank {D.rank()} of {D.world_size()}: a collective failed — another process crashed, was killed or "
                f"did not answer within --dist-timeout {config.dist_timeout:g} s (see the other ranks' output): "
                f"{first}") from err
        raise
    finally:
        if owns_group:
            D.cleanup()
