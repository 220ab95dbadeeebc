"""One run of a sweep, in whichever process executes it: train, evaluate, return what its record holds.

:func:`perform` is the only function an executor calls (a local worker
process or a Ray task). It takes a plain payload (the run's id, its config as
a mapping, its role, the torch thread count) and returns a plain result: the
record's fields, the run's captured output (``log``) and, for a test run, the
test embeddings for the plots. It never writes into the sweep's folder: the
sweep writes records where it runs, so a run on another machine of a Ray
cluster needs no shared file system.

A run that raises (settings its data refuses, a non-finite loss) comes back
as ``status: failed`` with its one-line error; a run stopped by SIGINT/SIGTERM
comes back as ``status: interrupted`` and is never recorded.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import tempfile
import time
import traceback
from typing import Any, Dict

import numpy as np
import torch

from ..engine import Trainer, TrainConfig
from ..engine.trainer import Interrupted
from ..sampling import cpu_route

__all__ = ["perform", "finished", "data_sizes", "one_line", "LOG_LIMIT", "EMBEDDINGS_KEPT"]

LOG_LIMIT = 200_000  # characters of a run's output kept in its log (the end of it)
EMBEDDINGS_KEPT = 2000  # test examples whose embeddings a test run keeps for the plot


def finished(summary: Dict[str, Any]) -> Dict[str, Any]:
    """``summary`` of a completed run; a run stopped by SIGINT/SIGTERM stops the whole experiment the same way."""
    if summary["status"] == "interrupted":
        import signal

        raise Interrupted(getattr(signal, summary.get("signal", "SIGINT")))
    return summary


def data_sizes(splits) -> Dict[str, int]:
    """The number of training, validation and test examples a run used."""
    return {"num_train": len(splits.train), "val_size": len(splits.val) if splits.val is not None else 0,
            "num_test": len(splits.test)}


def one_line(err: BaseException, limit: int = 300) -> str:
    """``Type: message``, first line only, at most ``limit`` characters."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    line = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return line if len(line) <= limit else line[:limit - 1] + "…"


def train_and_evaluate(config: TrainConfig, role: Dict[str, Any]) -> Dict[str, Any]:
    """Train ``config`` (checkpoints off, in a temporary folder); a test run is also evaluated on the test split."""
    from ..evaluation.report import report  # here: evaluation is only needed by test runs

    with tempfile.TemporaryDirectory(prefix="multimix-run-") as scratch:
        trainer = Trainer(TrainConfig(**{**config.to_dict(), "out_dir": scratch, "checkpoint": False,
                                         "progress": False}))
        summary = finished(trainer.run())
    selected = summary["selected"]  # the last epoch, or the best validation epoch with select="best_val"
    result: Dict[str, Any] = {"sizes": data_sizes(trainer.splits), "epochs_completed": summary["epochs_completed"],
                              "device": str(trainer.device)}
    if role["kind"] == "tune":
        result["result"] = {"val_accuracy": selected["val_accuracy"], "epoch": selected["epoch"]}
        return result
    extra = report(trainer.model, trainer.splits, pgd_steps=role["pgd_steps"], attack_limit=role["attack_limit"],
                   device=trainer.device, seed=config.seed)
    predictions = extra.pop("_predictions")
    result["result"] = {"test_accuracy": selected["test_accuracy"], "epoch": selected["epoch"],
                        "test_accuracy_last": summary["final"]["test_accuracy"],
                        **{k: float(v) for k, v in extra.items() if isinstance(v, (int, float))}}
    result["embeddings"] = {
        "embeddings": predictions["embeddings"][:EMBEDDINGS_KEPT].float().numpy().astype(np.float16),
        "labels": predictions["labels"][:EMBEDDINGS_KEPT].numpy().astype(np.int64)}
    return result


def perform(payload: Dict[str, Any]) -> Dict[str, Any]:
    """Execute one run described by ``payload`` (``id``, ``config``, ``role``, ``threads``) and return its result.

    Output printed during the run (also warnings) is captured into the
    result's ``log`` (its last :data:`LOG_LIMIT` characters).
    """
    torch.set_num_threads(int(payload["threads"]))
    started = time.time()
    base = {"id": payload["id"], "host": socket.gethostname(), "pid": os.getpid(), "threads": torch.get_num_threads(),
            "started_at": started, "torch": torch.__version__,
            "sampler": cpu_route()}  # the CPU route of Λ: the fused and the eager sampler draw different streams
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("default")
                outcome = train_and_evaluate(TrainConfig.from_dict(payload["config"], "run config"), payload["role"])
        outcome["status"] = "completed"
    except Interrupted as stop:
        outcome = {"status": "interrupted", "error": stop.name}
    except Exception as err:  # the run's own failure: recorded, the sweep goes on
        log.write(traceback.format_exc())
        outcome = {"status": "failed", "error": one_line(err)}
    text = log.getvalue()
    return {**base, **outcome, "time_s": time.time() - started, "ended_at": time.time(), "log": text[-LOG_LIMIT:]}
