"""How oet-stack starts its device server (stack_child.py): started before the database
answers, it registers its devices once the database does, and reports the devices that answer
through a DeviceProxy; the stack refuses a server that does not serve what it asked for."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest
import tango

from ska_oso_oet import stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _properties(data_dir: Path, names: list[str]) -> dict[str, dict[str, list[str]]]:
    options = stack.build_parser().parse_args(["--data-dir", str(data_dir)])
    return {
        name: stack.device_properties({"SubarrayId": [name[-1]]}, name, options) for name in names
    }


def test_a_server_started_before_the_database_registers_its_devices_and_reports_them(
    tmp_path: Path,
) -> None:
    processes = stack.Stack()
    env = stack.child_environment({**os.environ, "OET_WARM_WORKERS": "0"})
    names = ["oso/oet/1", "oso/oet/2"]
    address = stack.TangoHost()
    try:
        # The server first: it imports and waits for the address, as in oet-stack.
        server = stack.start_device_server(
            tmp_path, "127.0.0.1", env, address, _properties(tmp_path, names)
        )
        processes.add(stack.SERVER, server)
        database = stack.spawn_database(tmp_path, "127.0.0.1", 0, env)
        processes.add(stack.DATABASE, database)
        tango_host = f"127.0.0.1:{stack.database_port(database, tmp_path)}"
        address.set(tango_host)
        stack.wait_for_devices(tango_host, names, server, tmp_path)
        host, port = tango_host.split(":")
        db = tango.Database(host, int(port))
        served = db.get_device_class_list(f"{stack.SERVER}/{stack.INSTANCE}").value_string
        assert set(names) <= set(served[0::2])
        assert db.get_device_property("oso/oet/2", "SubarrayId")["SubarrayId"] == ["2"]
        proxy = tango.DeviceProxy(f"tango://{tango_host}/oso/oet/2")
        assert proxy.subarrayId == 2
    finally:
        processes.stop()


def _database_then_server(
    tmp_path: Path, processes: stack.Stack, env: dict[str, str], hold: bool = False
) -> stack.ChildProcess:
    """A database, then a device server serving oso/oet/1 against it (``env`` gets its
    TANGO_HOST); both are added to ``processes``."""
    database, port = stack.start_database(tmp_path, "127.0.0.1", 0, env)
    processes.add(stack.DATABASE, database)
    env["TANGO_HOST"] = f"127.0.0.1:{port}"
    server = stack.start_device_server(
        tmp_path, "127.0.0.1", env, register=_properties(tmp_path, ["oso/oet/1"]), hold=hold
    )
    processes.add(stack.SERVER, server)
    return server


def test_a_device_the_server_does_not_serve_is_named(tmp_path: Path) -> None:
    processes = stack.Stack()
    env = stack.child_environment({**os.environ, "OET_WARM_WORKERS": "0"})
    try:
        server = _database_then_server(tmp_path, processes, env)
        with pytest.raises(RuntimeError, match="does not serve oso/oet/3"):
            stack.wait_for_devices(env["TANGO_HOST"], ["oso/oet/1", "oso/oet/3"], server, tmp_path)
    finally:
        processes.stop()


def test_telemetry_patching_is_off_unless_telemetry_is_asked_for() -> None:
    assert stack.child_environment({})["PYTANGO_DISABLE_TELEMETRY_PATCHING"] == "1"
    asked = stack.child_environment({"TANGO_TELEMETRY_ENABLE": "on"})
    assert "PYTANGO_DISABLE_TELEMETRY_PATCHING" not in asked
    kept = stack.child_environment({"PYTANGO_DISABLE_TELEMETRY_PATCHING": "0"})
    assert kept["PYTANGO_DISABLE_TELEMETRY_PATCHING"] == "0"


def _fork_servers(server: stack.ChildProcess) -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process(server.pid).children()
        if "--zygote" in " ".join(child.cmdline())
    ]


def test_a_held_server_starts_its_fork_server_once_released(tmp_path: Path) -> None:
    """oet-stack holds the device server's stdin until its gateway answers: the worker fork
    server (a tango import of its own) must not compete with the gateway's start."""
    processes = stack.Stack()
    env = stack.child_environment({**os.environ, "OET_WARM_WORKERS": "1"})
    try:
        server = _database_then_server(tmp_path, processes, env, hold=True)
        stack.wait_for_devices(env["TANGO_HOST"], ["oso/oet/1"], server, tmp_path)
        assert _fork_servers(server) == [], "held: no fork server yet"
        server.release()
        deadline = time.monotonic() + 60
        while not _fork_servers(server):
            assert time.monotonic() < deadline, "no fork server after the release"
            time.sleep(0.05)  # waiting for the device server to start it
    finally:
        processes.stop()
