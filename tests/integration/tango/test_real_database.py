"""OETDeviceServer against a real sqlite Tango database, driven as users drive it."""

from __future__ import annotations

import json
import statistics
import time

import pytest
import tango

from ska_oso_oet.tango.ska import ResultCode, TaskStatus
from tests.support.lrc_client import LrcClient, expect_rejected
from tests.support.tango_events import EventTracer

from .conftest import DEVICES, RealStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def summary_of(outcome) -> dict:
    return json.loads(outcome.result[1])


def test_devices_are_registered_and_exported(real_stack: RealStack) -> None:
    host, port = real_stack.tango_host.split(":")
    db = tango.Database(host, int(port))
    exported = sorted(db.get_device_exported("oso/oet/*").value_string)
    assert exported == sorted([*DEVICES, "oso/oet/groups"])  # + the linked groups device
    assert db.get_device_property("oso/oet/2", "SubarrayId")["SubarrayId"] == ["2"]
    for n, name in enumerate(DEVICES, start=1):
        proxy = real_stack.proxy(name)
        assert proxy.state() == tango.DevState.ON
        assert proxy.subarrayId == n


@pytest.mark.parametrize("protocol", [1, 2])
def test_ska_lrc_client_runs_a_script(real_stack: RealStack, protocol: int) -> None:
    device = real_stack.proxy("oso/oet/1")
    prepared = LrcClient(device, protocol).invoke(
        "Prepare", real_stack.body("hello.py", subarray_id=1)
    )
    assert prepared.statuses[-1] == TaskStatus.COMPLETED and prepared.result[0] == ResultCode.OK
    started = LrcClient(device, protocol).invoke(
        "Start", json.dumps({"procedure_id": summary_of(prepared)["id"]})
    )
    assert started.statuses[-1] == TaskStatus.COMPLETED
    assert summary_of(started)["state"] == "COMPLETE"


def test_subarrays_are_independent(real_stack: RealStack) -> None:
    one, two = (real_stack.proxy(name) for name in DEVICES)
    long_running = summary_of(LrcClient(one).invoke("Prepare", real_stack.body("forever.py")))["id"]
    with EventTracer(one, "State") as tracer:
        one.Start(json.dumps({"procedure_id": long_running}))
        tracer.wait_for(lambda v: v == tango.DevState.RUNNING, "State")
        try:
            crashing = summary_of(
                LrcClient(two).invoke("Prepare", real_stack.body("fail_main.py"))
            )["id"]
            failed = LrcClient(two).invoke("Start", json.dumps({"procedure_id": crashing}))
            assert failed.statuses[-1] == TaskStatus.FAILED and "boom in main" in failed.result[1]
            assert two.state() == tango.DevState.ON and two.healthState == 0
            assert one.state() == tango.DevState.RUNNING and one.runningProcedureId == long_running
        finally:
            stopped = LrcClient(one).invoke("Stop", "{}")
    assert json.loads(stopped.result[1])[0]["state"] == "STOPPED"


def test_refusals_have_reasons_and_leave_the_device_healthy(
    real_stack: RealStack,
) -> None:
    device = real_stack.proxy("oso/oet/2")
    first = summary_of(LrcClient(device).invoke("Prepare", real_stack.body("forever.py")))["id"]
    second = summary_of(LrcClient(device).invoke("Prepare", real_stack.body("hello.py")))["id"]
    device.Start(json.dumps({"procedure_id": first}))
    try:
        for command, argument, reason in [
            ("Prepare", "{oops", "OET_INVALID_REQUEST"),
            ("GetProcedure", "4242", "OET_NOT_FOUND"),
        ]:
            with pytest.raises(tango.DevFailed) as excinfo:
                device.command_inout(command, argument)
            assert excinfo.value.args[0].reason == reason, (command, argument)
            assert excinfo.value.args[0].desc
        for command, argument, reason in [
            ("Start", json.dumps({"procedure_id": 4242}), "OET_NOT_FOUND"),
            ("Start", json.dumps({"procedure_id": second}), "OET_STATE_CONFLICT"),
        ]:
            assert expect_rejected(device, command, argument).startswith(f"{reason}: ")
    finally:
        LrcClient(device).invoke("Stop", json.dumps({"procedure_id": first}))
    assert device.healthState == 0 and device.state() == tango.DevState.ON


