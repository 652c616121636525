"""``oet-stack`` as a user runs it: starts, answers, runs a script, stops cleanly on Ctrl-C; and
as a supervisor: a crashed gateway or device server comes back, the database's death stops it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import tango

from ska_oso_oet.stack import EXIT_DATABASE_DIED, EXIT_START_FAILED
from tests.support.lrc_client import LrcClient
from tests.support.oet_stack import START_TIMEOUT, OutputReader, RunningStack
from tests.support.tango_events import close_hubs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
#: A restart waits --restart-delay, then for the devices (or the gateway) to answer.
RESTART_TIMEOUT = 90.0
TEST_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
GATEWAY = "ska_oso_oet.rest.server"
DEVICE_SERVER = "ska_oso_oet.tango.server"
DATABASE = "PyDatabaseds"


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
        "0",
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


def test_a_taken_rest_port_stops_the_stack_at_once_with_nothing_started(tmp_path: Path) -> None:
    """The REST port is the stack's before any child starts: a taken one is said at once (not
    after the database and device server came up and the gateway failed to bind)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "ska_oso_oet.stack", "--data-dir", str(tmp_path / "data"),
             "--rest-port", str(port)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == EXIT_START_FAILED, done.stderr
    assert (
        f"cannot start: the REST API cannot listen on 127.0.0.1:{port} (Address already in use);"
        " choose another --rest-port (0: a free one)"
    ) in done.stderr
    assert done.stdout.splitlines() == ["oet-stack stopped"]
    assert not (tmp_path / "data" / "databaseds.log").exists()  # no child was started


# ----- supervision ------------------------------------------------------------------------------
def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy (process readiness only)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(tango.DevFailed, httpx.HTTPError, psutil.Error):
            value = predicate()
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def supervised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = RunningStack(tmp_path_factory.mktemp("supervised"), scripts=TEST_SCRIPTS)
    try:
        yield running
    finally:
        running.close()


def procedure(proxy: tango.DeviceProxy, pid: int) -> dict[str, Any]:
    return json.loads(proxy.GetProcedure(str(pid)))


def test_a_killed_gateway_is_restarted_and_the_running_script_goes_on(
    supervised: RunningStack, tmp_path: Path
) -> None:
    proxy = supervised.proxy()
    flag = tmp_path / "go-on"
    script = {"script_type": "filesystem", "script_uri": f"file://{TEST_SCRIPTS}/wait_for_file.py"}
    prepared = LrcClient(proxy).invoke("Prepare", json.dumps({"script": script}))
    pid = json.loads(prepared.result[1])["id"]
    main_args = {"main": {"args": [], "kwargs": {"path": str(flag)}}}
    (code,), _ = proxy.Start(json.dumps({"procedure_id": pid, "script_args": main_args}))
    assert code in (1, 2)  # STARTED or QUEUED
    wait_until(lambda: procedure(proxy, pid)["state"] == "RUNNING", 60, "procedure RUNNING")
    server = supervised.child(DEVICE_SERVER)
    gateway = supervised.child(GATEWAY)
    assert supervised.rest(f"/procedures/{pid}")["procedure"]["state"] == "RUNNING"

    gateway.kill()
    supervised.output.wait_for(
        f"oet-gateway (pid {gateway.pid}) was killed by SIGKILL", RESTART_TIMEOUT
    )
    lines = supervised.output.wait_for("oet-gateway restarted", RESTART_TIMEOUT)
    # served again, on the same port, by a new process
    assert supervised.rest(f"/procedures/{pid}")["procedure"]["state"] == "RUNNING"
    assert supervised.child(GATEWAY).pid != gateway.pid
    # the device server and its script were not touched
    assert supervised.child(DEVICE_SERVER).pid == server.pid
    assert [s for s, _ in procedure(proxy, pid)["history"]["process_states"]][-1] == "RUNNING"
    flag.touch()
    wait_until(
        lambda: supervised.rest(f"/procedures/{pid}")["procedure"]["state"] == "COMPLETE",
        60,
        "COMPLETE",
    )
    assert proxy.scriptMessage == f"found {flag}"
    restart_log = next(ln for ln in lines if f"oet-gateway (pid {gateway.pid}) was killed" in ln)
    assert restart_log.startswith("1|") and "|ERROR|" in restart_log
    assert "|service:oet-stack|" in restart_log and "restarting it in 0.5 s" in restart_log


