"""The child-process side of the engine. Standard library only: it also runs, as a plain file,
under the interpreter of a script's own virtualenv, where nothing of ours is installed.

Two modes::

    python worker.py --channel-fd N                # one worker on an inherited socket
    python worker.py --zygote --control-fd N       # fork server: preload modules, fork workers

The messages are those of :mod:`.protocol` (loaded by path, so that no package is needed).

Stopping is not a message: the engine signals the worker's process group (the worker is a
session leader), so a script stuck in C code or ignoring messages still stops.

Containment. Every worker and the fork server are *child subreapers*: a process a script starts
stays in the worker's subtree however it detaches (``setsid``, double fork). When the worker
ends, normally or after SIGTERM raised an exception, it kills that subtree before exiting; if
it is killed outright, its orphans fall to the fork server, which kills every child that is
not one of its workers. When the engine's process dies, the worker sees end of file on its
channel (a thread watches it: ``PR_SET_PDEATHSIG`` would fire when the *thread* that forked
exits, and a worker must survive its fork server) and the fork server sees it on its control
socket; both then kill what they hold and exit.

The fork server is single-threaded so that forking it is safe.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import importlib.util
import io
import json
import logging
import os
import queue
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any


def _load_protocol() -> Any:
    try:
        from . import protocol

        return protocol
    except ImportError:
        pass
    # A plain file under another interpreter: load the protocol beside us under a private
    # name, so that a script's own ``import protocol`` is not ours.
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "protocol.py")
    spec = importlib.util.spec_from_file_location("_ska_oso_oet_worker_protocol", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


P = _load_protocol()

if not __package__:
    # Run as a file, Python put our folder first on sys.path: a script's ``import git`` or
    # ``import config`` must not find the engine's modules.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

#: Signals Tango's Starter (and other supervisors) may leave blocked in the mask we inherit.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT}
_PR_SET_CHILD_SUBREAPER = 36
#: Longest line passed on when the engine does not say (characters).
DEFAULT_MAX_LINE = 65536

_send_lock = threading.Lock()
_channel: socket.socket | None = None
# pypubsub keeps weak references to listeners: hold ours for the life of the worker.
_pubsub_listener: Any = None


def _render(obj: Any) -> Any:
    """Readable, non-reversible form of what JSON cannot hold. Kept in step with
    ``ska_oso_oet.events._render_unjsonable``: this module cannot import the package, since it
    also runs under a script's own virtualenv."""
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    try:
        import jsonpickle

        return json.loads(jsonpickle.encode(obj, unpicklable=False, make_refs=False, keys=True))
    except Exception:
        return repr(obj)


def send(message: dict[str, Any]) -> None:
    """Send one message. Blocks while the engine is not reading: that is the back-pressure
    that slows a script publishing faster than its device can pass events on."""
    data = P.encode(message, default=_render)
    with _send_lock:
        if _channel is not None:
            _channel.sendall(data)


def unblock_stop_signals() -> None:
    """Undo a blocked signal mask inherited from whoever started us (Tango's Starter blocks
    SIGTERM, SIGINT, SIGHUP and SIGQUIT): with it, a stop could only ever end in SIGKILL."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def become_subreaper() -> bool:
    """Make orphaned descendants our children (Linux); False where that is not possible."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's), from /proc."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as handle:
                found.extend(int(c) for c in handle.read().split())
        except OSError:
            continue
    return found


def descendants_of(pid: int) -> list[int]:
    result: list[int] = []
    pending = children_of(pid)
    while pending:
        child = pending.pop()
        result.append(child)
        pending.extend(children_of(child))
    return result


def kill_descendants(keep: set[int] | frozenset[int] = frozenset(), timeout: float = 2.0) -> None:
    """SIGKILL every descendant of this process except the subtrees of ``keep``, and reap our
    children among them. Orphans of killed ones are reparented to us (we are a subreaper),
    so this repeats until none are left."""
    deadline = time.monotonic() + timeout
    me = os.getpid()
    while time.monotonic() < deadline:
        victims = []
        for child in children_of(me):
            if child in keep:
                continue
            victims.append(child)
            victims.extend(descendants_of(child))
        if not victims:
            return
        for pid in victims:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in victims:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass  # not our child (yet): the next round reaps it once reparented
            except OSError:
                pass


