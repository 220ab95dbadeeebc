"""Where a sweep's runs execute: worker processes on this machine (the default) or a Ray cluster.

Both take the runs' payloads (:func:`multimix.experiments.runner.perform`'s
input), call ``done(payload, result)`` as each run ends, in whatever order
runs end, and stop everything within seconds when ``stop()`` turns true (the
sweep's SIGINT/SIGTERM). Neither writes anything: the sweep records results.

:class:`LocalExecutor` — no server, no network socket. One fresh process per
run, forked from a ``forkserver`` that has imported torch and multimix once
(a fork of a process that never started a thread or touched CUDA, so it is
safe for torch, and a run starts in milliseconds instead of re-importing
torch). ``concurrent.futures.ProcessPoolExecutor`` is not used because the
death of one of its workers (SIGKILL, the out-of-memory killer) breaks the
whole pool, fails every queued run and does not say which run was on the dead
worker; with a process per run the dead process names its run, which is
retried once and then recorded as failed, and the other runs go on. Each
process sets its own torch thread count. Results come back over a pipe
(``os.pipe``), and the forkserver talks to this process over a Unix-domain
socket in a private temporary folder: nothing listens on a network interface.

:class:`RayExecutor` — ``ray`` core tasks on a running cluster
(``ray.init(address=...)``), one task per run with ``num_cpus``/``num_gpus``
as asked and ``max_retries=1`` (Ray retries a task whose worker died once, then
reports it). Ray core tasks, not Ray Tune: the runs are a fixed list with
records and tables of our own, and Tune's searchers, schedulers and trial
folders would add a second results format without doing anything needed here.
Ray is imported only when this executor is asked for.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
import time
from collections import deque
from multiprocessing.connection import wait
from typing import Any, Callable, Dict, Optional, Sequence

__all__ = ["LocalExecutor", "RayExecutor", "default_jobs", "usable_cpus", "KILL_GRACE_S"]

KILL_GRACE_S = 3.0  # seconds a stopped worker gets to end before SIGKILL
POLL_S = 0.25  # how often a waiting sweep looks at its stop flag
Done = Callable[[Dict[str, Any], Dict[str, Any]], None]


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's or taskset's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_jobs(runs: int) -> int:
    """Parallel runs by default: one per usable core, single-threaded each.

    Measured on a 2-core machine: two single-threaded processes finish two small trainings about 1.9× sooner than one
    process with two threads (small networks do not keep two threads busy).
    """
    return max(1, min(usable_cpus(), runs))


def worker_main(payload: Dict[str, Any], writer, sweep: int) -> None:
    """A run's process: own process group (a terminal's Ctrl-C reaches the sweep, which ends the workers), ends when
    the sweep's process ``sweep`` ends (even by SIGKILL), runs, and sends the result back."""
    os.setpgrp()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    threading.Thread(target=exit_with, args=(sweep,), daemon=True).start()
    for key, value in payload.get("env", {}).items():
        os.environ[key] = value
    from .runner import perform

    writer.send(perform(payload))
    writer.close()
    os._exit(0)  # the result is sent: skip the interpreter's shutdown (seconds for a process that imported torch)


