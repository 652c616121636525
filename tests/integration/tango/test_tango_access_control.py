"""Tango's own access control in front of the OET devices (docs/tango-access-control.md).

The real C++ Tango database with Debian's TangoAccessControl: every user but the operator
gets read access to ``oso/oet/*``. A client running as another Unix user (``nobody``, through
a user namespace) reads every attribute and the commands ``AllowedAccessCmd`` declares, and
is refused Prepare, Start, Stop, Abort and attribute writes; the operator is not.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tango

from ska_oso_oet.tango.ska import ResultCode
from tests.support.cpp_tango import (
    CppTangoDatabase,
    OetServer,
    json2tango,
    require_debian_tango,
)
from tests.support.lrc_client import LrcClient
from tests.support.tango_events import close_hubs
from tests.unit.tango.conftest import write_scripts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
DEVICES = [f"oso/oet/{n}" for n in range(1, 17)]
OPERATOR = pwd.getpwuid(os.geteuid()).pw_name  # the test process is the operator

#: Run as another user: what a read-only Tango client can and cannot do.
VIEWER = r"""
import json, sys
import tango

device = tango.DeviceProxy(sys.argv[1])
report = {"user": __import__("pwd").getpwuid(__import__("os").geteuid()).pw_name}
report["read"] = {
    name: str(device.read_attribute(name).value)[:60]
    for name in ("State", "Status", "adminMode", "procedures", "lastEvent",
                 "runningProcedureState", "procedureStates", "lrcFinished", "commandedState")
}
report["version"] = device.GetVersionInfo()[0]
report["procedure"] = json.loads(device.GetProcedure(sys.argv[2]))["state"]
events = []
sub = device.subscribe_event("lastEvent", tango.EventType.CHANGE_EVENT, events.append)
device.unsubscribe_event(sub)
report["subscribed"] = len(events) > 0
refused = {}
for command, argument in [("Prepare", sys.argv[3]), ("Start", "{}"), ("Stop", "{}"),
                          ("Abort", None), ("Off", None)]:
    try:
        device.command_inout(command, *(() if argument is None else (argument,)))
        refused[command] = None
    except tango.DevFailed as exc:
        refused[command] = exc.args[0].reason
try:
    device.write_attribute("adminMode", 1)
    refused["adminMode"] = None
except tango.DevFailed as exc:
    refused["adminMode"] = exc.args[0].reason
report["refused"] = refused
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CppTangoDatabase, Path]]:
    require_debian_tango()
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is needed to run a client as another user")
    folder = tmp_path_factory.mktemp("tac")
    script_dir = write_scripts(folder / "scripts")
    with CppTangoDatabase(folder / "db") as db:
        json2tango(db.tango_host)
        tango.Database("127.0.0.1", db.port).put_device_property(
            "oso/oet/1", {"ScriptRoots": [str(script_dir)]}
        )
        db.start_access_control()
        # docs/tango-access-control.md, step by step: everybody reads the OET devices, the
        # operator (from any address) writes.
        tac = tango.DeviceProxy(f"tango://{db.tango_host}/sys/access_control/1")
        tac.AddDeviceForUser(["*", "oso/oet/*", "read"])
        tac.AddDeviceForUser([OPERATOR, "*/*/*", "write"])
        tac.AddAddressForUser([OPERATOR, "*.*.*.*"])
        server = OetServer(db.tango_host, folder, {**os.environ, "OET_WARM_WORKERS": "1"})
        try:
            server.start(DEVICES)
            yield db, script_dir
        finally:
            close_hubs()
            server.stop()


def body(script_dir: Path, name: str) -> str:
    uri = f"file://{script_dir / name}"
    return json.dumps({"script": {"script_type": "filesystem", "script_uri": uri}})


def run_as_viewer(db: CppTangoDatabase, *args: str) -> dict:
    nobody = pwd.getpwnam("nobody")
    command = [
        "unshare", "--user", f"--map-user={nobody.pw_uid}", f"--map-group={nobody.pw_gid}",
        sys.executable, "-c", VIEWER, *args,
    ]  # fmt: skip
    env = {**os.environ, "TANGO_HOST": db.tango_host, "HOME": "/tmp"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    if (
        done.returncode != 0
        and "unshare" in done.stderr
        and "Operation not permitted" in (done.stderr)
    ):
        pytest.skip(f"user namespaces are not available here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_read_only_user_reads_everything_and_changes_nothing(
    protected: tuple[CppTangoDatabase, Path],
) -> None:
    db, script_dir = protected
    device = tango.DeviceProxy(f"tango://{db.tango_host}/oso/oet/1")
    prepared = LrcClient(device).invoke("Prepare", body(script_dir, "hello.py"))  # the operator
    assert prepared.result[0] == ResultCode.OK, prepared
    pid = json.loads(prepared.result[1])["id"]
    before = device.procedures

    report = run_as_viewer(
        db, f"tango://{db.tango_host}/oso/oet/1", str(pid), body(script_dir, "hello.py")
    )

    assert report["user"] == "nobody"
    assert report["read"]["State"] == "ON" and str(pid) in report["read"]["procedures"]
    assert report["version"].startswith("OETDevice, ska-oso-oet")
    assert report["procedure"] == "READY" and report["subscribed"]
    assert report["refused"] == {
        name: "API_ReadOnlyMode" for name in ("Prepare", "Start", "Stop", "Abort", "Off")
    } | {"adminMode": "API_ReadOnlyMode"}
    assert device.procedures == before and device.adminMode == 0  # nothing changed
    started = LrcClient(device).invoke("Start", json.dumps({"procedure_id": pid}))
    assert started.result[0] == ResultCode.OK  # while the operator still may
