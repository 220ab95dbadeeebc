"""One writer per output folder: an exclusive advisory lock held for a run's (or a sweep's) whole life.

Two processes writing one folder lose results without a word (one's
``config.json`` beside the other's ``last.pt``), and a second process cleaning
"stale" temporary files deletes the first one's live ``.last.pt.tmp<pid>``.
:class:`FolderLock` makes the folder's writer unique: it takes an exclusive
``flock`` on ``FOLDER/.lock`` and writes its pid and host into it, so that a
second process is refused in one line naming the holder.

The kernel releases a ``flock`` when its process ends, however it ends
(SIGKILL, a crash, a power loss), so a lock file left by a dead process is
simply taken over: locking it succeeds. The holder removes the file when it
releases; a process that opened the file just before that removal would hold a
lock on an unlinked file, so after locking, the holder checks that the path
still names the file it locked, and retries otherwise.

``flock`` locks are advisory and per machine on most network file systems
without lock support; on NFSv4 Linux maps them to POSIX byte-range locks that
the server enforces across clients.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import Any, Optional

__all__ = ["FolderLock", "FolderBusyError", "LOCK_NAME"]

LOCK_NAME = ".lock"
# Bytes of a lock file read for the holder's description (the file is ours, but a user may have written anything).
HOLDER_BYTES = 200


class FolderBusyError(OSError):
    """Another live process holds the folder's lock."""


class FolderLock:
    """Context manager: hold an exclusive lock on ``folder`` (created if needed) until :meth:`release`.

    ``what`` names the holder's kind, written into the lock file for the
    refusals of others (``"run"``, ``"bench"``, ``"sweep"``). Refusal is
    immediate (no waiting): :class:`FolderBusyError` naming the holder's kind,
    pid and host.
    """

    def __init__(self, folder: Path, what: str = "run"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> "FolderLock":
        if self.held:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                    raise
                raise FolderBusyError(f"{self.folder} is in use by {self.holder()}; wait for it to end, or choose "
                                      "another --out-dir") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed the file between our open and our lock: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"a {self.what} (pid {os.getpid()} on host {socket.gethostname()})\n".encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def holder(self) -> str:
        """The holder's ``a KIND (pid N on host H)`` as it wrote it (bounded), or a placeholder."""
        try:
            with open(self.path, "rb") as f:
                text = f.read(HOLDER_BYTES).decode("utf-8", "replace").strip()
        except OSError:
            text = ""
        return text.splitlines()[0][:HOLDER_BYTES] if text else "another process (holder unknown)"

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: nobody can take over the file we are deleting
        except FileNotFoundError:
            pass
        os.close(self.fd)  # releases the lock
        self.fd = None

    def __del__(self) -> None:  # a holder dropped without release (a prepared trainer never run)
        try:
            self.release()
        except Exception:  # at interpreter exit os may be gone; the kernel releases the lock anyway
            pass

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
