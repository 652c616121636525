"""``oet-stack`` as a user runs it: starts, answers, runs a script, stops cleanly on Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
import tango

from tests.support.lrc_client import LrcClient
from tests.support.tango_events import close_hubs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
START_TIMEOUT = 90.0


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

    def wait_for(self, marker: str, timeout: float) -> list[str]:
        with self._changed:
            if not self._changed.wait_for(
                lambda: any(marker in line for line in self.lines), timeout
            ):
                raise AssertionError(f"oet-stack did not print {marker!r}; got {self.lines}")
            return list(self.lines)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_oet_stack_runs_and_stops_cleanly(tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "hi.py").write_text("def main():\n    print('hi')\n")
    command = [
        sys.executable,
        "-m",
        "ska_oso_oet.stack",
        "--subarrays",
        "2",
        "--data-dir",
        str(tmp_path / "data"),
        "--scripts",
        str(scripts),
        "--rest-port",
        str(free_port()),
    ]
    env = {**os.environ, "OET_WARM_WORKERS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    descendants: list[psutil.Process] = []
    try:
        output = OutputReader(process)
        lines = output.wait_for("Ctrl-C stops the stack", START_TIMEOUT)
        tango_host = next(line.split("=", 1)[1] for line in lines if line.startswith("TANGO_HOST="))
        assert "device oso/oet/1" in lines and "device oso/oet/2" in lines
        proxy = tango.DeviceProxy(f"tango://{tango_host}/oso/oet/2")
        assert proxy.state() == tango.DevState.ON and proxy.subarrayId == 2
        body = {
            "script": {"script_type": "filesystem", "script_uri": f"file://{scripts / 'hi.py'}"}
        }
        prepared = LrcClient(proxy).invoke("Prepare", json.dumps(body))
        pid = json.loads(prepared.result[1])["id"]
        started = LrcClient(proxy).invoke("Start", json.dumps({"procedure_id": pid}))
        assert json.loads(started.result[1])["state"] == "COMPLETE"
        # the README demo: the example SBD is in the stack's SB store, its scripts allowed
        demo = LrcClient(proxy).invoke(
            "RunActivity", json.dumps({"activity_name": "observe", "sbd_id": "sbd-demo-00001"})
        )
        assert demo.result[0] == 0, demo.result
        assert json.loads(demo.result[1])["state"] == "COMPLETE"
        assert proxy.scriptMessage == "observation complete"
        close_hubs()
        descendants = psutil.Process(process.pid).children(recursive=True)
        assert len(descendants) >= 4  # database, device server, worker fork server, gateway
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
        output.wait_for("oet-stack stopped", 10)
        _, alive = psutil.wait_procs(descendants, timeout=10)
        assert not alive, f"left behind: {[p.cmdline() for p in alive]}"
        assert (tmp_path / "data" / "tango_database.db").exists()
        assert (tmp_path / "data" / "oso_oet_2.sqlite").exists()
        assert (tmp_path / "data" / "sbds" / "sbd-demo-00001.json").exists()
    finally:
        if process.poll() is None:  # the test failed early: let the stack stop its children
            with contextlib.suppress(psutil.Error):
                descendants = psutil.Process(process.pid).children(recursive=True)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                child.kill()
        process.stdout.close()
