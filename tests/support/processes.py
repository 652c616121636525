"""Waiting on real processes in tests (no fixed sleeps)."""

from __future__ import annotations

import time
from collections.abc import Iterable

import psutil


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has ended: only its parent's wait is missing)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_all_gone(pids: Iterable[int], timeout: float) -> float:
    """Wait until none of ``pids`` runs; returns the seconds it took, AssertionError after
    ``timeout``."""
    pids = list(pids)
    start = time.monotonic()
    delay = 0.002
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"processes {left} still run after {timeout} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
