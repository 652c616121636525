"""Runs a Tango device server in its own process for tests, the way it runs in production.

The server is started with ``subprocess`` (a fresh interpreter: never a fork of the pytest
process, which may already run omniORB threads, and never a server inside pytest, since
restarting a server loop in one process crashes). Without a Tango database, device properties
come from a Tango *file database*; ``DeviceServerProcess.proxy(name)`` returns a
``DeviceProxy`` addressed with ``#dbase=no``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tango
from tango.test_context import get_server_port_via_pid

HOST = "127.0.0.1"
START_TIMEOUT = 60.0


def write_file_database(
    path: Path, server: str, device_class: str, devices: Mapping[str, Mapping[str, Any]]
) -> None:
    """A Tango file database declaring ``devices`` (name -> properties) of one class."""
    path.write_text(f"{server}/DEVICE/{device_class}: {', '.join(devices)}\n")
    db = tango.Database(str(path))
    for name, properties in devices.items():
        if properties:
            db.put_device_property(name, {k: _as_property(v) for k, v in properties.items()})


def _as_property(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [str(v) for v in value] or [" "]
    return str(value) if str(value) != "" else " "


class DeviceServerProcess:
    """A device server subprocess; use as a context manager."""

    def __init__(
        self,
        command: Sequence[str],
        devices: Mapping[str, Mapping[str, Any]],
        server: str,
        device_class: str = "OETDevice",
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ):
        self.devices = dict(devices)
        self.server = server
        self._tmp = tempfile.TemporaryDirectory(prefix="oet-ds-")
        self.db_path = Path(self._tmp.name) / "tango.db"
        write_file_database(self.db_path, server, device_class, devices)
        self.log_path = log_path or Path(self._tmp.name) / "server.log"
        self.command = [
            *command,
            server.split("/", 1)[1],
            f"-file={self.db_path}",
            "-ORBendPoint",
            f"giop:tcp:{HOST}:0",
        ]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    def __enter__(self) -> DeviceServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()
        try:
            self.port = get_server_port_via_pid(self.process.pid, HOST, retries=600, delay=0.1)
            for name in self.devices:
                self.wait_until_answering(name)
        except Exception as exc:
            output = self.output()
            self.stop()
            raise RuntimeError(
                f"device server did not start: {exc}\n--- its output ---\n{output}"
            ) from exc

    def wait_until_answering(self, name: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                proxy = self.proxy(name)  # connects at once: fails until the device is exported
                proxy.ping()
                proxy.state()
                return
            except tango.DevFailed:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"device server exited: {self.output()}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # polling the server's readiness, not a test condition

    def access(self, name: str) -> str:
        return f"tango://{HOST}:{self.port}/{name}#dbase=no"

    def proxy(self, name: str, timeout_ms: int = 10_000) -> tango.DeviceProxy:
        proxy = tango.DeviceProxy(self.access(name))
        proxy.set_timeout_millis(timeout_ms)
        return proxy

    def output(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-8000:]
        return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the server cleans up its scripts), then SIGKILL of its process group."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                code = self.process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # leftovers of the group, if any
        self._tmp.cleanup()
        return code


def python_command(script: Path | str) -> list[str]:
    return [sys.executable, str(script)]


@contextlib.contextmanager
def device_server(
    command: Sequence[str], devices: Mapping[str, Mapping[str, Any]], server: str, **kwargs: Any
) -> Iterator[DeviceServerProcess]:
    with DeviceServerProcess(command, devices, server, **kwargs) as process:
        yield process
