"""The child-process side of the engine. Standard library only: it also runs, as a plain file,
under the interpreter of a script's own virtualenv, where nothing of ours is installed.

Two modes::

    python worker.py --channel-fd N                # one worker on an inherited socket
    python worker.py --zygote --control-fd N       # fork server: preload modules, fork workers

Protocol: newline-delimited JSON objects over a Unix stream socket.

    parent                                   worker
      |  <- {"msg": "hello", pid, python}       |  (as soon as the worker is up)
      |  {"cmd": "load", "path"} ->             |
      |  <- {"msg": "done", "cmd": "load", has_init, has_main}
      |  {"cmd": "call", "fn", "args", "kwargs"} ->
      |  <- {"msg": "event"|"log"|"output", ...}  (any time, in the order the script made them)
      |  <- {"msg": "done", "cmd": "call", "fn"}  or  {"msg": "error", "cmd", "error", "traceback"}
      |  close ->                               |  (EOF: the worker exits)

Stopping is not a message: the parent signals the worker's process group (the worker is a
session leader), so a script stuck in C code or ignoring messages still stops.

The fork server (zygote) speaks to its parent over a SOCK_SEQPACKET socket: it receives
``{"op": "fork", "id"}`` with one file descriptor (the new worker's channel), answers
``{"op": "forked", "id", "pid"}`` and reports ``{"op": "exited", "pid", "code"}`` for every child.
It stays single-threaded so that forking it is safe.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

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
    data = (json.dumps(message, default=_render, separators=(",", ":")) + "\n").encode()
    with _send_lock:
        if _channel is not None:
            _channel.sendall(data)


class ChannelStream(io.TextIOBase):
    """Replaces sys.stdout/sys.stderr: each complete line becomes one ``output`` message, so
    printed lines keep their order relative to the script's events."""

    def __init__(self, stream: str, fd: int):
        super().__init__()
        self._stream = stream
        self._fd = fd
        self._buffer = ""
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

    def write(self, text: str) -> int:
        with self._lock:
            self._buffer += text
            if "\n" in self._buffer:
                *lines, self._buffer = self._buffer.split("\n")
                for line in lines:
                    send({"msg": "output", "stream": self._stream, "line": line, "ts": time.time()})
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._buffer:
                line, self._buffer = self._buffer, ""
                send({"msg": "output", "stream": self._stream, "line": line, "ts": time.time()})


class ChannelLogHandler(logging.Handler):
    """Forwards the script's logging records."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            send(
                {
                    "msg": "log",
                    "level": record.levelname,
                    "logger": record.name,
                    "message": self.format(record),
                    "ts": record.created,
                }
            )
        except Exception:
            self.handleError(record)


def _capture_fd(fd: int, stream: str) -> None:
    """Point a file descriptor at a pipe drained by a thread, for output that bypasses
    sys.stdout (C extensions, grandchildren)."""
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)

    def drain() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for raw in pipe:
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                send({"msg": "output", "stream": stream, "line": line, "ts": time.time()})

    threading.Thread(target=drain, name=f"oet-{stream}-fd", daemon=True).start()


def _install_pubsub_forwarder() -> None:
    global _pubsub_listener
    try:
        from pubsub import pub
    except ImportError:
        return

    def forward(topic=pub.AUTO_TOPIC, **kwargs: Any) -> None:
        send({"msg": "event", "topic": topic.getName(), "payload": kwargs, "ts": time.time()})

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


def serve(channel: socket.socket) -> None:
    """Run one worker on ``channel`` until the parent closes it."""
    global _channel
    _channel = channel
    for fd, stream in ((1, "stdout"), (2, "stderr")):
        _capture_fd(fd, stream)
    sys.stdout = ChannelStream("stdout", 1)
    sys.stderr = ChannelStream("stderr", 2)
    root = logging.getLogger()
    root.handlers[:] = [ChannelLogHandler()]
    root.setLevel(os.environ.get("OET_SCRIPT_LOG_LEVEL", "INFO"))
    _install_pubsub_forwarder()
    send({"msg": "hello", "pid": os.getpid(), "python": sys.version.split()[0]})

    module = None
    reader = channel.makefile("rb")
    for raw in reader:
        request = json.loads(raw)
        cmd = request.get("cmd")
        try:
            if cmd == "load":
                module, facts = _load(request["path"], request.get("sys_path"), request.get("cwd"))
                send({"msg": "done", "cmd": "load", **facts})
            elif cmd == "call":
                if module is None:
                    raise RuntimeError("no script loaded")
                _call(module, request["fn"], request.get("args", []), request.get("kwargs", {}))
                has_main = callable(getattr(module, "main", None))
                send({"msg": "done", "cmd": "call", "fn": request["fn"], "has_main": has_main})
            else:
                raise ValueError(f"unknown worker command {cmd!r}")
        except BaseException as exc:
            send(
                {
                    "msg": "error",
                    "cmd": cmd,
                    "fn": request.get("fn"),
                    "error": _readable(exc),
                    "traceback": traceback.format_exc(),
                }
            )
    sys.stdout.flush()
    sys.stderr.flush()


def _serve_and_exit(channel: socket.socket) -> None:
    code = 0
    try:
        serve(channel)
    except BaseException:
        traceback.print_exc(file=sys.__stderr__)
        code = 70
    finally:
        os._exit(code)


def zygote(control: socket.socket, preload: list[str]) -> None:
    """Fork server loop. Exits when the parent closes the control socket."""
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

    def report(message: dict[str, Any]) -> None:
        try:
            control.send(json.dumps(message).encode())
        except OSError:  # the parent has gone: nobody is left to serve
            os._exit(0)

    report({"op": "ready", "pid": os.getpid(), "preloaded": loaded, "failed": failed})
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
                report({"op": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)})
        if control in readable:
            data, fds, _, _ = socket.recv_fds(control, 65536, 4)
            if not data:
                return
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
                _serve_and_exit(socket.socket(fileno=fds[0]))
            for fd in fds:
                os.close(fd)
            report({"op": "forked", "id": request["id"], "pid": pid})


def main(argv: list[str] | None = None) -> None:
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
