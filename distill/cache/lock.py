"""One writer per cache: an advisory `flock` on `<cache>/.lock`.

Two `distill generate` runs pointed at the same cache would interleave shards; `gc` must not
delete the temp file of a live writer. The kernel drops the lock when its process dies (kill -9
included), so a crashed writer never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = ".lock"


class WriterLock:
    """Context manager holding an exclusive lock on a cache directory.

    With `wait=False`, entering yields False instead of blocking when another process holds it.
    """

    def __init__(self, directory: Path, wait: bool = False) -> None:
        self.path = Path(directory) / LOCK_NAME
        self.wait = wait
        self._fd: int | None = None

    def acquire(self) -> bool:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            return False
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