def test_a_killed_device_server_is_restarted_and_its_devices_answer(
    supervised: RunningStack,
) -> None:
    server = supervised.child(DEVICE_SERVER)
    gateway = supervised.child(GATEWAY)
    left = server.children(recursive=True)  # its fork server(s), at least
    assert left
    close_hubs()
    server.kill()
    supervised.output.wait_for(
        f"OETDeviceServer (pid {server.pid}) was killed by SIGKILL", RESTART_TIMEOUT
    )
    supervised.output.wait_for("OETDeviceServer restarted", RESTART_TIMEOUT)
    assert supervised.child(DEVICE_SERVER).pid != server.pid
    _, alive = psutil.wait_procs(left, timeout=30)
    assert not alive, f"the crashed server left {[p.cmdline() for p in alive]}"
    proxy = supervised.proxy()
    assert proxy.state() == tango.DevState.ON
    body = {
        "script": {"script_type": "filesystem", "script_uri": f"file://{TEST_SCRIPTS}/success.py"}
    }
    prepared = LrcClient(proxy).invoke("Prepare", json.dumps(body))
    pid = json.loads(prepared.result[1])["id"]
    started = LrcClient(proxy).invoke("Start", json.dumps({"procedure_id": pid}))
    assert json.loads(started.result[1])["state"] == "COMPLETE"
    # the gateway was left running and reaches the new server by itself
    assert supervised.child(GATEWAY).pid == gateway.pid
    wait_until(
        lambda: supervised.rest(f"/procedures/{pid}")["procedure"]["state"] == "COMPLETE",
        RESTART_TIMEOUT,
        "the gateway serving the restarted device",
    )


def test_the_tango_database_dying_stops_the_whole_stack(tmp_path: Path) -> None:
    running = RunningStack(tmp_path, "--no-rest", scripts=TEST_SCRIPTS)
    try:
        descendants = psutil.Process(running.process.pid).children(recursive=True)
        database = running.child(DATABASE)
        database.kill()
        assert running.process.wait(120) == EXIT_DATABASE_DIED
        lines = running.output.wait_for("oet-stack stopped", 10)
        fatal = next(ln for ln in lines if "|CRITICAL|" in ln)
        assert f"PyDatabaseds (pid {database.pid}) was killed by SIGKILL" in fatal
        assert "cannot work without the Tango database; stopping the stack" in fatal
        assert not any("restarting it" in ln for ln in lines)
        _, alive = psutil.wait_procs(descendants, timeout=30)
        assert not alive, f"left behind: {alive}"
    finally:
        running.close(check=False)


def test_nothing_outlives_a_stack_killed_by_sigkill(tmp_path: Path) -> None:
    running = RunningStack(tmp_path, scripts=TEST_SCRIPTS)
    try:
        gateway = running.child(GATEWAY)
        gateway.kill()  # so that one child was started by a supervising thread, not at start-up
        running.output.wait_for("oet-gateway restarted", RESTART_TIMEOUT)
        descendants = psutil.Process(running.process.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in descendants)
        assert all(marker in names for marker in (DATABASE, DEVICE_SERVER, GATEWAY)), names
        running.process.kill()
        running.process.wait(10)
        _, alive = psutil.wait_procs(descendants, timeout=60)
        assert not alive, f"left behind: {[p.cmdline() for p in alive]}"
    finally:
        running.close(check=False)


def test_the_stack_parent_does_not_load_tango(supervised: RunningStack) -> None:
    """Its Tango client work runs in the children that load tango anyway (stack_child.py):
    the long-running parent stays small (issue 17)."""
    maps = Path(f"/proc/{supervised.process.pid}/maps").read_text()
    assert "_tango" not in maps and "libtango" not in maps
    assert psutil.Process(supervised.process.pid).memory_info().rss < 60 * 1024 * 1024