class ChannelStream(io.TextIOBase):
    """Replaces sys.stdout/sys.stderr: each complete line becomes one ``output`` message, so
    printed lines keep their order relative to the script's events.

    The pending line is a list of pieces (joined once, at the newline), so writing one
    character at a time costs linear, not quadratic, time; a line longer than ``max_line`` is
    cut there, the rest counted and dropped, and the marker says how much was dropped."""

    def __init__(self, stream: str, fd: int, max_line: int = DEFAULT_MAX_LINE):
        super().__init__()
        self._stream = stream
        self._fd = fd
        self.max_line = max_line
        self._pieces: list[str] = []
        self._kept = 0
        self._dropped = 0
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd

    def _add(self, piece: str) -> None:
        room = self.max_line - self._kept
        if len(piece) > room:
            self._dropped += len(piece) - max(room, 0)
            piece = piece[: max(room, 0)]
        if piece:
            self._pieces.append(piece)
            self._kept += len(piece)

    def _emit(self) -> None:
        line = "".join(self._pieces)
        if self._dropped:
            line += P.TRUNCATED.format(dropped=self._dropped)
        self._pieces, self._kept, self._dropped = [], 0, 0
        send({"msg": P.OUTPUT, "stream": self._stream, "line": line, "ts": time.time()})

    def write(self, text: str) -> int:
        with self._lock:
            start = 0
            while (newline := text.find("\n", start)) >= 0:
                self._add(text[start:newline])
                self._emit()
                start = newline + 1
            if start < len(text):
                self._add(text[start:])
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._pieces or self._dropped:
                self._emit()


class ChannelLogHandler(logging.Handler):
    """Forwards the script's logging records."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            send(
                {
                    "msg": P.LOG,
                    "level": record.levelname,
                    "logger": record.name,
                    "message": self.format(record),
                    "ts": record.created,
                }
            )
        except Exception:
            self.handleError(record)


def _capture_fd(fd: int, stream: str) -> ChannelStream:
    """Point a file descriptor at a pipe drained by a thread, for output that bypasses
    sys.stdout (C extensions, grandchildren). Lines are cut at the same limit as sys.stdout's
    (read in bounded pieces: a 40 MB line never sits in memory whole)."""
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)
    lines = ChannelStream(stream, fd)

    def drain() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                lines.write(chunk.decode("utf-8", errors="replace"))
            lines.flush()

    threading.Thread(target=drain, name=f"oet-{stream}-fd", daemon=True).start()
    return lines


class OperatorControl:
    """The worker's side of ``ska_oso_oet.script``: pause at checkpoints, questions, progress.

    The channel thread calls :meth:`on_pause`, :meth:`on_resume` and :meth:`on_answer` while
    the script runs in the main thread (or its own threads): a checkpoint costs one
    ``Event.is_set()`` unless a pause is pending. A stop is a signal, never a message, so a
    script paused or waiting for an answer ends at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = threading.Event()
        self._running.set()
        self._paused_reported = False
        self._answered = threading.Condition(self._lock)
        self._next_id = 0
        #: Open requests: id -> their choices; answers land in _answers.
        self._open: dict[str, list[Any] | None] = {}
        self._answers: dict[str, tuple[Any, str | None]] = {}

    # -- channel thread ------------------------------------------------------------------
    def on_pause(self) -> None:
        self._running.clear()

    def on_resume(self) -> None:
        with self._lock:
            self._running.set()
            if self._paused_reported:
                self._paused_reported = False
                send({"msg": P.RESUMED, "ts": time.time()})

    def on_answer(self, request_id: str, value: Any, user: str | None) -> None:
        with self._lock:
            if request_id not in self._open:
                reason = f"request {request_id} is no longer pending"
                send(_closed(request_id, "refused", reason=reason, value=value, user=user))
                return
            ok, choice = P.match_choice(value, self._open[request_id])
            if not ok:
                reason = f"{value!r} is not one of {self._open[request_id]!r}"
                send(_closed(request_id, "refused", reason=reason, value=value, user=user))
                return
            del self._open[request_id]
            self._answers[request_id] = (choice, user)
            # Said here, in order, before the script runs on: the engine hears "answered"
            # before anything the script does next.
            send(_closed(request_id, "answered", value=choice, user=user))
            self._answered.notify_all()

    # -- script threads ------------------------------------------------------------------
    def checkpoint(self) -> None:
        if self._running.is_set():
            return
        with self._lock:
            if self._running.is_set():  # resumed meanwhile
                return
            if not self._paused_reported:
                self._paused_reported = True
                send({"msg": P.PAUSED, "ts": time.time()})
        self._running.wait()

    def ask(
        self, prompt: str, choices: list[Any] | None, default: Any, timeout: float | None
    ) -> Any:
        self.checkpoint()
        with self._lock:
            self._next_id += 1
            request_id = str(self._next_id)
            self._open[request_id] = choices
            send(
                {
                    "msg": P.REQUEST,
                    "id": request_id,
                    "prompt": prompt,
                    "choices": choices,
                    "default": default,
                    "timeout": timeout,
                    "ts": time.time(),
                }
            )
            answered = self._answered.wait_for(lambda: request_id in self._answers, timeout)
            if not answered:
                del self._open[request_id]
                send(_closed(request_id, "timeout", value=default))
        if not answered:
            if default is None:
                raise AskTimeout(f"no answer to {prompt!r} within {timeout} s")
            value = default
        else:
            value = self._answers.pop(request_id)[0]
        self.checkpoint()
        return value

    def progress(self, done: float, total: float | None, message: str) -> None:
        send(
            {"msg": P.PROGRESS, "done": done, "total": total, "message": message, "ts": time.time()}
        )
        self.checkpoint()

    def input(self, prompt: Any = "") -> str:
        """The builtin ``input()`` of a script: a question without choices or timeout."""
        return str(self.ask(str(prompt), None, None, None))


