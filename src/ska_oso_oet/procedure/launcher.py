"""How worker processes are started, supervised and ended.

The device server runs omniORB threads, so it never forks itself. Instead a fork server (the
"zygote", see :mod:`.worker`) is started with fork+exec at launch; it imports the heavy modules
scripts use (``tango``, ``pubsub``) once and forks a fresh worker per procedure in a few
milliseconds. A small warm pool of already-forked idle workers takes even that off the
prepare path. Scripts that need their own virtualenv get a worker forked the same way that
then executes that environment's interpreter, so every worker sits under the fork server.

One fork server serves every device of a device server process. It is supervised: if it dies
(a script may kill its parent) a new one is started at once and the launcher reports itself
*degraded* until it is up. Workers do not depend on it once forked (their channels lead to
this process, their containment is their own), so its death disturbs no procedure, of this
subarray or another; only exit codes of the workers it had forked are lost.

:class:`WorkerConnection` is the one owner of a worker process: nothing else signals or reaps it.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import protocol
from .errors import EngineUnavailable
from .worker import descendants_of

LOGGER = logging.getLogger(__name__)
WORKER_PATH = Path(__file__).with_name("worker.py")
_SPAWN_TIMEOUT = 30.0
#: Restarts of the fork server tried in a row (with back-off) before the launcher gives up.
_RESTART_ATTEMPTS = 5
#: A fork server that dies more than this often within _RESTART_WINDOW seconds is not
#: restarted again (like systemd's StartLimitBurst): something keeps killing it, and the
#: device says so in FAULT instead of burning CPU on restarts. Reset starts afresh.
_RESTART_BURST = 5
_RESTART_WINDOW = 60.0


class WorkerConnection:
    """The engine's end of one worker: its channel, and the only handle that signals, kills
    and reaps the worker and everything it started."""

    def __init__(
        self,
        pid: int,
        channel: socket.socket,
        launcher: WorkerLauncher | None = None,
        generation: int = 0,
    ):
        self.pid = pid
        self._channel = channel
        self._launcher = launcher
        self._generation = generation
        self._send_lock = threading.Lock()
        # Pieces of the line being received: joined once its newline arrives, so one long
        # message costs time linear in its size.
        self._pieces: list[bytes] = []
        self.hello: protocol.Hello | None = None
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
        self._kill_timer: threading.Timer | None = None

    @property
    def pgid(self) -> int:
        return self.pid  # workers are session (and so process group) leaders

    def send(self, message: dict[str, Any]) -> None:
        data = protocol.encode(message)
        with self._send_lock:
            self._channel.sendall(data)

    def close_channel(self) -> None:
        """Tell the worker we are done (it kills what it started and exits on end of file)."""
        with contextlib.suppress(OSError):
            self._channel.shutdown(socket.SHUT_WR)

    def receive(self) -> list[dict[str, Any]] | None:
        """Block until messages arrive or the worker exits. Returns the decoded messages, or None
        once the worker has exited and everything it sent has been read. The first message
        must be a hello of this protocol version (ProtocolError otherwise)."""
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
            if b"\n" not in chunk:
                self._pieces.append(chunk)
                continue
            head, *middle, tail = chunk.split(b"\n")
            lines = [b"".join([*self._pieces, head]), *middle]
            self._pieces = [tail] if tail else []
            messages = [json.loads(line) for line in lines if line]
            if self.hello is None and messages:
                self.hello = protocol.check_hello(messages.pop(0))
            if messages:
                return messages

    # -- signals: this handle alone sends them ----------------------------------------------
    def signal_group(self, sig: int) -> None:
        """Signal the worker and every process it started in its group."""
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
        except PermissionError:
            LOGGER.warning("not allowed to signal process group %d", self.pgid)

    def terminate(self, grace: float) -> None:
        """SIGTERM to the group; :meth:`kill` after ``grace`` seconds unless the worker has
        exited by then (0: kill at once)."""
        if grace <= 0:
            self.kill()
            return
        self.signal_group(signal.SIGTERM)
        timer = threading.Timer(grace, self._kill_if_alive)
        timer.daemon = True
        self._kill_timer = timer
        timer.start()

    def _kill_if_alive(self) -> None:
        if not self.exited:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the worker and all its descendants, however they detached.

        The worker is a subreaper, so while it lives every process it started is in its
        subtree; the subtree is frozen first (SIGSTOP, repeated until nothing new appears) so
        that nothing forks or is reparented away between listing and killing."""
        # The subtree is read from /proc/<pid>/task/*/children: only the worker's own
        # descendants are visited, not every process of the host (a stop is on the hot path).
        frozen: set[int] = set()
        for _ in range(50):
            if self.exited and not frozen:
                break
            fresh = [p for p in (self.pid, *descendants_of(self.pid)) if p not in frozen]
            if not fresh:
                break
            for pid in fresh:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGSTOP)
            frozen.update(fresh)
        self.signal_group(signal.SIGKILL)
        for pid in frozen:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def exit_code(self, timeout: float = 2.0) -> int | None:
        """The worker's exit code as its fork server reported it (None: unknown, e.g. the
        fork server that forked it has died since)."""
        if self._launcher is not None:
            return self._launcher.exit_code(self.pid, self._generation, timeout)
        return None

    def close(self) -> None:
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        self._selector.close()
        self._channel.close()
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None


