"""OETDeviceServer under Tango Starter (Debian's tango-starter) and the C++ Tango database.

Starter starts, stops and restarts the server as Astor would; a script running when Starter
stops the server ends cleanly (recorded STOPPED, no process left); the server's SKA log lines
reach Starter's log file (the server logs to stderr, which Starter keeps).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import tango

from ska_oso_oet.tango.ska import ResultCode
from tests.support.cpp_tango import (
    TANGO_BIN,
    CppTangoDatabase,
    json2tango,
    require_debian_tango,
    stop,
)
from tests.support.lrc_client import LrcClient
from tests.support.tango_events import EventTracer, close_hubs
from tests.unit.tango.conftest import write_scripts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
SERVER = "OETDeviceServer/oet"
DEVICE = "oso/oet/1"
TIMEOUT = 90.0


def wait_until(predicate, what, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, (
            f"not within {timeout} s: {what() if callable(what) else what}"
        )
        time.sleep(0.2)  # polling Starter/Tango state, not a test condition


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def is_oet_server(process: psutil.Process, tango_host: str) -> bool:
    """A process started as ``OETDeviceServer oet`` against ``tango_host`` (Starter detaches
    the servers it starts: they are not its children)."""
    with contextlib.suppress(psutil.Error):
        cmdline = process.cmdline()
        return (
            any(part.endswith("OETDeviceServer") for part in cmdline)
            and "oet" in cmdline
            and process.environ().get("TANGO_HOST") == tango_host
        )
    return False


class StarterRig:
    def __init__(self, db: CppTangoDatabase, folder: Path, script_dir: Path):
        self.db = db
        self.folder = folder
        self.script_dir = script_dir
        self.host = socket.gethostname().split(".")[0]
        self.starter_name = f"tango/admin/{self.host}"
        self.logs = folder / "ds.log"
        self.process: subprocess.Popen | None = None

    def proxy(self, name: str) -> tango.DeviceProxy:
        proxy = tango.DeviceProxy(f"tango://{self.db.tango_host}/{name}")
        proxy.set_timeout_millis(15_000)
        return proxy

    @property
    def starter(self) -> tango.DeviceProxy:
        return self.proxy(self.starter_name)

    def diagnostics(self) -> str:
        return (
            f"running={self.running()} stopped={list(self.starter.DevGetStopServers(True))}\n"
            + ((self.folder / "Starter.log").read_text(errors="replace")[-3000:])
        )

    def start_accepted(self) -> bool:
        """DevStart; False while Starter's own polling has not yet seen the server exit."""
        try:
            self.starter.DevStart(SERVER)
        except tango.DevFailed as exc:
            if exc.args[0].reason == "ALREADY_RUNNING":
                return False
            raise
        return True

    def stop_accepted(self) -> bool:
        try:
            self.starter.DevStop(SERVER)
        except tango.DevFailed:
            return False
        return True

    def running(self) -> list[str]:
        return list(self.starter.DevGetRunningServers(True))

    def answering(self) -> bool:
        try:
            self.proxy(DEVICE).ping()
            return self.proxy(DEVICE).state() in (tango.DevState.ON, tango.DevState.RUNNING)
        except tango.DevFailed:
            return False


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StarterRig]:
    require_debian_tango()
    folder = tmp_path_factory.mktemp("starter")
    script_dir = write_scripts(folder / "scripts")
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    # What a facility installs in Starter's StartDsPath: the server's executable.
    # Starter recognises its servers by their command line in /proc, so it must run the
    # installed console script itself (a wrapper running python -m would look "failed").
    entry_point = Path(sys.executable).with_name("OETDeviceServer")
    if not entry_point.exists():
        pytest.skip(f"no OETDeviceServer console script beside {sys.executable}")
    (bin_dir / "OETDeviceServer").symlink_to(entry_point)
    with CppTangoDatabase(folder / "db") as db:
        json2tango(db.tango_host)
        tdb = tango.Database("127.0.0.1", db.port)
        tdb.put_device_property(
            DEVICE,
            {
                "ScriptRoots": [str(script_dir)],
                "StateDatabase": [str(folder / "oet-1.sqlite")],
                "StopGraceSeconds": ["2"],
            },
        )
        rig = StarterRig(db, folder, script_dir)
        rig.logs.mkdir()
        info = tango.DbDevInfo()
        info.name, info._class, info.server = rig.starter_name, "Starter", f"Starter/{rig.host}"
        tdb.add_device(info)
        tdb.put_device_property(
            rig.starter_name,
            {
                "StartDsPath": [str(bin_dir)],
                "LogFileHome": [str(rig.logs)],
                "StartServersAtStartup": ["false"],  # the test starts it
                "ServerStartupTimeout": ["120"],  # 16 devices take more than Starter's 1 s
            },
        )
        server_info = tango.DbServerInfo()
        server_info.name, server_info.host, server_info.mode, server_info.level = (
            SERVER, rig.host, 1, 1,
        )  # fmt: skip
        tdb.put_server_info(server_info)
        env = {**db.env, "OET_WARM_WORKERS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
        with (folder / "Starter.log").open("w") as log:
            rig.process = subprocess.Popen(
                [str(TANGO_BIN / "Starter"), rig.host, "-ORBendPoint", "giop:tcp:127.0.0.1:0"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=folder,
                start_new_session=True,
            )
        try:
            db.wait_for_device(rig.starter_name, rig.process, folder / "Starter.log")
            yield rig
        finally:
            close_hubs()
            with contextlib.suppress(tango.DevFailed, AssertionError):
                # Starter may not have noticed the restarted server yet: then it refuses.
                wait_until(rig.stop_accepted, "Starter accepts DevStop", 30)
                wait_until(lambda: not rig.answering(), "server stopped", 30)
            # whatever happened, nothing this test started outlives it
            for process in psutil.process_iter():
                if is_oet_server(process, db.tango_host):
                    with contextlib.suppress(psutil.Error):
                        process.kill()
            stop(rig.process)


def test_starter_starts_stops_and_restarts_the_server(rig: StarterRig) -> None:
    rig.starter.UpdateServersInfo()
    rig.starter.DevStart(SERVER)
    wait_until(rig.answering, "OETDeviceServer/oet answers after DevStart")
    wait_until(lambda: SERVER in rig.running(), rig.diagnostics)

    # A script runs when Starter stops the server: it must end cleanly.
    device = rig.proxy(DEVICE)
    body = {
        "script": {"script_type": "filesystem", "script_uri": f"file://{rig.script_dir}/forever.py"}
    }
    prepared = LrcClient(device).invoke("Prepare", json.dumps(body))
    assert prepared.result[0] == ResultCode.OK, prepared
    pid = json.loads(prepared.result[1])["id"]
    with EventTracer(device, "scriptMessage") as tracer:
        assert device.Start(json.dumps({"procedure_id": pid}))[0][0] == ResultCode.STARTED
        tracer.wait_for(lambda v: v == "running", "scriptMessage")
    servers = [p for p in psutil.process_iter() if is_oet_server(p, rig.db.tango_host)]
    assert len(servers) == 1, servers
    script_pids = [c.pid for c in servers[0].children(recursive=True)]
    assert script_pids  # the fork server and the script's worker
    close_hubs()

    rig.starter.DevStop(SERVER)
    wait_until(lambda: not rig.answering(), "the server is gone after DevStop")
    wait_until(lambda: SERVER not in rig.running(), "Starter lists it as stopped")
    wait_until(
        lambda: not any(alive(p) for p in script_pids),
        "no script process outlives the server",
        30,
    )
    wait_until(lambda: not alive(servers[0].pid), "the server process has exited", 30)

    wait_until(rig.start_accepted, "Starter accepts DevStart again")  # restart from Starter
    wait_until(rig.answering, "OETDeviceServer/oet answers after the restart")
    history = {p["id"]: p for p in json.loads(rig.proxy(DEVICE).procedures)}
    assert history[pid]["state"] == "STOPPED", history[pid]

    log_files = list(rig.logs.rglob("*")) if rig.logs.exists() else []
    text = "\n".join(f.read_text(errors="replace") for f in log_files if f.is_file())
    assert f"|tango-device:{DEVICE}|" in text, (log_files, text[-2000:])
