"""A file lock that works between threads and between processes.

The git clone cache and the virtualenv cache share their folders between every device of a
device server (threads) and every device server on the host (processes); this lock serialises
their slow, shared work (fetching, building) and marks environments in use. The two small
helpers at the end serve the same caches' least-recently-used eviction.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path

_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _thread_lock(path: Path) -> threading.Lock:
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(str(path), threading.Lock())


class FileLock:
    """An exclusive or shared lock on ``path`` that works between threads and processes.

    ``flock`` locks belong to an open file description, so every holder opens the file itself
    and conflicting holders exclude each other whether they are threads or processes; the kernel
    drops the lock if the holder dies. Exclusive waiters in one process queue on a
    ``threading.Lock`` first (no polling); only waiting for another *process* polls, with a short
    back-off, which is fine for the rare, slow operations guarded here (fetching, building).
    """

    def __init__(self, path: Path, shared: bool = False):
        self.path = Path(path)
        self.shared = shared
        self._fd: int | None = None
        self._thread_lock = None if shared else _thread_lock(self.path)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock; wait at most ``timeout`` seconds (None: forever, 0: try once).

        Returns False when the lock could not be taken in time.
        """
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        if self._thread_lock is not None:
            ok = (
                self._thread_lock.acquire()
                if deadline is None
                else self._thread_lock.acquire(timeout=max(deadline - time.monotonic(), 0.0))
            )
            if not ok:
                return False
        try:
            fd = self._lock_file(deadline)
        except BaseException:
            fd = None
            raise
        finally:
            if fd is None and self._thread_lock is not None:
                self._thread_lock.release()
        if fd is None:
            return False
        self._fd = fd
        return True

    def _lock_file(self, deadline: float | None) -> int | None:
        """flock the file (polling with back-off); the open descriptor, or None on timeout."""
        mode = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        delay = 0.005
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                while True:
                    try:
                        fcntl.flock(fd, mode)
                        break
                    except BlockingIOError:
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            os.close(fd)
                            return None
                        time.sleep(delay if remaining is None else min(delay, remaining))
                        delay = min(delay * 2, 0.2)
            except BaseException:
                os.close(fd)
                raise
            if _same_file(fd, self.path):
                return fd
            # The holder we waited for deleted the lock file: lock the new one instead.
            os.close(fd)

    def unlink(self) -> None:
        """Delete the lock file while holding the lock (waiters then lock a fresh file)."""
        if self._fd is None:
            raise RuntimeError(f"lock {self.path} must be held to delete it")
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        """Drop the lock (a no-op when it is not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
            if self._thread_lock is not None:
                self._thread_lock.release()

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def touch(path: Path) -> None:
    """Set ``path``'s modification time to now, precisely: it records a lease's last use.

    An explicit time rather than ``utime``'s default, which the kernel takes from a coarse clock
    (a few ms): two uses in quick succession (uv builds an environment in milliseconds) would
    tie and a least-recently-used order would fall back to names.
    """
    now = time.time_ns()
    with contextlib.suppress(OSError):  # gone with an eviction: nothing to record
        os.utime(path, ns=(now, now))


def tree_size(root: Path) -> int:
    """Bytes of every file below ``root`` (links not followed): what a cached tree costs."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total
