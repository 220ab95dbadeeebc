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
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Dict, Optional

__all__ = ["StopRequest", "exit_status"]


def exit_status(signum: int) -> int:
    """The shell's exit status for a process ended by ``signum``: 128 + signum (130 SIGINT, 143 SIGTERM)."""
    return 128 + int(signum)


class StopRequest:
    """Context manager: while active, SIGINT and SIGTERM set :attr:`signum` instead of ending the process.

    Outside the main thread (where Python cannot install handlers) it installs
    nothing and :attr:`signum` stays None.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.previous: Dict[int, Any] = {}

    @property
    def name(self) -> Optional[str]:
        return None if self.signum is None else signal.Signals(self.signum).name

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.previous.clear()
