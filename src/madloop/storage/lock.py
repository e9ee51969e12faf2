"""An exclusive lock on a run or sweep directory for as long as a process writes it.

``flock`` on ``DIR/.madloop.lock``: the kernel releases it when the process dies, so a crash never
leaves a stale lock, and a second process is refused at once with who holds it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

from madloop.storage.layout import LOCK


class DirectoryLocked(RuntimeError):
    """The directory is in use by another process, or cannot be used; the message says which."""


class DirectoryLock:
    """``with DirectoryLock(path, what="sweep"):`` holds ``path``/.madloop.lock exclusively."""

    def __init__(self, path: str | os.PathLike, *, what: str = "run") -> None:
        self.path = Path(path) / LOCK
        self.what = what
        self.fh: IO[str] | None = None

    def acquire(self) -> DirectoryLock:
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+")
        except OSError as err:
            raise DirectoryLocked(
                f"{self.path.parent} cannot be used as a {self.what} directory "
                f"({err.strerror or err})"
            ) from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise DirectoryLocked(
                f"{self.path.parent} is being written by another madloop {self.what} ({holder}); "
                "wait for it or choose another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self.fh = fh
        return self

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def release(self) -> None:
        if self.fh is not None:
            self.fh.close()  # closing releases the lock
            self.fh = None
