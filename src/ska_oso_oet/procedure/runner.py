"""Child commands of a preparation (git, uv, pip, virtualenv) with a deadline and a cancel.

Each command runs in a session of its own, so that a cancel or a timeout kills it together
with whatever it started (``git-remote-https``, ``ssh``, pip's build backends) in one
``killpg``. A cancel is a :class:`threading.Event`: whoever owns the preparation (the engine,
on a stop or at shutdown) sets it and the command is killed within :data:`CANCEL_POLL`.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: How often a running command looks at its cancel event (seconds).
CANCEL_POLL = 0.05


@dataclass
class Completed:
    """How a command ended."""

    status: int | None
    #: Standard output, when captured apart (``capture=True``).
    stdout: str = ""
    #: The last lines of output (merged output, or standard error when captured apart).
    tail: list[str] = field(default_factory=list)
    #: "cancelled" or "timeout" when the command was killed for that, else None.
    stopped: str | None = None
    seconds: float = 0.0


def run_command(
    argv: Sequence[str],
    *,
    deadline: float,
    cancel: threading.Event | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    capture: bool = False,
    tail_lines: int = 60,
) -> Completed:
    """Run ``argv`` until it exits, ``deadline`` (a ``time.monotonic()`` value) passes or
    ``cancel`` is set.

    Without ``capture`` standard output and error are merged and every line goes to
    ``on_line`` as it is printed; with it they are collected apart (for commands whose output
    is parsed, such as ``git ls-remote``).
    """
    started = time.monotonic()
    if cancel is not None and cancel.is_set():
        return Completed(None, stopped="cancelled")
    if deadline <= started:
        return Completed(None, stopped="timeout")
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if capture else subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,
    )
    finished = threading.Event()
    stopped: list[str] = []

    def watchdog() -> None:
        while not finished.wait(min(max(deadline - time.monotonic(), 0.0), CANCEL_POLL)):
            if cancel is not None and cancel.is_set():
                stopped.append("cancelled")
            elif time.monotonic() >= deadline:
                stopped.append("timeout")
            else:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            return

    guard = threading.Thread(target=watchdog, name="oet-command-watchdog", daemon=True)
    guard.start()
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    stdout = ""
    try:
        if capture:
            stdout, stderr = proc.communicate()
            tail.extend(stderr.splitlines())
        else:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\r\n")
                tail.append(line)
                if on_line is not None:
                    on_line(line)
        status = proc.wait()
    finally:
        finished.set()
        guard.join()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return Completed(
        status, stdout, list(tail), stopped[0] if stopped else None, time.monotonic() - started
    )


def wait_for_lock(lock, deadline: float, cancel: threading.Event | None) -> str | None:
    """Acquire ``lock`` (a :class:`~.filelock.FileLock`) by ``deadline``, giving up early when
    ``cancel`` is set. Returns None when acquired, else "cancelled" or "timeout"."""
    while True:
        if cancel is not None and cancel.is_set():
            return "cancelled"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        slice_ = remaining if cancel is None else min(remaining, 0.1)
        if lock.acquire(timeout=slice_):
            return None
