"""Checkpoints: written atomically, read with clear errors.

A checkpoint is a ``torch.save``-d dict with at least ``model`` and ``epoch``;
the trainer adds the optimiser, scheduler, EMA teacher, config and history.
:func:`save_atomic` writes to a temporary file in the same directory, fsyncs
it and renames it over the target, so a crash or a full disk leaves the
previous checkpoint intact and no temporary file behind.

A checkpoint file is untrusted input: a pickle can carry code that runs while
it is read. :func:`load_checkpoint` therefore reads with
``torch.load(weights_only=True)``, whose unpickler builds only tensors and
plain containers and numbers, and refuses anything else in one line. Everything
the trainer writes is made of those types only (tested for every kind of run).

JSON files are written strictly (``allow_nan=False``): a non-finite number
(a NaN test loss) becomes ``null``, so every file stays valid JSON.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Dict

import torch

__all__ = ["CheckpointError", "save_atomic", "write_text_atomic", "write_json_atomic", "json_safe", "load_checkpoint",
           "load_into"]


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


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) replaced by ``None``: what strict JSON can hold."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    return obj


def write_json_atomic(obj: Any, path: Path) -> None:
    """``json.dumps(obj, indent=2)`` to ``path``, atomically; non-finite numbers become ``null``."""
    write_text_atomic(json.dumps(json_safe(obj), indent=2, allow_nan=False), path)


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Read a checkpoint, turning torch's low-level failures into a clear :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's restricted unpickler met a type it does not build, or garbage
        if "global" not in str(err).lower():
            raise CheckpointError(f"checkpoint {path} is corrupted or not a multimix checkpoint "
                                  f"({type(err).__name__})") from err
        raise CheckpointError(f"checkpoint {path} is not a safe multimix checkpoint: it holds objects other than "
                              "tensors, numbers, strings and containers, and is not loaded (loading it could run "
                              "code)") from None
    except Exception as err:  # truncated zip, wrong format: both mean "unreadable"
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
