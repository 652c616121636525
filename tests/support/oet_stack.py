"""``oet-stack`` run by a test as a user runs it, and stopped as Ctrl-C stops it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import psutil
import tango
from tests.support.tango_events import close_hubs

#: How long the stack may take to print that it is ready (a loaded CI machine).
START_TIMEOUT = 90.0
READY_LINE = "Ctrl-C stops the stack"
_REST_LINE = re.compile(r"REST API (\S+) \(fronting (\S+)\)")


class OutputReader:
    """Collects a child's stdout lines on a thread; waits for a marker line."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, marker: str, timeout: float, count: int = 1) -> list[str]:
        """Until ``count`` lines contain ``marker``; returns every line so far."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: sum(marker in line for line in self.lines) >= count, timeout
            ):
                raise AssertionError(f"oet-stack did not print {marker!r}; got {self.lines}")
            return list(self.lines)


class RunningStack:
    """``oet-stack`` started as a user starts it, ready once it says so; :meth:`close` stops
    it as Ctrl-C does and checks that it exits 0 and leaves nothing behind."""

    def __init__(self, tmp_path: Path, *options: str, scripts: Path, subarrays: int = 1) -> None:
        command = [
            sys.executable, "-m", "ska_oso_oet.stack", "--subarrays", str(subarrays),
            "--data-dir", str(tmp_path / "data"), "--scripts", str(scripts),
            "--rest-port", "0", "--restart-delay", "0.5", *options,
        ]  # fmt: skip
        env = {**os.environ, "OET_WARM_WORKERS": "1", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.output = OutputReader(self.process)
        try:
            lines = self.output.wait_for(READY_LINE, START_TIMEOUT)
        except BaseException:
            self.close(check=False)
            raise
        self.tango_host = next(ln.split("=", 1)[1] for ln in lines if ln.startswith("TANGO_HOST="))
        #: device -> the REST URL the stack printed for it (the port is the one it chose)
        self.rest_urls = {
            match.group(2): match.group(1) for match in map(_REST_LINE.search, lines) if match
        }
        self.url = self.rest_urls.get("oso/oet/1")

    def child(self, marker: str) -> psutil.Process:
        """The stack's one live child process whose command line contains ``marker``."""
        found = [
            child
            for child in psutil.Process(self.process.pid).children()
            if marker in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE
        ]
        assert len(found) == 1, f"{marker}: {found}"
        return found[0]

    def proxy(self, device: str = "oso/oet/1") -> tango.DeviceProxy:
        proxy = tango.DeviceProxy(f"tango://{self.tango_host}/{device}")
        proxy.set_timeout_millis(10_000)
        return proxy

    def rest(self, path: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def close(self, check: bool = True) -> None:
        close_hubs()
        descendants: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            descendants = psutil.Process(self.process.pid).children(recursive=True)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        _, alive = psutil.wait_procs(descendants, timeout=30)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
        self.process.stdout.close()
        if check:
            assert code == 0, self.output.lines
            assert not alive, f"left behind: {alive}"

    def __enter__(self) -> RunningStack:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(check=exc_type is None)