def exit_with(pid: int) -> None:
    """End this process as soon as process ``pid`` ends: a pidfd becomes readable then (Linux); elsewhere, poll.

    Watching the parent is not enough: a worker's parent is the forkserver, which outlives a killed sweep by the
    seconds its interpreter takes to shut down.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd (not Linux, or an old kernel)
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass
    select.select([fd], [], [])
    os._exit(1)


class LocalExecutor:
    """``jobs`` runs at a time on this machine, each in its own process with ``threads`` torch threads."""

    name = "local"

    def __init__(self, jobs: int, threads: int, gpus: Sequence[int] = ()):
        if jobs < 1 or threads < 1:
            raise ValueError(f"jobs and threads must be >= 1, got {jobs} and {threads}")
        self.jobs, self.threads, self.gpus = jobs, threads, list(gpus)
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(["multimix.experiments.runner"])

    def describe(self) -> str:
        return f"{self.jobs} local worker process(es), {self.threads} torch thread(s) each"

    def execute(self, payloads: Sequence[Dict[str, Any]], done: Done, stop: Callable[[], bool]) -> None:
        queue = deque((payload, 1) for payload in payloads)
        active: Dict[Any, Dict[str, Any]] = {}  # reader -> {process, payload, attempt, slot}
        free_slots = list(range(self.jobs))
        try:
            while queue or active:
                while queue and free_slots and not stop():
                    payload, attempt = queue.popleft()
                    slot = free_slots.pop(0)
                    active.update(self.start(payload, attempt, slot))
                if stop():
                    return
                ready = wait([*active, *(a["process"].sentinel for a in active.values())], timeout=POLL_S)
                for reader in list(active):
                    entry = active[reader]
                    process = entry["process"]
                    if reader not in ready and process.sentinel not in ready:
                        continue
                    result = self.receive(reader, process)
                    if result is None and process.is_alive():
                        continue
                    del active[reader]
                    free_slots.append(entry["slot"])
                    process.join()
                    reader.close()
                    if result is not None and result.get("status") != "interrupted":
                        result["attempts"] = entry["attempt"]
                        done(entry["payload"], result)
                    elif entry["attempt"] < 2:  # killed (SIGKILL, out of memory) or stopped from outside: once more
                        queue.appendleft((entry["payload"], entry["attempt"] + 1))
                    else:
                        cause = (f"the worker process ended by {signal.Signals(-process.exitcode).name}"
                                 if process.exitcode is not None and process.exitcode < 0
                                 else f"the worker process ended with exit status {process.exitcode}")
                        done(entry["payload"], {"id": entry["payload"]["id"], "status": "failed", "attempts": 2,
                                                "error": f"{cause}, twice (killed, e.g. out of memory?)"})
        finally:
            self.end(active)

    def start(self, payload: Dict[str, Any], attempt: int, slot: int) -> Dict[Any, Dict[str, Any]]:
        payload = {**payload, "threads": self.threads}
        if self.gpus:
            payload["env"] = {"CUDA_VISIBLE_DEVICES": str(self.gpus[slot % len(self.gpus)])}
        reader, writer = self.context.Pipe(duplex=False)
        process = self.context.Process(target=worker_main, args=(payload, writer, os.getpid()),
                                       name=f"multimix-run-{payload['id']}", daemon=False)
        process.start()
        writer.close()
        return {reader: {"process": process, "payload": payload, "attempt": attempt, "slot": slot}}

    @staticmethod
    def receive(reader, process) -> Optional[Dict[str, Any]]:
        """The worker's result if it sent one (None when it died without sending)."""
        try:
            if reader.poll():
                return reader.recv()
        except (EOFError, OSError):
            return None
        return None

    @staticmethod
    def end(active: Dict[Any, Dict[str, Any]]) -> None:
        """SIGTERM every remaining worker, SIGKILL those still alive after :data:`KILL_GRACE_S`."""
        processes = [entry["process"] for entry in active.values()]
        for process in processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + KILL_GRACE_S
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        for reader in active:
            reader.close()


class RayExecutor:
    """One Ray task per run on the cluster at ``address`` (``auto``: the one this machine belongs to)."""

    name = "ray"

    def __init__(self, address: str, cpus_per_run: float = 1, gpus_per_run: float = 0):
        if not cpus_per_run > 0 or not gpus_per_run >= 0:
            raise ValueError(f"--cpus-per-run must be > 0 and --gpus-per-run >= 0, got {cpus_per_run} and "
                             f"{gpus_per_run}")
        try:
            import ray  # noqa: F401
        except ImportError as err:
            raise ImportError("--ray needs Ray: pip install 'multimix[cluster]'") from err
        self.address, self.cpus, self.gpus = address, cpus_per_run, gpus_per_run

    def describe(self) -> str:
        return f"Ray cluster at {self.address}, {self.cpus:g} CPU(s) and {self.gpus:g} GPU(s) per run"

    def execute(self, payloads: Sequence[Dict[str, Any]], done: Done, stop: Callable[[], bool]) -> None:
        import ray
        from ray.exceptions import RayError

        from .runner import perform

        ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        try:
            task = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=1, retry_exceptions=False)(perform)
            threads = max(1, int(self.cpus))
            pending = {task.remote({**payload, "threads": threads}): payload for payload in payloads}
            while pending:
                if stop():
                    for ref in pending:
                        ray.cancel(ref, force=True)
                    return
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S)
                for ref in ready:
                    payload = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                        result["attempts"] = None  # Ray retried a lost worker by itself; it does not say how often
                    except RayError as err:  # the task's worker or node died twice
                        from .runner import one_line

                        result = {"id": payload["id"], "status": "failed", "attempts": 2, "error": one_line(err)}
                    if result.get("status") != "interrupted":
                        done(payload, result)
        finally:
            ray.shutdown()

