"""SIGINT and SIGTERM as a request to stop, checked by the training loop between steps.

A signal that raises where it lands (Python's default for SIGINT) can surface
inside ``torch.save`` or a finaliser and leave a half-written file or a
crash; SIGTERM (what SLURM, Kubernetes and most schedulers send before a kill)
ends the process at once by default. Here both only set a flag; the trainer
finishes the step it is in, saves, and stops. The handlers are installed even
when the process started with SIGINT ignored (a job launched with ``&``), and
the previous ones are restored on exit, since the trainer is also a library
function. A second SIGINT while a stop is pending raises ``KeyboardInterrupt``
at once (for a user who really wants out).

``timeout``, SLURM's ``scancel`` and systemd signal the whole process group,
data-loader workers included. A worker that died of SIGTERM would end the
run with "DataLoader worker killed" before the main process could save, so
workers leave shutdown to the main process: they start with SIGINT and SIGTERM
blocked (:func:`stop_signals_blocked` around the fork) and then ignore them
(:func:`worker_ignores_stop_signals`, their ``worker_init_fn``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Dict, Iterator, Optional

__all__ = ["StopRequest", "Interrupted", "exit_status", "stop_signals_blocked", "worker_ignores_stop_signals",
           "is_worker_killed"]


class Interrupted(Exception):
    """SIGINT or SIGTERM asked the run to stop (raised between steps, never inside a write)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.name = signal.Signals(signum).name



def is_worker_killed(err: BaseException) -> bool:
    """Whether ``err`` is the DataLoader's report of a worker process ended by a signal."""
    return isinstance(err, RuntimeError) and "DataLoader worker" in str(err) and "killed by signal" in str(err)



def exit_status(signum: int) -> int:
    """The shell's exit status for a process ended by ``signum``: 128 + signum (130 SIGINT, 143 SIGTERM)."""
    return 128 + int(signum)


class StopRequest:
    """Context manager: while active, SIGINT and SIGTERM set :attr:`signum` instead of ending the process.

    Outside the main thread (where Python cannot install handlers) it installs
    nothing and :attr:`signum` stays None. Entering it again while active
    (set-up, then the run) keeps the handlers; the outermost exit restores the
    previous ones. A signal caught in one block stays in :attr:`signum`.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.previous: Dict[int, Any] = {}
        self.depth = 0

    @property
    def name(self) -> Optional[str]:
        return None if self.signum is None else signal.Signals(self.signum).name

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        self.depth += 1
        if self.depth == 1 and threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.depth -= 1
        if self.depth:
            return
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.previous.clear()


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM blocked in this thread (pending, delivered on exit): processes forked inside inherit the
    block, so a signal to the whole group cannot end them before they ignore it."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, StopRequest.SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def worker_ignores_stop_signals(worker_id: int) -> None:
    """A data-loader worker's ``worker_init_fn``: ignore SIGINT and SIGTERM (the main process stops the run and
    then ends its workers)."""
    for signum in StopRequest.SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, StopRequest.SIGNALS)
