"""A sweep: a list of independent runs, each recorded on its own, executed anywhere, resumable after any stop.

A :class:`Run` is a fully resolved :class:`~multimix.engine.TrainConfig` plus
its role (a tuning candidate, or a test seed with its evaluation settings). Its
:attr:`Run.id` hashes both, so changing any setting gives another id and a
stale result is never reused.

When a run ends, :class:`Sweep` writes its record to ``OUT/runs/<id>.json``
(atomically: a temporary file, fsync, rename; the record is written last, after
the run's log ``<id>.log`` and, for a test run, its test embeddings
``<id>.npz``). Tables and the tuning choice are computed from these records
alone. Running the same sweep again skips every run with a completed record
(after SIGINT, SIGTERM, SIGKILL of the sweep, a reboot) and runs the missing and
failed ones; ``fresh=True`` deletes the records first. The sweep holds the
folder's :class:`~multimix.engine.folder.FolderLock` for its whole life, so a
second sweep into the same ``OUT`` is refused in one line.

SIGINT or SIGTERM stops the sweep within seconds: the executor ends its
workers, the finished records stay, and :class:`Interrupted` is raised after a
line saying how to resume (the command line exits 130 or 143).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ..engine import TrainConfig
from ..engine.checkpoint import write_json_atomic, write_text_atomic
from ..engine.folder import FolderLock
from ..engine.logging import ProgressBar
from ..engine.signals import StopRequest
from ..engine.trainer import Interrupted
from .executors import LocalExecutor, default_jobs

__all__ = ["Run", "Sweep", "RECORD_FORMAT", "RECORD_BYTES", "IGNORED_FIELDS", "read_record", "local_executor"]

RECORD_FORMAT = 1
RECORD_BYTES = 1_000_000  # a record larger than this is not ours: ignored (and the run done again)
# Config fields that do not change a run's result, so not its id: where it writes, its console output, its files.
IGNORED_FIELDS = ("out_dir", "progress", "checkpoint", "resume", "dist_timeout")


@dataclass(frozen=True)
class Run:
    """One run: a resolved config and its role (``{"kind": "tune"}`` or ``{"kind": "test", ...evaluation}``).

    ``label`` and ``ours`` say which table row it belongs to; they are not part of the id.
    """

    config: TrainConfig
    role: Dict[str, Any]
    label: str = ""
    ours: bool = False
    meta: Dict[str, Any] = field(default_factory=dict)  # the caller's bookkeeping (candidate index, ...)

    def identity(self) -> Dict[str, Any]:
        config = {k: v for k, v in self.config.to_dict().items() if k not in IGNORED_FIELDS}
        return {"format": RECORD_FORMAT, "config": config, "role": dict(self.role)}

    @property
    def id(self) -> str:
        """``<kind>-<method>-seed<seed>-<12 hex digits of the SHA-256 of the config and role>``."""
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True, default=str).encode()).hexdigest()[:12]
        return f"{self.role['kind']}-{self.config.method}-seed{self.config.seed}-{digest}"

    def payload(self) -> Dict[str, Any]:
        return {"id": self.id, "config": self.config.to_dict(), "role": dict(self.role), "label": self.label}


def read_record(path: Path, run: Run) -> Optional[Dict[str, Any]]:
    """The completed or failed record of ``run`` at ``path``, or None when it is missing or not a record of this
    run (too large, not JSON, another id or config: a file in the folder is untrusted)."""
    try:
        if path.stat().st_size > RECORD_BYTES:
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("id") != run.id or record.get("status") not in ("completed", "failed"):
        return None
    if record.get("identity") != json.loads(json.dumps(run.identity(), default=str)):
        return None
    if record["status"] == "completed":
        result = record.get("result")
        key = "val_accuracy" if run.role["kind"] == "tune" else "test_accuracy"
        if not isinstance(result, dict) or not isinstance(result.get(key), (int, float)):
            return None
    return record


def local_executor(jobs: Optional[int] = None, threads: int = 1) -> LocalExecutor:
    """The default executor: ``jobs`` processes (default :func:`default_jobs`: one per usable core), each with
    ``threads`` torch threads (default 1: a run's floating-point sums, hence its record, do not depend on ``jobs``;
    its test accuracy did not in our measurements either way)."""
    return LocalExecutor(jobs or default_jobs(1 << 30), threads)


class Sweep:
    """Execute runs into ``out_dir`` with ``executor``, keeping one record per run; use as a context manager.

    ``progress`` shows one bar on stderr (runs done of total, failures, elapsed, ETA) when stderr is a terminal.
    """

    def __init__(self, out_dir: Path, executor: Any = None, *, fresh: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print):
        self.out = Path(out_dir)
        self.runs_dir = self.out / "runs"
        self.executor = executor if executor is not None else local_executor()
        self.fresh, self.log = fresh, log
        self.progress = progress and sys.stderr.isatty()
        self.lock = FolderLock(self.out, "sweep")
        self.stop = StopRequest()  # SIGINT/SIGTERM for the sweep's whole life: between runs too, they stop it cleanly
        self.trained: List[str] = []  # ids executed by this sweep (completed or failed), in the order they ended

    def __enter__(self) -> "Sweep":
        self.lock.acquire()
        self.stop.__enter__()
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            if self.fresh:  # only our own files: records, logs, embeddings
                for path in self.runs_dir.glob("*"):
                    if path.suffix in (".json", ".log", ".npz") and path.is_file():
                        path.unlink()
            for stale in self.runs_dir.glob(".*.tmp*"):  # a record half-written by a killed sweep
                stale.unlink(missing_ok=True)
        except BaseException:
            self.stop.__exit__()
            self.lock.release()
            raise
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        self.stop.__exit__()
        self.lock.release()
        if kind is None and self.stop.signum is not None:  # a signal after the last run: still a stop
            raise Interrupted(self.stop.signum)

    def record_path(self, run: Run) -> Path:
        return self.runs_dir / f"{run.id}.json"

    def records(self, runs: Sequence[Run]) -> Dict[str, Dict[str, Any]]:
        """The records on disk of ``runs`` (completed or failed), by id."""
        found = {}
        for run in runs:
            record = read_record(self.record_path(run), run)
            if record is not None:
                found[run.id] = record
        return found

    def run(self, runs: Sequence[Run], what: str = "runs") -> Dict[str, Dict[str, Any]]:
        """Execute every run without a completed record; returns all runs' records by id (a run that could not
        finish has a failed record). Raises :class:`Interrupted` on SIGINT/SIGTERM, after the workers ended."""
        if not self.lock.held:
            raise RuntimeError("use the Sweep as a context manager (with Sweep(...) as sweep:)")
        unique = list({run.id: run for run in runs}.values())
        records = self.records(unique)
        todo = [run for run in unique if records.get(run.id, {}).get("status") != "completed"]
        retried = sum(run.id in records for run in todo)
        done_before = len(unique) - len(todo)
        self.log(f"{what}: {len(unique)} runs, {done_before} already recorded in {self.runs_dir}"
                 + (f", {retried} failed before and tried again" if retried else "")
                 + (f"; running {len(todo)} on {self.executor.describe()}" if todo else ""))
        if not todo and self.stop.signum is None:
            return records
        by_id = {run.id: run for run in todo}
        bar = ProgressBar(len(todo), self.progress, desc=what)
        failures, start = [0], time.perf_counter()

        def done(payload: Dict[str, Any], result: Dict[str, Any]) -> None:
            run = by_id[payload["id"]]
            records[run.id] = self.write(run, result)
            self.trained.append(run.id)
            failures[0] += result["status"] == "failed"
            bar.step(failed=str(failures[0]))
            with bar.printing():
                self.log(self.describe(run, records[run.id], time.perf_counter() - start))

        with self.stop as stop:
            try:
                self.executor.execute([run.payload() for run in todo], done, lambda: stop.signum is not None)
            finally:
                bar.close()
            if stop.signum is not None:
                finished = sum(records.get(run.id, {}).get("status") == "completed" for run in unique)
                self.log(f"\n{stop.name}: the sweep stopped; {finished} of {len(unique)} {what} are recorded in "
                         f"{self.runs_dir}. Run the same command again to run only the missing ones.")
                raise Interrupted(stop.signum)
        return records

    def write(self, run: Run, result: Dict[str, Any]) -> Dict[str, Any]:
        """Write the run's log, embeddings and record (last, atomically); returns the record."""
        result = dict(result)
        log = result.pop("log", "") or ""
        embeddings = result.pop("embeddings", None)
        write_text_atomic(log, self.runs_dir / f"{run.id}.log")
        if embeddings is not None:
            path = self.runs_dir / f"{run.id}.npz"
            tmp = self.runs_dir / f".{run.id}.tmp{os.getpid()}.npz"
            np.savez(tmp, **embeddings)
            os.replace(tmp, path)
        record = {**result, "id": run.id, "label": run.label, "ours": run.ours, "role": dict(run.role),
                  "executor": self.executor.name, "identity": run.identity(), "config": run.config.to_dict()}
        write_json_atomic(record, self.record_path(run))
        return json.loads(json.dumps(record, default=str))

    def embeddings(self, run: Run) -> Optional[Dict[str, np.ndarray]]:
        """A test run's saved embeddings and labels (read without pickle), or None."""
        path = self.runs_dir / f"{run.id}.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                return {"embeddings": data["embeddings"].astype(np.float32), "labels": data["labels"]}
        except (OSError, ValueError, KeyError):
            return None

    @staticmethod
    def describe(run: Run, record: Dict[str, Any], elapsed: float) -> str:
        name = f"{run.label or run.config.method:30s} seed {run.config.seed}"
        if record["status"] == "failed":
            return f"{name}: FAILED ({record.get('error')})"
        result = record["result"]
        accuracy = (f"validation accuracy {result['val_accuracy']:.2f}%" if "val_accuracy" in result
                    else f"test accuracy {result['test_accuracy']:.2f}%")
        return f"{name}: {accuracy}  ({record.get('time_s', 0):.1f} s on {record.get('host')}, {elapsed:.0f} s total)"
