"""``OETDeviceServer <instance> -nodb -dlist <device>``: runs without any Tango database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import tango
from tango.test_context import get_server_port_via_pid

pytestmark = pytest.mark.timeout(120)


def test_server_runs_without_database_and_stops_on_sigterm(tmp_path) -> None:
    log = (tmp_path / "server.log").open("wb")
    command = [
        sys.executable,
        "-m",
        "ska_oso_oet.tango.server",
        "nodb",
        "-nodb",
        "-dlist",
        "oso/oet/5",
        "-ORBendPoint",
        "giop:tcp:127.0.0.1:0",
    ]
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**_env(), "OET_WARM_WORKERS": "1"}
    )
    try:
        port = get_server_port_via_pid(process.pid, "127.0.0.1", retries=600, delay=0.1)
        deadline = time.monotonic() + 60
        while True:
            try:  # the proxy connects at once: it fails until the device is exported
                proxy = tango.DeviceProxy(f"tango://127.0.0.1:{port}/oso/oet/5#dbase=no")
                state = proxy.state()
                break
            except tango.DevFailed:
                assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.1)  # waiting for the server to export the device
        assert state == tango.DevState.ON
        assert proxy.subarrayId == 5
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert "OETDeviceServer stopped" in (tmp_path / "server.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "TANGO_HOST"}