def test_admin_mode_and_history_survive_a_server_restart(real_stack: RealStack) -> None:
    device = real_stack.proxy("oso/oet/2")
    done = LrcClient(device).invoke("Prepare", real_stack.body("hello.py"))
    pid = summary_of(done)["id"]
    device.adminMode = 1  # OFFLINE, memorized in the Tango database
    assert real_stack.stop_server() == 0
    real_stack.start_server()
    device = real_stack.proxy("oso/oet/2")
    try:
        assert device.adminMode == 1 and device.state() == tango.DevState.DISABLE
        with pytest.raises(tango.DevFailed) as excinfo:
            device.Prepare(real_stack.body("hello.py"))
        assert excinfo.value.args[0].reason == "OET_DEVICE_OFFLINE"
        history = {p["id"]: p for p in json.loads(device.procedures)}
        assert pid in history  # recorded before the restart (it was READY: now finished)
        assert history[pid]["state"] in ("FAILED", "STOPPED")
    finally:
        with EventTracer(device, "State") as tracer:
            device.adminMode = 0  # the device applies it on its event thread, a moment later
            tracer.wait_for(lambda v: v == tango.DevState.ON, "State")
    assert real_stack.proxy("oso/oet/2").state() == tango.DevState.ON


def test_measure_start_latency_and_event_throughput(
    real_stack: RealStack, capsys: pytest.CaptureFixture
) -> None:
    """Figures for the report: Start -> RUNNING event latency, and lastEvent throughput."""
    device = real_stack.proxy("oso/oet/1")
    latencies = []
    with EventTracer(device, "lastEvent") as tracer:
        for _ in range(10):
            pid = summary_of(LrcClient(device).invoke("Prepare", real_stack.body("hello.py")))["id"]
            start_index = len(tracer.values("lastEvent"))
            t0 = time.perf_counter()
            device.Start(
                json.dumps({"procedure_id": pid, "script_args": {"main": {"kwargs": {"count": 0}}}})
            )
            tracer.wait_for(
                lambda v, pid=pid: (
                    json.loads(v).get("new_state") == "RUNNING"
                    and json.loads(v)["procedure_id"] == pid
                ),
                "lastEvent",
                start=start_index,
            )
            latencies.append(time.perf_counter() - t0)
            tracer.wait_for(
                lambda v, pid=pid: (
                    json.loads(v)["topic"] == "procedure.lifecycle.complete"
                    and json.loads(v)["procedure_id"] == pid
                ),
                "lastEvent",
                start=start_index,
            )

        count = 5000
        pid = summary_of(LrcClient(device).invoke("Prepare", real_stack.body("many.py")))["id"]
        start_index = len(tracer.values("lastEvent"))
        device.Start(
            json.dumps({"procedure_id": pid, "script_args": {"main": {"kwargs": {"count": count}}}})
        )
        tracer.wait_for(
            lambda v: json.loads(v)["topic"] == "procedure.lifecycle.complete",
            "lastEvent",
            timeout=120,
            start=start_index,
        )
        arrivals = tracer.timed("lastEvent")[start_index:]
    announces = [
        (t, json.loads(v)) for t, v in arrivals if json.loads(v)["topic"] == "user.script.announce"
    ]
    assert [m["msg"] for _, m in announces] == list(range(count))
    first, last = announces[0][0], announces[-1][0]
    median_ms = statistics.median(latencies) * 1000
    with capsys.disabled():
        print(
            f"\n[tango figures] Start->RUNNING event latency: median {median_ms:.1f} ms, "
            f"max {max(latencies) * 1000:.1f} ms over {len(latencies)} runs; "
            f"{count} script messages received by a Tango client in {last - first:.2f} s "
            f"({count / max(last - first, 1e-9):.0f} events/s), all in order"
        )
    assert median_ms < 1000


def test_server_logs_in_the_ska_format(real_stack: RealStack) -> None:
    lines = (real_stack.data_dir / "OETDeviceServer.log").read_text().splitlines()
    device_lines = [line for line in lines if "|tango-device:oso/oet/1|" in line]
    assert device_lines, lines[-10:]
    fields = device_lines[0].split("|")
    assert (
        fields[0] == "1" and fields[1].endswith("Z") and fields[2] in ("INFO", "WARNING", "DEBUG")
    )
    assert "#" in fields[5] and len(fields) >= 8
