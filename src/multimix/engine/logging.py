"""What a run reports while it trains: per-epoch metrics files, TensorBoard, a progress bar.

Display never changes the computation: the progress bar is driven by hand
(``update`` per step) rather than wrapping the data loader, so the data order
and every random draw are the same with and without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

__all__ = ["MetricsLogger", "ProgressBar", "format_row"]


class MetricsLogger:
    """Per-epoch metrics to metrics.jsonl and metrics.csv, and to TensorBoard when it is installed."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.out_dir, self.enabled, self.writer = Path(out_dir), enabled, None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))
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


def format_row(row: Dict[str, Any]) -> str:
    """``key=value`` pairs of a metrics row, floats to 4 significant digits."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