def _closed(request_id: str, outcome: str, **facts: Any) -> dict[str, Any]:
    return {"msg": P.CLOSED, "id": request_id, "outcome": outcome, "ts": time.time(), **facts}


OPERATOR = OperatorControl()
AskTimeout: Any = TimeoutError  # replaced by ska_oso_oet.script.AskTimeout once loaded


class _PreloadedFinder:
    """Makes ``import ska_oso_oet.script`` give a script the API module this worker drives,
    under any interpreter: the module is our own file, loaded by path; where no
    ``ska_oso_oet`` package is installed (a script's own virtualenv) an empty package stands
    in for it, so that nothing else of the OET is importable there by accident."""

    def __init__(self, modules: dict[str, Any]) -> None:
        self._modules = modules

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self._modules:
            return None
        if fullname == "ska_oso_oet":
            sys.meta_path.remove(self)
            try:
                real = importlib.util.find_spec(fullname)
            finally:
                sys.meta_path.insert(0, self)
            if real is not None:
                return None  # the installed package, with our script module inside it
        module = self._modules[fullname]
        return importlib.util.spec_from_loader(
            fullname, self, is_package=hasattr(module, "__path__")
        )

    def create_module(self, spec: Any) -> Any:
        return self._modules[spec.name]

    def exec_module(self, module: Any) -> None:
        pass


def _install_script_api() -> None:
    """Load ``ska_oso_oet/script.py`` (beside our folder), attach it to this worker, make it
    importable, and map the builtin ``input()`` onto ``ask``: stdin is /dev/null."""
    global AskTimeout
    import builtins
    import types

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "script.py")
    spec = importlib.util.spec_from_file_location("ska_oso_oet.script", path)
    api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(api)
    api._install(OPERATOR)
    AskTimeout = api.AskTimeout
    stand_in = types.ModuleType("ska_oso_oet", "Stand-in package: only ska_oso_oet.script.")
    stand_in.__path__ = []
    stand_in.script = api
    sys.meta_path.insert(0, _PreloadedFinder({"ska_oso_oet": stand_in, "ska_oso_oet.script": api}))
    builtins.input = OPERATOR.input


