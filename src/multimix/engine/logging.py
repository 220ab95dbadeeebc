"""What a run reports while it trains: per-epoch metrics files, TensorBoard, a progress bar.

Display never changes the computation: the progress bar is driven by hand
(``update`` per step) rather than wrapping the data loader, so the data order
and every random draw are the same with and without it.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, ContextManager, Dict, List, Optional

from .checkpoint import json_safe, write_text_atomic

__all__ = ["MetricsLogger", "ProgressBar", "format_row"]


class MetricsLogger:
    """Per-epoch metrics to metrics.jsonl and metrics.csv (rewritten atomically from the whole history, so
    they always agree with the checkpoint), and the newest row to TensorBoard when it is installed."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.out_dir, self.enabled, self.writer = Path(out_dir), enabled, None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))
            except Exception:  # tensorboard not installed
                self.writer = None

    def write(self, history: List[Dict[str, Any]], new_row: bool = True) -> None:
        """Rewrite both files from ``history``; send its last row to TensorBoard when ``new_row``."""
        if not self.enabled:
            return
        # Strict JSON: a NaN loss is written as null (json.dumps would write the invalid token NaN).
        write_text_atomic("".join(json.dumps(json_safe(row), allow_nan=False) + "\n" for row in history),
                          self.out_dir / "metrics.jsonl")
        columns = list(dict.fromkeys(key for row in history for key in row))
        lines = [",".join(columns)] + [",".join(str(row.get(key, "")) for key in columns) for row in history]
        write_text_atomic("\n".join(lines) + "\n" if history else "", self.out_dir / "metrics.csv")
        if self.writer is not None and new_row and history:
            row = history[-1]
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressBar:
    """A tqdm bar over ``total`` steps, or nothing when disabled or tqdm is missing."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.bar: Optional[Any] = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def step(self, **postfix: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**postfix, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def printing(self) -> ContextManager[Any]:
        """A block that prints lines while the bar shows: the bar is cleared first and drawn again below them
        (tqdm's external write mode), so lines and bar do not overwrite each other on a terminal."""
        if self.bar is None:
            return contextlib.nullcontext()
        return type(self.bar).external_write_mode()


def format_row(row: Dict[str, Any]) -> str:
    """``key=value`` pairs of a metrics row, floats to 4 significant digits."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