class WorkerLauncher:
    """Starts worker processes from a supervised fork server, through a warm pool for the
    default environment. Share one per OS process."""

    def __init__(
        self,
        preload_modules: tuple[str, ...] | list[str] = ("tango", "pubsub"),
        warm_workers: int = 2,
        python: str = sys.executable,
        nice: int = 5,
        start: bool = True,
    ):
        """``start=False`` defers the fork server to :meth:`start` (the device server starts it
        once its devices answer, so that its imports do not slow the server's own start); the
        first worker asked for meanwhile starts it and waits for it."""
        self.python = python
        self._nice = nice
        self._preload = tuple(preload_modules)
        self._warm_target = warm_workers
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        #: Held while a fork server starts: close() takes it so that none starts unseen.
        self._starting_zygote = threading.Lock()
        self._ids = itertools.count(1)
        self._forked: dict[int, int] = {}
        self._exit_codes: dict[int, int] = {}
        self._warm: collections.deque[WorkerConnection] = collections.deque()
        self._closed = False
        self._zygote_error: str | None = None
        #: Why the launcher is degraded (the fork server is being restarted), or None.
        self._degraded: str | None = None
        self._generation = 0
        self._listeners: list[Callable[[], None]] = []
        self.restarts = 0
        #: Seconds from the fork server's death to its successor being ready (last restart).
        self.last_restart_seconds: float | None = None
        self._died_at = 0.0
        self._deaths: collections.deque[float] = collections.deque(maxlen=_RESTART_BURST + 1)
        self._zygote: subprocess.Popen | None = None
        self._control: socket.socket | None = None
        #: True until the first fork server is up (``start=False``): forks wait for it.
        self._starting = not start
        self._started = False
        self._refill_needed = threading.Event()
        self._refiller = threading.Thread(
            target=self._refill_loop, name="oet-warm-pool", daemon=True
        )
        self._start_requested = threading.Event()
        if start:
            self._start_zygote()
            self._started = True
            self._refill_needed.set()
        else:
            # Created now, not in start(): a thread inherits the signal mask of the thread that
            # creates it, and start() may be called from a Tango thread (stop signals blocked),
            # which the fork server and its workers would then inherit.
            threading.Thread(target=self._first_start, name="oet-zygote-start", daemon=True).start()
        self._refiller.start()

    def start(self) -> None:
        """Start the fork server deferred by ``start=False`` (returns at once), then fill the
        warm pool. A second call does nothing."""
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
        self._start_requested.set()

    def _first_start(self) -> None:
        self._start_requested.wait()
        try:
            self._start_zygote()
        except (OSError, EngineUnavailable, ValueError) as exc:
            if self._closed:
                return
            with self._lock:
                self._zygote_error = f"the worker fork server did not start: {exc}"
                self._starting = False
                self._changed.notify_all()
            LOGGER.error(self._zygote_error)
            self._notify()
            return
        with self._lock:
            self._starting = False
            self._changed.notify_all()
        self._refill_needed.set()

    # -- health ------------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        """False once the launcher cannot start workers any more (closed, or restarts failed)."""
        return self._zygote_error is None and not self._closed

    @property
    def degraded(self) -> str | None:
        """Why starting workers is impaired right now (None: it is not)."""
        return self._degraded

    @property
    def zygote_pid(self) -> int | None:
        return self._zygote.pid if self._zygote is not None else None

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` is called (from a launcher thread) when health changes."""
        with self._lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def _notify(self) -> None:
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:
                LOGGER.exception("launcher listener %r failed", callback)

    # -- zygote ------------------------------------------------------------------------------
    def _start_zygote(self) -> None:
        with self._starting_zygote:
            if self._closed:
                raise EngineUnavailable("launcher is closed")
            self._start_zygote_unlocked()

    def _start_zygote_unlocked(self) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        # A forked process must not carry threads: keep numerical libraries single-threaded.
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        try:
            zygote = subprocess.Popen(
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
        finally:
            child_end.close()
        ready = json.loads(parent_end.recv(65536) or b"{}")
        if ready.get("op") != protocol.READY:
            parent_end.close()
            with contextlib.suppress(OSError):
                zygote.kill()
            zygote.wait()
            raise EngineUnavailable("the worker fork server did not start")
        if ready.get("failed"):
            LOGGER.warning("worker fork server could not preload %s", ready["failed"])
        with self._lock:
            self._zygote = zygote
            self._control = parent_end
            self._generation += 1
            generation = self._generation
        threading.Thread(
            target=self._read_zygote,
            args=(parent_end, zygote, generation),
            name=f"oet-zygote-{generation}",
            daemon=True,
        ).start()

    def _read_zygote(
        self, control: socket.socket, zygote: subprocess.Popen, generation: int
    ) -> None:
        while True:
            try:
                data = control.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            report = json.loads(data)
            with self._lock:
                if report["op"] == protocol.FORKED:
                    self._forked[report["id"]] = report["pid"]
                elif report["op"] == protocol.EXITED:
                    self._exit_codes[report["pid"]] = report["code"]
                self._changed.notify_all()
        self._died_at = time.monotonic()
        self._deaths.append(self._died_at)
        code = zygote.wait()
        control.close()
        with self._lock:
            if self._closed:
                self._changed.notify_all()
                return
            if (
                len(self._deaths) > _RESTART_BURST
                and self._died_at - self._deaths[0] < _RESTART_WINDOW
            ):
                self._zygote_error = (
                    f"the worker fork server died {len(self._deaths)} times within "
                    f"{_RESTART_WINDOW:.0f} s (last exit code {code}); it is not restarted again"
                )
                self._changed.notify_all()
            else:
                self._degraded = f"the worker fork server died (exit code {code}); restarting it"
                self._changed.notify_all()
        if self._zygote_error:
            LOGGER.error(self._zygote_error)
            self._notify()
            return
        LOGGER.error(self._degraded)
        self._notify()
        self._restart()

    def _restart(self) -> None:
        delay = 0.05
        for attempt in range(1, _RESTART_ATTEMPTS + 1):
            try:
                self._start_zygote()
            except (OSError, EngineUnavailable, ValueError) as exc:
                if self._closed:
                    return
                LOGGER.error("restarting the worker fork server failed (%d): %s", attempt, exc)
                time.sleep(delay)
                delay *= 4
                continue
            with self._lock:
                self._degraded = None
                self.restarts += 1
                self.last_restart_seconds = time.monotonic() - self._died_at
                self._changed.notify_all()
            LOGGER.warning("worker fork server restarted (pid %s)", self.zygote_pid)
            self._refill_needed.set()
            self._notify()
            return
        with self._lock:
            self._zygote_error = "the worker fork server died and could not be restarted"
            self._degraded = None
            self._changed.notify_all()
        self._notify()

    def _fork(self, python: str | None = None) -> WorkerConnection:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        request_id = next(self._ids)
        request: dict[str, Any] = {"op": protocol.FORK, "id": request_id}
        if python is not None:
            request["python"] = python
        deadline = time.monotonic() + _SPAWN_TIMEOUT
        self.start()  # a deferred fork server starts at the first fork asked for
        try:
            with self._lock:
                # A fork server being started or restarted is waited for, not failed on.
                while (self._degraded or self._starting) and not (
                    self._zygote_error or self._closed
                ):
                    if not self._changed.wait(deadline - time.monotonic()):
                        raise EngineUnavailable(self._degraded or "fork server starting")
                if self._zygote_error or self._closed:
                    raise EngineUnavailable(self._zygote_error or "launcher is closed")
                generation = self._generation
                try:
                    socket.send_fds(
                        self._control, [json.dumps(request).encode()], [theirs.fileno()]
                    )
                except OSError as exc:
                    raise EngineUnavailable(f"the worker fork server is gone: {exc}") from exc
                while request_id not in self._forked:
                    if self._zygote_error or self._generation != generation or self._degraded:
                        raise EngineUnavailable("the worker fork server died while forking")
                    if not self._changed.wait(deadline - time.monotonic()):
                        raise EngineUnavailable("the worker fork server did not answer")
                pid = self._forked.pop(request_id)
        finally:
            theirs.close()
        return WorkerConnection(pid, ours, launcher=self, generation=generation)

    def exit_code(self, pid: int, generation: int, timeout: float) -> int | None:
        with self._lock:
            self._changed.wait_for(
                lambda: (
                    pid in self._exit_codes
                    or self._zygote_error is not None
                    or self._generation != generation
                    or self._degraded is not None
                ),
                timeout,
            )
            return self._exit_codes.pop(pid, None)

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
                        worker.kill()
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
            if not os.access(python, os.X_OK):
                raise EngineUnavailable(f"cannot start interpreter {python}: not executable")
            return self._fork(python)
        while True:
            with self._lock:
                worker = self._warm.popleft() if self._warm else None
            self._refill_needed.set()
            if worker is None:
                return self._fork()
            if not worker.exited and worker.group_alive():
                return worker
            worker.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._starting = False
        self._start_requested.set()  # a deferred start that never came ends its thread
        # A fork server being started now is waited for, so that it is shut down below; none
        # starts after this (_start_zygote sees the launcher closed).
        if self._starting_zygote.acquire(timeout=_SPAWN_TIMEOUT):
            self._starting_zygote.release()
        else:
            LOGGER.warning("closing while the worker fork server is still starting")
        with self._lock:
            warm, self._warm = list(self._warm), collections.deque()
            self._changed.notify_all()
            control, zygote = self._control, self._zygote
        self._refill_needed.set()
        for worker in warm:
            worker.kill()
            worker.close()
        # shutdown, not just close: it wakes the reader blocked in recv() and gives the fork
        # server its end of file at once (it then kills every process it still holds).
        if control is not None:
            with contextlib.suppress(OSError):
                control.shutdown(socket.SHUT_RDWR)
        if zygote is not None:
            try:
                zygote.wait(5)
            except subprocess.TimeoutExpired:
                zygote.kill()
                zygote.wait()
