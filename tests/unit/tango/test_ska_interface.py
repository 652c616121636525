"""The SKABaseDevice interface as an SKA client sees it: every long-running command through an
``invoke_lrc``-style client (protocols v1 and v2), including REJECTED and FAILED outcomes; the
power commands On/Off/Standby; Reset recovering a real FAULT; Abort accepted everywhere."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import tango

from ska_oso_oet.tango.device import INITIAL_EVENT_TOPIC, OETDevice
from ska_oso_oet.tango.ska import ResultCode, TaskStatus
from tests.support.lrc_client import LrcClient, expect_rejected
from tests.support.tango_events import EventTracer, close_hubs
from tests.support.tango_server import DeviceServerProcess

from .conftest import DEVICE, SERVER_COMMAND, body

pytestmark = pytest.mark.timeout(180)
PROTOCOLS = [1, 2]


def summary(outcome) -> dict:
    return json.loads(outcome.result[1])


def prepared(device: tango.DeviceProxy, script_dir: Path, name: str, protocol: int = 2) -> int:
    outcome = LrcClient(device, protocol).invoke("Prepare", body(script_dir, name))
    assert outcome.result[0] == ResultCode.OK, outcome
    return summary(outcome)["id"]


def finished(tracer: EventTracer, pid: int) -> None:
    """Wait until procedure ``pid`` has ended (``tracer`` follows ``procedures``)."""
    tracer.wait_for(
        lambda v: any(
            p["id"] == pid and p["state"] in ("COMPLETE", "FAILED", "STOPPED")
            for p in json.loads(v)
        ),
        "procedures",
    )


def test_the_ska_base_interface_is_declared() -> None:
    commands = {"On", "Off", "Standby", "Reset", "Abort", "AbortCommands", "DebugDevice"}
    commands |= {"GetVersionInfo", "CheckLongRunningCommandStatus"}
    attributes = {"commandedState", "adminMode", "healthState", "lrcProtocolVersions"}
    properties = {"SkaLevel", "GroupDefinitions", "LoggingLevelDefault", "LoggingTargetsDefault"}
    assert commands <= set(OETDevice.TangoClassClass.cmd_list)
    assert attributes <= set(OETDevice.TangoClassClass.attr_list)
    assert properties <= set(OETDevice.TangoClassClass.device_property_list)


@pytest.mark.parametrize("protocol", PROTOCOLS)
class TestEveryCommandThroughAnLrcClient:
    def test_prepare_start_complete(
        self, device: tango.DeviceProxy, script_dir: Path, protocol: int
    ) -> None:
        pid = prepared(device, script_dir, "hello.py", protocol)
        started = LrcClient(device, protocol).invoke("Start", json.dumps({"procedure_id": pid}))
        assert started.statuses[-1] == TaskStatus.COMPLETED
        assert started.result[0] == ResultCode.OK and summary(started)["state"] == "COMPLETE"

    def test_failed_outcomes(
        self, device: tango.DeviceProxy, script_dir: Path, protocol: int
    ) -> None:
        bad_init = LrcClient(device, protocol).invoke("Prepare", body(script_dir, "fail_init.py"))
        assert (
            bad_init.statuses[-1] == TaskStatus.FAILED and bad_init.result[0] == ResultCode.FAILED
        )
        assert "cannot initialise" in bad_init.result[1]
        pid = prepared(device, script_dir, "fail_main.py", protocol)
        failed = LrcClient(device, protocol).invoke("Start", json.dumps({"procedure_id": pid}))
        assert failed.statuses[-1] == TaskStatus.FAILED and failed.result[0] == ResultCode.FAILED
        assert "boom in main" in failed.result[1]

    def test_rejected_outcomes(self, device: tango.DeviceProxy, protocol: int) -> None:
        for command, argument in [
            ("Start", json.dumps({"procedure_id": 4242})),
            ("Stop", json.dumps({"procedure_id": 4242})),
            ("Stop", "{}"),
        ]:
            outcome = LrcClient(device, protocol).invoke(command, argument)
            assert outcome.result_code == ResultCode.REJECTED, outcome
            assert outcome.command_id.startswith(("OET_NOT_FOUND: ", "OET_STATE_CONFLICT: "))

    def test_stop_and_abort_a_running_script(
        self, device: tango.DeviceProxy, script_dir: Path, protocol: int
    ) -> None:
        for command, argument in [("Stop", "{}"), ("Abort", None), ("AbortCommands", None)]:
            pid = prepared(device, script_dir, "forever.py", protocol)
            with EventTracer(device, ["scriptMessage", "procedures"]) as tracer:
                (code,), _ = device.Start(json.dumps({"procedure_id": pid}))
                assert code == ResultCode.STARTED
                tracer.wait_for(lambda v: v == "running", "scriptMessage")
                outcome = LrcClient(device, protocol).invoke(command, argument)
                assert outcome.statuses[-1] == TaskStatus.COMPLETED, (command, outcome)
                listed = json.loads(outcome.result[1])
                assert listed[0]["id"] == pid and listed[0]["state"] == "STOPPED"
                if command != "Stop":  # Abort runs the abort script after the stop
                    assert listed[1]["script"]["script_uri"].endswith("abort.py")
                    finished(tracer, listed[1]["id"])  # before the next script can start

    def test_abort_with_nothing_running_runs_the_abort_script(
        self, device: tango.DeviceProxy, protocol: int
    ) -> None:
        with EventTracer(device, "scriptMessage") as tracer:
            outcome = LrcClient(device, protocol).invoke("Abort")
            tracer.wait_for(lambda v: v == "aborting subarray 1", "scriptMessage")
        assert outcome.statuses[-1] == TaskStatus.COMPLETED and outcome.result[0] == ResultCode.OK
        (abort,) = json.loads(outcome.result[1])
        assert abort["state"] == "COMPLETE" and abort["script"]["script_uri"].endswith("abort.py")

    def test_power_commands_and_reset(
        self, device: tango.DeviceProxy, script_dir: Path, protocol: int
    ) -> None:
        try:
            for command, state in [("Standby", "STANDBY"), ("Off", "OFF"), ("On", "ON")]:
                outcome = LrcClient(device, protocol).invoke(command)
                assert outcome.statuses[-1] == TaskStatus.COMPLETED, outcome
                assert outcome.result[0] == ResultCode.OK
                assert device.commandedState == state
            reset = LrcClient(device, protocol).invoke("Reset")
            assert reset.result == [ResultCode.OK, "nothing to reset: the script engine works"]
        finally:
            # Waited for: State follows On on the event thread, before the LRC completes.
            LrcClient(device).invoke("On")


class TestPowerStates:
    def test_off_stops_every_unfinished_procedure_and_refuses_new_scripts(
        self, device: tango.DeviceProxy, script_dir: Path
    ) -> None:
        ready = prepared(device, script_dir, "hello.py")
        running = prepared(device, script_dir, "forever.py")
        try:
            with EventTracer(device, ["State", "scriptMessage"]) as tracer:
                assert (
                    device.Start(json.dumps({"procedure_id": running}))[0][0] == ResultCode.STARTED
                )
                tracer.wait_for(lambda v: v == "running", "scriptMessage")
                off = LrcClient(device).invoke("Off")
                tracer.wait_for(lambda v: v == tango.DevState.OFF, "State")
            stopped = {s["id"]: s["state"] for s in json.loads(off.result[1])}
            assert stopped == {ready: "STOPPED", running: "STOPPED"}
            assert "OFF" in device.status() and device.commandedState == "OFF"
            for command, argument in [
                ("Prepare", body(script_dir, "hello.py")),
                ("Start", "{}"),
                ("RunActivity", json.dumps({"activity_name": "a", "sbd_id": "sbd-1"})),
            ]:
                with pytest.raises(tango.DevFailed) as excinfo:
                    device.command_inout(command, argument)
                assert excinfo.value.args[0].reason == "OET_STATE_CONFLICT", command
                assert "send On" in excinfo.value.args[0].desc
        finally:
            # Waited for: State follows On on the event thread, before the LRC completes.
            LrcClient(device).invoke("On")
        assert prepared(device, script_dir, "hello.py") > running

    def test_standby_lets_the_running_script_finish(
        self, device: tango.DeviceProxy, script_dir: Path
    ) -> None:
        running = prepared(device, script_dir, "forever.py")
        try:
            with EventTracer(device, ["State", "scriptMessage"]) as tracer:
                assert (
                    device.Start(json.dumps({"procedure_id": running}))[0][0] == ResultCode.STARTED
                )
                tracer.wait_for(lambda v: v == "running", "scriptMessage")
                LrcClient(device).invoke("Standby")
                tracer.wait_for(lambda v: v == tango.DevState.STANDBY, "State")
            assert device.runningProcedureId == running and f"procedure {running}" in (
                device.status()
            )
            with pytest.raises(tango.DevFailed):
                device.Prepare(body(script_dir, "hello.py"))
            stopped = LrcClient(device).invoke("Stop", "{}")  # stopping is always allowed
            assert json.loads(stopped.result[1])[0]["state"] == "STOPPED"
        finally:
            # Waited for: State follows On on the event thread, before the LRC completes.
            LrcClient(device).invoke("On")
        assert device.state() in (tango.DevState.ON, tango.DevState.RUNNING)

    def test_power_commands_are_refused_when_offline(self, device: tango.DeviceProxy) -> None:
        with EventTracer(device, "State") as tracer:
            device.adminMode = 1
            tracer.wait_for(lambda v: v == tango.DevState.DISABLE, "State")
            for command in ("On", "Off", "Standby", "Reset"):
                with pytest.raises(tango.DevFailed) as excinfo:
                    device.command_inout(command)
                assert excinfo.value.args[0].reason == "OET_DEVICE_OFFLINE", command
            device.adminMode = 0
            tracer.wait_for(lambda v: v == tango.DevState.ON, "State")


# ----- a fresh server: initial values, DebugDevice, and a real FAULT recovered by Reset ------
@pytest.fixture
def fresh(script_dir: Path, tmp_path: Path) -> Iterator[tuple[DeviceServerProcess, int]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        debug_port = s.getsockname()[1]
    properties = {
        "ScriptRoots": [str(script_dir)],
        "StateDatabase": str(tmp_path / "oet.sqlite"),
        "StopGraceSeconds": 1.0,
        "WarmWorkers": 1,
        "DebugPort": debug_port,
        "GroupDefinitions": ['{"group_name": "none", "devices": []}', "{not json"],
    }
    env = {"OET_WARM_WORKERS": "1"}
    with DeviceServerProcess(
        SERVER_COMMAND, {DEVICE: properties}, "OETDeviceServer/fresh", env=env
    ) as process:
        yield process, debug_port
        close_hubs()


def test_initial_values_and_debug_device(fresh: tuple[DeviceServerProcess, int]) -> None:
    server, debug_port = fresh
    device = server.proxy(DEVICE)
    first = json.loads(device.lastEvent)
    assert first["topic"] == INITIAL_EVENT_TOPIC and first["seq"] == 0
    assert first["msg_src"] == DEVICE and isinstance(first["timestamp"], float)
    assert device.commandedState == "None"
    assert "ignoring a GroupDefinitions entry that is not JSON" in server.output()
    assert device.DebugDevice() == debug_port
    assert device.DebugDevice() == debug_port  # once per process
    with socket.create_connection(("127.0.0.1", debug_port), timeout=10):
        pass


def kill_fork_servers_until_fault(server: DeviceServerProcess, device: tango.DeviceProxy) -> None:
    """Kill each fork server the launcher starts until the device gives up on them."""
    deadline = time.monotonic() + 120
    killed: set[int] = set()
    while device.state() != tango.DevState.FAULT:
        assert time.monotonic() < deadline, f"no FAULT after killing {len(killed)} fork servers"
        for child in psutil.Process(server.process.pid).children():
            if child.pid not in killed:
                killed.add(child.pid)
                child.kill()
        time.sleep(0.05)  # polling the server's children, not a test condition


def test_reset_recovers_a_device_whose_fork_server_died(
    fresh: tuple[DeviceServerProcess, int], script_dir: Path
) -> None:
    server, _ = fresh
    device = server.proxy(DEVICE)
    assert prepared(device, script_dir, "hello.py") == 1
    with EventTracer(device, "State") as tracer:
        # A dead fork server is restarted at once, but one that keeps dying (six times within
        # a minute) is not: the device is then in FAULT until Reset.
        kill_fork_servers_until_fault(server, device)
        tracer.wait_for(lambda v: v == tango.DevState.FAULT, "State", timeout=30)
        assert device.healthState == 2
        with pytest.raises(tango.DevFailed) as excinfo:
            device.On()
        assert excinfo.value.args[0].reason == "API_CommandNotAllowed"
        assert "Reset" in excinfo.value.args[0].desc
        aborted = LrcClient(device).invoke("Abort")  # accepted in FAULT too
        assert aborted.statuses[-1] == TaskStatus.COMPLETED
        reset = LrcClient(device).invoke("Reset", timeout=60)
        assert reset.result == [ResultCode.OK, "the script engine works again"]
        tracer.wait_for(lambda v: v == tango.DevState.ON, "State")
    assert device.healthState == 0
    pid = prepared(device, script_dir, "hello.py")
    assert pid == 101  # the history survived the engine's rebuild (ids: n * 100 + subarray 1)
    done = LrcClient(device).invoke("Start", json.dumps({"procedure_id": pid}))
    assert summary(done)["state"] == "COMPLETE"
    assert expect_rejected(device, "Start", json.dumps({"procedure_id": pid})).startswith(
        "OET_STATE_CONFLICT"
    )


def test_the_gateway_confirms_its_event_channel_without_writing_to_the_device(
    server: DeviceServerProcess, device: tango.DeviceProxy
) -> None:
    import asyncio

    from ska_oso_oet.rest.client import TangoDeviceClient
    from ska_oso_oet.rest.hub import EventHub

    device.loggingLevel = 5  # an operator's choice the gateway must leave alone
    try:
        with EventTracer(device, ["loggingLevel", "eventProbe"]) as tracer:
            client = TangoDeviceClient(server.access(DEVICE), EventHub())
            client._connect()
            probe = tracer.wait_for(lambda v: v.startswith("gateway-"), "eventProbe")
            asyncio.run(client.close())
            levels = tracer.values("loggingLevel")
        assert probe and levels == []  # every write pushes loggingLevel: none happened
        assert device.loggingLevel == 5
    finally:
        device.loggingLevel = 4
