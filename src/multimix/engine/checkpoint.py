"""Checkpoints: written atomically, read with clear errors.

A checkpoint is a ``torch.save``-d dict with at least ``model`` and ``epoch``;
the trainer adds the optimiser, scheduler, EMA teacher, config and history.
:func:`save_atomic` writes to a temporary file in the same directory, fsyncs
it and renames it over the target, so a crash or a full disk leaves the
previous checkpoint intact and no temporary file behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict

import torch

__all__ = ["CheckpointError", "save_atomic", "write_text_atomic", "write_json_atomic", "load_checkpoint", "load_into"]


class CheckpointError(ValueError):
    """A checkpoint is unreadable or does not match the run."""


def _atomic(path: Path, write: Callable[[Any], None], mode: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_atomic(obj: Dict[str, Any], path: Path) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary file, fsync and rename."""
    _atomic(path, lambda f: torch.save(obj, f), "wb")


def write_text_atomic(text: str, path: Path) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync and rename."""
    _atomic(path, lambda f: f.write(text), "w")


def write_json_atomic(obj: Any, path: Path) -> None:
    """``json.dumps(obj, indent=2)`` to ``path``, atomically."""
    write_text_atomic(json.dumps(obj, indent=2), path)


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


def load_into(module: Any, state: Dict[str, Any], what: str, path: Path) -> None:
    """``module.load_state_dict(state)``; a mismatch is a :class:`CheckpointError` naming ``what`` and ``path``."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as err:
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        detail = " ".join(lines[:2])  # torch's headline and the first tensor that differs
        raise CheckpointError(f"checkpoint {path} does not match this run's {what}: {detail}") from err