def _install_pubsub_forwarder() -> None:
    global _pubsub_listener
    try:
        from pubsub import pub
    except ImportError:
        return

    def forward(topic=pub.AUTO_TOPIC, **kwargs: Any) -> None:
        send({"msg": P.EVENT, "topic": topic.getName(), "payload": kwargs, "ts": time.time()})
        OPERATOR.checkpoint()  # every published event is a place to pause

    _pubsub_listener = forward
    pub.subscribe(forward, pub.ALL_TOPICS)


def _load(
    path: str, sys_path: list[str] | None = None, cwd: str | None = None
) -> tuple[Any, dict[str, Any]]:
    """Import the script. ``sys_path`` (a git script's own code, in its checkout) goes in
    front of everything else, for this process and the Python processes it starts;
    ``cwd`` becomes the working folder (a git script's checkout)."""
    if cwd:
        os.chdir(cwd)
    if sys_path:
        sys.path[:0] = [p for p in sys_path if p not in sys.path]
        inherited = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join([*sys_path, *([inherited] if inherited else [])])
    if not os.path.exists(path):
        raise FileNotFoundError(f"script file not found: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"script path is a directory, not a Python file: {path}")
    stem = os.path.splitext(os.path.basename(path))[0].replace("-", "_") or "script"
    name = stem if stem not in sys.modules else f"oet_script_{stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, os.path.dirname(path))
    spec.loader.exec_module(module)
    return module, {
        "has_init": callable(getattr(module, "init", None)),
        "has_main": callable(getattr(module, "main", None)),
    }


def _apply_limits(limits: dict[str, Any], streams: list[ChannelStream]) -> None:
    memory = int(limits.get("memory_bytes") or 0)
    if memory > 0:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    max_line = int(limits.get("max_line_length") or 0)
    if max_line > 0:
        for stream in streams:
            stream.max_line = max_line


def _call(module: Any, fn: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    function = getattr(module, fn, None)
    if not callable(function):
        raise AttributeError(f"script has no function {fn}()")
    try:
        function(*args, **kwargs)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _readable(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _exit_contained(code: int) -> None:
    """Kill everything the script started, then leave at once."""
    try:
        kill_descendants()
    finally:
        os._exit(code)


def _watch_channel(channel: socket.socket, requests: queue.SimpleQueue) -> None:
    """Read requests for the main thread. End of file means the engine is done with us, or
    its process died: then nothing of this procedure may live on, busy or not."""
    reader = channel.makefile("rb")
    try:
        for raw in reader:
            request = json.loads(raw)
            # Operator control is handled here, not by the (busy) main thread.
            cmd = request.get("cmd")
            if cmd == P.PAUSE:
                OPERATOR.on_pause()
            elif cmd == P.RESUME:
                OPERATOR.on_resume()
            elif cmd == P.ANSWER:
                OPERATOR.on_answer(
                    str(request.get("id")), request.get("value"), request.get("user")
                )
            else:
                requests.put(request)
    except Exception:
        pass
    _exit_contained(0)


def serve(channel: socket.socket) -> None:
    """Run one worker on ``channel`` until the engine closes it (this never returns)."""
    global _channel
    _channel = channel
    unblock_stop_signals()
    become_subreaper()
    streams = [_capture_fd(1, "stdout"), _capture_fd(2, "stderr")]
    sys.stdout = ChannelStream("stdout", 1)
    sys.stderr = ChannelStream("stderr", 2)
    streams += [sys.stdout, sys.stderr]
    root = logging.getLogger()
    root.handlers[:] = [ChannelLogHandler()]
    root.setLevel(os.environ.get("OET_SCRIPT_LOG_LEVEL", "INFO"))
    _install_pubsub_forwarder()
    _install_script_api()
    send(
        {"msg": P.HELLO, "version": P.VERSION, "pid": os.getpid(), "python": sys.version.split()[0]}
    )

    requests: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(
        target=_watch_channel, args=(channel, requests), name="oet-channel", daemon=True
    ).start()
    module = None
    while True:
        request = requests.get()
        cmd = request.get("cmd")
        try:
            if cmd == P.LOAD:
                _apply_limits(request.get("limits") or {}, streams)
                module, facts = _load(request["path"], request.get("sys_path"), request.get("cwd"))
                send({"msg": P.DONE, "cmd": P.LOAD, **facts})
            elif cmd == P.CALL:
                if module is None:
                    raise RuntimeError("no script loaded")
                _call(module, request["fn"], request.get("args", []), request.get("kwargs", {}))
                has_main = callable(getattr(module, "main", None))
                send({"msg": P.DONE, "cmd": P.CALL, "fn": request["fn"], "has_main": has_main})
            else:
                raise ValueError(f"unknown worker command {cmd!r}")
        except BaseException as exc:
            send(
                {
                    "msg": P.ERROR,
                    "cmd": cmd,
                    "fn": request.get("fn"),
                    "error": _readable(exc),
                    "traceback": traceback.format_exc(),
                }
            )


def _serve_and_exit(channel: socket.socket) -> None:
    code = 0
    try:
        serve(channel)
    except BaseException:
        traceback.print_exc(file=sys.__stderr__)
        code = 70
    finally:
        _exit_contained(code)


def _exec_interpreter(python: str, channel_fd: int, nice: int) -> None:
    """In a forked child: become a worker under another interpreter (a script's virtualenv),
    keeping our place under the fork server."""
    os.set_inheritable(channel_fd, True)
    path = os.path.abspath(__file__)
    argv = [python, path, "--channel-fd", str(channel_fd)]
    try:
        os.execv(python, argv)
    except OSError as exc:
        sys.__stderr__.write(f"cannot start interpreter {python}: {exc}\n")
        os._exit(71)


def zygote(control: socket.socket, preload: list[str]) -> None:
    """Fork server loop. Exits, with every process it holds killed, when the engine closes the
    control socket or dies."""
    unblock_stop_signals()
    become_subreaper()
    loaded, failed = [], {}
    for name in preload:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception as exc:
            failed[name] = _readable(exc)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    workers: set[int] = set()

    def report(message: dict[str, Any]) -> None:
        try:
            control.send(json.dumps(message).encode())
        except OSError:  # the engine has gone: nobody is left to serve
            _exit_contained(0)

    report({"op": P.READY, "pid": os.getpid(), "preloaded": loaded, "failed": failed})
    while True:
        readable, _, _ = select.select([control, wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if pid in workers:
                    workers.discard(pid)
                    report({"op": P.EXITED, "pid": pid, "code": os.waitstatus_to_exitcode(status)})
            # Anything else among our children was orphaned by a worker that died without
            # cleaning up (SIGKILL, SIGTERM's default action): it must not outlive it.
            kill_descendants(keep=workers, timeout=0.5)
        if control in readable:
            try:
                data, fds, _, _ = socket.recv_fds(control, 65536, 4)
            except OSError:
                data, fds = b"", []
            if not data:
                _exit_contained(0)
            request = json.loads(data)
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                os.close(wake_r)
                os.close(wake_w)
                control.close()
                os.setsid()
                if request.get("python"):
                    _exec_interpreter(request["python"], fds[0], 0)
                _serve_and_exit(socket.socket(fileno=fds[0]))
            workers.add(pid)
            for fd in fds:
                os.close(fd)
            report({"op": P.FORKED, "id": request["id"], "pid": pid})


def main(argv: list[str] | None = None) -> None:
    unblock_stop_signals()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channel-fd", type=int)
    parser.add_argument("--zygote", action="store_true")
    parser.add_argument("--control-fd", type=int)
    parser.add_argument("--preload", default="")
    parser.add_argument("--nice", type=int, default=0)
    options = parser.parse_args(argv)
    if options.nice:
        # Scripts run below the device server's priority; the fork server too, so that
        # refilling the warm pool never competes with a command in progress.
        os.nice(options.nice)
    if options.zygote:
        control = socket.socket(fileno=options.control_fd)
        zygote(control, [m for m in options.preload.split(",") if m])
    else:
        _serve_and_exit(socket.socket(fileno=options.channel_fd))


if __name__ == "__main__":
    main()
