"""How worker processes are started.

The device server runs omniORB threads, so it never forks itself. Instead a fork server (the
"zygote", see :mod:`.worker`) is started with fork+exec at launch; it imports the heavy modules
scripts use (``tango``, ``pubsub``) once and forks a fresh worker per procedure in a few
milliseconds. A small warm pool of already-forked idle workers takes even that off the
prepare path. Scripts that need their own virtualenv get a worker started directly under that
environment's interpreter, speaking the same protocol.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .errors import EngineUnavailable

LOGGER = logging.getLogger(__name__)
WORKER_PATH = Path(__file__).with_name("worker.py")
_SPAWN_TIMEOUT = 30.0


class WorkerConnection:
    """The parent's end of one worker: its channel, its pid and a pollable exit notification."""

    def __init__(
        self,
        pid: int,
        channel: socket.socket,
        launcher: WorkerLauncher | None = None,
        popen: subprocess.Popen | None = None,
    ):
        self.pid = pid
        self._channel = channel
        self._launcher = launcher
        self._popen = popen
        self._send_lock = threading.Lock()
        self._buffer = b""
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None  # already gone: reads will drain and report the exit
        self._selector = selectors.DefaultSelector()
        self._selector.register(channel, selectors.EVENT_READ, "channel")
        if self._pidfd is not None:
            self._selector.register(self._pidfd, selectors.EVENT_READ, "exit")
        self._channel_open = True
        self.exited = self._pidfd is None

    @property
    def pgid(self) -> int:
        return self.pid  # workers are session (and so process group) leaders

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        with self._send_lock:
            self._channel.sendall(data)

    def close_channel(self) -> None:
        """Tell the worker we are done (it exits on end of file)."""
        with contextlib.suppress(OSError):
            self._channel.shutdown(socket.SHUT_WR)

    def receive(self) -> list[dict[str, Any]] | None:
        """Block until messages arrive or the worker exits. Returns the decoded messages, or None
        once the worker has exited and everything it sent has been read."""
        while True:
            if not self._channel_open:
                return None
            if not self.exited:
                for key, _ in self._selector.select():
                    if key.data == "exit":
                        self.exited = True
                        self._selector.unregister(key.fileobj)
            try:
                chunk = self._channel.recv(262144, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                if self.exited:
                    # The worker is gone and nothing is buffered; a grandchild may still hold
                    # the socket open, so end here instead of waiting for end of file.
                    self._channel_open = False
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self._channel_open = False
                continue
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            if lines:
                return [json.loads(line) for line in lines if line]

    def signal_group(self, sig: int) -> None:
        """Signal the worker and every process it started in its group."""
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
        except PermissionError:
            LOGGER.warning("not allowed to signal process group %d", self.pgid)

    def group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def exit_code(self, timeout: float = 2.0) -> int | None:
        if self._popen is not None:
            try:
                return self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        if self._launcher is not None:
            return self._launcher.exit_code(self.pid, timeout)
        return None

    def close(self) -> None:
        self._selector.close()
        self._channel.close()
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None


class WorkerLauncher:
    """Starts worker processes: forks from the zygote for the default environment (through a
    warm pool), or runs a given interpreter for a virtualenv. Share one per OS process."""

    def __init__(
        self,
        preload_modules: tuple[str, ...] | list[str] = ("tango", "pubsub"),
        warm_workers: int = 2,
        python: str = sys.executable,
        nice: int = 5,
    ):
        self.python = python
        self._nice = nice
        self._preload = tuple(preload_modules)
        self._warm_target = warm_workers
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._ids = itertools.count(1)
        self._forked: dict[int, int] = {}
        self._exit_codes: dict[int, int] = {}
        self._warm: collections.deque[WorkerConnection] = collections.deque()
        self._closed = False
        self._zygote_error: str | None = None
        self._start_zygote()
        self._refill_needed = threading.Event()
        self._refill_needed.set()
        self._refiller = threading.Thread(
            target=self._refill_loop, name="oet-warm-pool", daemon=True
        )
        self._refiller.start()

    # -- zygote ----------------------------------------------------------------------------
    def _start_zygote(self) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        # A forked process must not carry threads: keep numerical libraries single-threaded.
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        self._zygote = subprocess.Popen(
            [
                self.python,
                str(WORKER_PATH),
                "--zygote",
                "--control-fd",
                str(child_end.fileno()),
                "--preload",
                ",".join(self._preload),
                "--nice",
                str(self._nice),
            ],
            pass_fds=[child_end.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        child_end.close()
        self._control = parent_end
        ready = json.loads(self._control.recv(65536) or b"{}")
        if ready.get("op") != "ready":
            raise EngineUnavailable("the worker fork server did not start")
        if ready.get("failed"):
            LOGGER.warning("worker fork server could not preload %s", ready["failed"])
        self._zygote_reader = threading.Thread(
            target=self._read_zygote, name="oet-zygote-reader", daemon=True
        )
        self._zygote_reader.start()

    def _read_zygote(self) -> None:
        control = self._control
        while True:
            try:
                data = control.recv(65536)
            except OSError:
                data = b""
            with self._lock:
                if not data:
                    if not self._closed:
                        self._zygote_error = "the worker fork server exited"
                        LOGGER.error(self._zygote_error)
                    self._changed.notify_all()
                    return
                report = json.loads(data)
                if report["op"] == "forked":
                    self._forked[report["id"]] = report["pid"]
                elif report["op"] == "exited":
                    self._exit_codes[report["pid"]] = report["code"]
                self._changed.notify_all()

    def _fork(self) -> WorkerConnection:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        request_id = next(self._ids)
        try:
            with self._lock:
                if self._zygote_error or self._closed:
                    raise EngineUnavailable(self._zygote_error or "launcher is closed")
                socket.send_fds(
                    self._control,
                    [json.dumps({"op": "fork", "id": request_id}).encode()],
                    [theirs.fileno()],
                )
                deadline = time.monotonic() + _SPAWN_TIMEOUT
                while request_id not in self._forked:
                    if self._zygote_error:
                        raise EngineUnavailable(self._zygote_error)
                    if not self._changed.wait(deadline - time.monotonic()):
                        raise EngineUnavailable("the worker fork server did not answer")
                pid = self._forked.pop(request_id)
        finally:
            theirs.close()
        return WorkerConnection(pid, ours, launcher=self)

    def exit_code(self, pid: int, timeout: float) -> int | None:
        with self._lock:
            self._changed.wait_for(lambda: pid in self._exit_codes or self._zygote_error, timeout)
            return self._exit_codes.pop(pid, None)

    @property
    def healthy(self) -> bool:
        return self._zygote_error is None and not self._closed

    # -- warm pool ---------------------------------------------------------------------------
    def _refill_loop(self) -> None:
        while True:
            self._refill_needed.wait()
            self._refill_needed.clear()
            while not self._closed and self.healthy and len(self._warm) < self._warm_target:
                try:
                    worker = self._fork()
                except EngineUnavailable:
                    break
                with self._lock:
                    if self._closed:
                        worker.signal_group(signal.SIGKILL)
                        worker.close()
                        return
                    self._warm.append(worker)
            if self._closed:
                return

    def spawn(self, python: str | None = None) -> WorkerConnection:
        """A worker ready for a ``load`` command; ``python`` selects another interpreter."""
        # Compare paths, not resolved links: a virtualenv's python links to the base binary
        # but is another environment.
        if python is not None and os.path.abspath(python) != os.path.abspath(self.python):
            return self._spawn_interpreter(python)
        while True:
            with self._lock:
                worker = self._warm.popleft() if self._warm else None
            self._refill_needed.set()
            if worker is None:
                return self._fork()
            if not worker.exited and worker.group_alive():
                return worker
            worker.close()

    def _spawn_interpreter(self, python: str) -> WorkerConnection:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            popen = subprocess.Popen(
                [
                    python,
                    str(WORKER_PATH),
                    "--channel-fd",
                    str(theirs.fileno()),
                    "--nice",
                    str(self._nice),
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise EngineUnavailable(f"cannot start interpreter {python}: {exc}") from exc
        finally:
            theirs.close()
        return WorkerConnection(popen.pid, ours, popen=popen)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            warm, self._warm = list(self._warm), collections.deque()
            self._changed.notify_all()
        self._refill_needed.set()
        for worker in warm:
            worker.signal_group(signal.SIGKILL)
            worker.close()
        # shutdown, not just close: it wakes the reader blocked in recv() and gives the fork
        # server its end of file at once.
        with contextlib.suppress(OSError):
            self._control.shutdown(socket.SHUT_RDWR)
        self._control.close()
        try:
            self._zygote.wait(5)
        except subprocess.TimeoutExpired:
            self._zygote.kill()
            self._zygote.wait()
