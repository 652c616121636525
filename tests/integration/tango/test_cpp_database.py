"""The OET against the real C++ Tango database (Debian's tango-db 9.3 on MariaDB).

Registered from ``deviceservers/oet.json`` with dsconfig, as a facility registers it; run as
``OETDeviceServer oet``; used by SKA-style LRC clients and through the REST gateway. Skipped,
with the reason, only where the Debian packages cannot be installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import tango

from ska_oso_oet.tango.ska import ResultCode, TaskStatus
from tests.support.cpp_tango import (
    DEVICESERVERS_JSON,
    CppTangoDatabase,
    OetServer,
    free_port,
    json2tango,
    require_debian_tango,
    stop,
    tail,
    wait_for_port,
)
from tests.support.lrc_client import LrcClient
from tests.support.tango_events import EventTracer, close_hubs
from tests.unit.tango.conftest import write_scripts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
ALL_DEVICES = [f"oso/oet/{n}" for n in range(1, 17)]


@dataclass
class CppStack:
    db: CppTangoDatabase
    server: OetServer
    script_dir: Path

    def proxy(self, name: str) -> tango.DeviceProxy:
        proxy = tango.DeviceProxy(f"tango://{self.db.tango_host}/{name}")
        proxy.set_timeout_millis(10_000)
        return proxy

    def body(self, script: str) -> str:
        uri = f"file://{self.script_dir / script}"
        return json.dumps({"script": {"script_type": "filesystem", "script_uri": uri}})


@pytest.fixture(scope="module")
def cpp_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CppStack]:
    require_debian_tango()
    folder = tmp_path_factory.mktemp("cpp-tango")
    script_dir = write_scripts(folder / "scripts")
    with CppTangoDatabase(folder / "db") as db:
        json2tango(db.tango_host)
        # What an operator adds for the site: script roots, abort script, a history file.
        tango.Database("127.0.0.1", db.port).put_device_property(
            "oso/oet/1",
            {
                "ScriptRoots": [str(script_dir)],
                "AbortScript": [f"file://{script_dir / 'abort.py'}"],
                "StateDatabase": [str(folder / "oet-1.sqlite")],
            },
        )
        server = OetServer(db.tango_host, folder, {**os.environ, "OET_WARM_WORKERS": "1"})
        try:
            server.start(ALL_DEVICES)
            yield CppStack(db, server, script_dir)
        finally:
            close_hubs()
            server.stop()


def test_oet_json_registers_every_device_and_the_read_only_commands(cpp_stack: CppStack) -> None:
    db = tango.Database("127.0.0.1", cpp_stack.db.port)
    assert "DataBaseds" in db.get_info() or "sys/database/2" in db.get_info()
    exported = db.get_device_exported("oso/oet/*").value_string
    assert sorted(exported) == sorted([*ALL_DEVICES, "oso/oet/groups"])  # + linked groups
    assert db.get_device_property("oso/oet/7", "SubarrayId")["SubarrayId"] == ["7"]
    declared = json.loads(DEVICESERVERS_JSON.read_text())["classes"]["OETDevice"]["properties"]
    allowed = db.get_class_property("OETDevice", "AllowedAccessCmd")["AllowedAccessCmd"]
    assert sorted(allowed) == sorted(declared["AllowedAccessCmd"])
    commands = {c.cmd_name for c in cpp_stack.proxy("oso/oet/1").command_list_query()}
    assert set(allowed) <= commands  # every read-only-safe command exists


@pytest.mark.parametrize("protocol", [1, 2])
def test_a_procedure_runs_end_to_end(cpp_stack: CppStack, protocol: int) -> None:
    device = cpp_stack.proxy("oso/oet/1")
    prepared = LrcClient(device, protocol).invoke("Prepare", cpp_stack.body("hello.py"))
    assert prepared.result[0] == ResultCode.OK, prepared
    pid = json.loads(prepared.result[1])["id"]
    with EventTracer(device, ["lastEvent", "scriptMessage"]) as tracer:
        started = LrcClient(device, protocol).invoke("Start", json.dumps({"procedure_id": pid}))
        tracer.wait_for(lambda v: v.endswith("#2"), "scriptMessage")
    assert started.statuses[-1] == TaskStatus.COMPLETED
    assert json.loads(started.result[1])["state"] == "COMPLETE"
    topics = [json.loads(v)["topic"] for v in tracer.values("lastEvent")]
    assert "procedure.lifecycle.complete" in topics or "user.script.announce" in topics


def test_memorized_admin_mode_survives_a_restart(cpp_stack: CppStack) -> None:
    device = cpp_stack.proxy("oso/oet/3")
    device.adminMode = 1  # OFFLINE: memorized by the C++ database
    assert cpp_stack.server.stop() == 0, cpp_stack.server.log()
    close_hubs()
    cpp_stack.server.start(ALL_DEVICES)
    device = cpp_stack.proxy("oso/oet/3")
    try:
        assert device.adminMode == 1 and device.state() == tango.DevState.DISABLE
        assert cpp_stack.proxy("oso/oet/4").adminMode == 0
        with pytest.raises(tango.DevFailed) as excinfo:
            device.Prepare(cpp_stack.body("hello.py"))
        assert excinfo.value.args[0].reason == "OET_DEVICE_OFFLINE"
        # and the history file of oso/oet/1 came back with the server
        history = json.loads(cpp_stack.proxy("oso/oet/1").procedures)
        assert any(p["state"] == "COMPLETE" for p in history)
    finally:
        with EventTracer(device, "State") as tracer:
            device.adminMode = 0
            tracer.wait_for(lambda v: v == tango.DevState.ON, "State")


def test_the_gateway_in_front(cpp_stack: CppStack, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "gateway.log"
    command = [
        sys.executable, "-m", "ska_oso_oet.rest.server", "--host", "127.0.0.1",
        "--port", str(port), "--device", "oso/oet/1", "--tango-host", cpp_stack.db.tango_host,
    ]  # fmt: skip
    with log_path.open("w") as log:
        gateway = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_port(port, gateway, log_path, 60)
        base = f"http://127.0.0.1:{port}/api/v1.0"
        with httpx.Client(base_url=base, timeout=30) as client:
            deadline = time.monotonic() + 60
            while client.get(f"http://127.0.0.1:{port}/health").status_code != 200:
                assert time.monotonic() < deadline, tail(log_path)
                time.sleep(0.2)  # polling /health: 200 once the gateway reached its device
            created = client.post(
                "/procedures",
                json={
                    "script": {
                        "script_type": "filesystem",
                        "script_uri": f"file://{cpp_stack.script_dir / 'hello.py'}",
                    }
                },
            )
            assert created.status_code == 201, created.text
            pid = created.json()["procedure"]["id"]
            missing = client.put("/procedures/4242", json={"state": "RUNNING"})
            assert missing.status_code == 404, missing.text  # a REJECTED reply keeps its reason
            listed = client.get("/procedures").json()["procedures"]
            assert pid in [p["id"] for p in listed]
        assert "loggingLevel" not in tail(log_path, 400)
    finally:
        stop(gateway)
