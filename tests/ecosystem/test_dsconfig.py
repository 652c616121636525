"""``deviceservers/oet.json`` loads into a Tango database with dsconfig's ``json2tango``.

This is what a facility (and the Helm chart's dsconfig job) does to register the OET devices,
so the test uses the real tool on a fresh database and reads the result back with the Tango
API: servers, classes, devices and every property as the file gives them. It also pins the
exit codes the chart's job relies on: 2 after applying changes, 0 when nothing changed.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import tango

from ska_oso_oet import stack

from .conftest import REPO, require_executable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
CONFIG = REPO / "deviceservers" / "oet.json"


@pytest.fixture()
def fresh_database(tmp_path: Path) -> Iterator[str]:
    """TANGO_HOST of a new, empty Tango database (PyDatabaseds on sqlite)."""
    processes = stack.Stack()
    try:
        db, port = stack.start_database(tmp_path, "127.0.0.1", 0, dict(os.environ))
        processes.add("PyDatabaseds", db)
        yield f"127.0.0.1:{port}"
    finally:
        processes.stop()


def json2tango(tango_host: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [require_executable("json2tango"), *args]
    env = {**os.environ, "TANGO_HOST": tango_host}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_json2tango_registers_every_device_with_its_properties(fresh_database: str) -> None:
    expected = json.loads(CONFIG.read_text())["servers"]
    applied = json2tango(fresh_database, "-w", "-a", "-u", str(CONFIG))
    assert applied.returncode == 2, applied.stdout + applied.stderr  # 2: changes were written

    host, port = fresh_database.split(":")
    db = tango.Database(host, int(port))
    for server, instances in expected.items():
        for instance, classes in instances.items():
            listed = db.get_device_class_list(f"{server}/{instance}").value_string
            registered = dict(zip(listed[0::2], listed[1::2], strict=True))
            for klass, devices in classes.items():
                for name, config in devices.items():
                    assert registered.get(name) == klass, (name, registered)
                    wanted = config.get("properties", {})
                    stored = db.get_device_property(name, list(wanted))
                    assert {k: list(v) for k, v in stored.items()} == wanted, name
    oet_devices = [d for d in registered if registered[d] == "OETDevice"]
    assert sorted(oet_devices, key=lambda d: int(d.rsplit("/", 1)[1])) == [
        f"oso/oet/{n}" for n in range(1, 17)
    ]
    assert registered["oso/oet/groups"] == "OETGroups"  # linked groups, in the same server

    again = json2tango(fresh_database, "-w", "-a", "-u", str(CONFIG))
    assert again.returncode == 0, again.stdout + again.stderr  # 0: already up to date


def test_the_registered_configuration_runs_the_device_server(
    fresh_database: str, tmp_path: Path
) -> None:
    """Devices registered by json2tango (not by oet-stack) start and answer."""
    only_two = json.loads(CONFIG.read_text())
    devices = only_two["servers"]["OETDeviceServer"]["oet"]["OETDevice"]
    for name in [d for d in devices if d not in ("oso/oet/1", "oso/oet/2")]:
        del devices[name]
    trimmed = tmp_path / "oet-two.json"
    trimmed.write_text(json.dumps(only_two))
    assert json2tango(fresh_database, "-w", "-a", "-u", str(trimmed)).returncode == 2

    env = {**os.environ, "TANGO_HOST": fresh_database, "OET_WARM_WORKERS": "1"}
    server = stack.start_device_server(tmp_path, "127.0.0.1", env)
    try:
        stack.wait_for_devices(fresh_database, ["oso/oet/1", "oso/oet/2"], server, tmp_path)
        proxy = tango.DeviceProxy(f"tango://{fresh_database}/oso/oet/2")
        assert proxy.subarrayId == 2
        assert proxy.state() == tango.DevState.ON
    finally:
        stack.stop_process(server)
