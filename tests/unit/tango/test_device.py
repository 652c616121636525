"""OETDevice through a DeviceProxy: a real server process with the real engine.

One server per module (see conftest); each test leaves no procedure running.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tango

from ska_oso_oet.tango.ska import ResultCode, TaskStatus
from tests.support.lrc_client import LrcClient, expect_rejected
from tests.support.tango_events import EventTracer

from .conftest import body

pytestmark = pytest.mark.timeout(120)


def decode(value: str) -> dict:
    return json.loads(value)


def reason_of(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.args[0].reason


def stop(device: tango.DeviceProxy, procedure_id: int) -> None:
    """Stop by id: ``runningProcedureId`` may not show a just-started script yet."""
    LrcClient(device).invoke("Stop", json.dumps({"procedure_id": procedure_id, "run_abort": False}))


class TestIdentity:
    def test_initial_state_and_ska_attributes(self, device: tango.DeviceProxy) -> None:
        assert device.state() == tango.DevState.ON
        assert device.healthState == 0  # OK
        assert device.adminMode == 0  # ONLINE
        assert device.subarrayId == 1
        assert tuple(device.lrcProtocolVersions) == (1, 2)
        assert device.versionId
        assert device.GetVersionInfo()[0].startswith("OETDevice, ska-oso-oet")
        assert device.activities == "[]"
        assert device.CheckLongRunningCommandStatus("1_2_Nothing") == "NOT_FOUND"

    def test_enum_labels_are_the_ska_ones(self, device: tango.DeviceProxy) -> None:
        config = device.get_attribute_config("adminMode")
        assert list(config.enum_labels) == [
            "ONLINE",
            "OFFLINE",
            "ENGINEERING",
            "NOT_FITTED",
            "RESERVED",
        ]
        assert list(device.get_attribute_config("healthState").enum_labels) == [
            "OK",
            "DEGRADED",
            "FAILED",
            "UNKNOWN",
        ]

    def test_attributes_and_commands_are_described(self, device: tango.DeviceProxy) -> None:
        for name in ("procedures", "lastEvent", "runningProcedureId", "lrcFinished", "adminMode"):
            assert device.get_attribute_config(name).description not in ("", "No description")
        assert "READY" in device.command_query("Prepare").out_type_desc


class TestProcedures:
    def test_prepare_and_start_complete_through_lrc_v2(
        self, device: tango.DeviceProxy, script_dir: Path
    ) -> None:
        prepared = LrcClient(device, protocol=2).invoke(
            "Prepare", body(script_dir, "hello.py", subarray_id=3)
        )
        assert prepared.result_code == ResultCode.STARTED
        assert prepared.statuses == [
            TaskStatus.STAGING,
            TaskStatus.IN_PROGRESS,
            TaskStatus.COMPLETED,
        ]
        assert prepared.result[0] == ResultCode.OK
        summary = decode(prepared.result[1])
        assert summary["state"] == "READY" and summary["command_id"] == prepared.command_id
        assert {"name", "submitted_time", "started_time", "finished_time"} <= prepared.extra_keys

        started = LrcClient(device, protocol=2).invoke(
            "Start",
            json.dumps(
                {"procedure_id": summary["id"], "script_args": {"main": {"kwargs": {"count": 2}}}}
            ),
        )
        assert started.result[0] == ResultCode.OK
        final = decode(started.result[1])
        assert final["state"] == "COMPLETE"
        assert final["script_args"]["main"] == {"args": [], "kwargs": {"count": 2}}
        assert device.scriptMessage == "hello from subarray 3 #1"
        assert decode(device.GetProcedure(str(summary["id"])))["state"] == "COMPLETE"
        assert decode(device.GetProcedure(prepared.command_id))["id"] == summary["id"]
        assert decode(device.GetProcedure(started.command_id))["id"] == summary["id"]
        assert device.CheckLongRunningCommandStatus(started.command_id) == "COMPLETED"

    def test_lrc_v1_client_gets_result_before_final_status(
        self, device: tango.DeviceProxy, script_dir: Path
    ) -> None:
        outcome = LrcClient(device, protocol=1).invoke("Prepare", body(script_dir, "hello.py"))
        assert outcome.statuses[-1] == TaskStatus.COMPLETED
        assert outcome.result_before_final
        assert outcome.result[0] == ResultCode.OK
        assert outcome.command_id in device.longRunningCommandIDsInQueue
        finished = [json.loads(entry) for entry in device.lrcFinished]
        entry = next(e for e in finished if e["uid"] == outcome.command_id)
        assert (
            entry["name"] == "Prepare"
            and entry["status"] == "COMPLETED"
            and entry["result"][0] == 0
        )

    def test_attributes_follow_the_procedures(
        self, device: tango.DeviceProxy, script_dir: Path
    ) -> None:
        with EventTracer(
            device, ["procedures", "procedureStates", "State", "runningProcedureId"]
        ) as tracer:
            prepared = LrcClient(device).invoke("Prepare", body(script_dir, "forever.py"))
            pid = decode(prepared.result[1])["id"]
            client = LrcClient(device)
            try:
                device.Start(json.dumps({"procedure_id": pid}))
                tracer.wait_for(lambda v: v == pid, "runningProcedureId")
                tracer.wait_for(lambda v: v == tango.DevState.RUNNING, "State")
                assert device.status() == f"Procedure {pid} is running."
                ids, states = list(device.procedureIds), list(device.procedureStates)
                assert states[ids.index(pid)] == "RUNNING"
                assert any(
                    p["id"] == pid and p["state"] == "RUNNING" for p in decode(device.procedures)
                )
            finally:
                stopped = client.invoke("Stop", json.dumps({"procedure_id": pid}))
            tracer.wait_for(lambda v: v == tango.DevState.ON, "State")
            tracer.wait_for(lambda v: v == 0, "runningProcedureId")
        assert stopped.result[0] == ResultCode.OK
        summaries = decode(stopped.result[1])
        assert [s["id"] for s in summaries] == [pid] and summaries[0]["state"] == "STOPPED"

    def test_procedure_states_show_every_transition_in_order(
        self, device: tango.DeviceProxy, script_dir: Path
    ) -> None:
        with EventTracer(device, "procedureStates") as tracer:
            prepared = LrcClient(device).invoke("Prepare", body(script_dir, "hello.py"))
            pid = decode(prepared.result[1])["id"]
            LrcClient(device).invoke("Start", json.dumps({"procedure_id": pid}))
            tracer.wait_for(lambda v: list(v)[-1] == "COMPLETE", "procedureStates")
            newest = [list(v)[-1] for v in tracer.values("procedureStates") if len(v)]
        changes = [s for i, s in enumerate(newest) if i == 0 or newest[i - 1] != s]
        assert changes[-3:] == ["READY", "RUNNING", "COMPLETE"], changes
        assert changes[0] == "CREATING" and "LOADING" in changes

    def test_prepare_completes_while_another_script_runs(
        self, device: tango.DeviceProxy, script_dir: Path
    ) -> None:
        prepared = LrcClient(device).invoke("Prepare", body(script_dir, "forever.py"))
        running_id = decode(prepared.result[1])["id"]
        with EventTracer(device, "_lrcEvent") as tracer:
            (_,), (start_id,) = device.Start(json.dumps({"procedure_id": running_id}))
            try:
                second = LrcClient(device).invoke(
                    "Prepare", body(script_dir, "hello.py"), timeout=20
                )
                assert second.result[0] == ResultCode.OK
                assert decode(second.result[1])["state"] == "READY"
                assert device.CheckLongRunningCommandStatus(start_id) == "IN_PROGRESS"
            finally:
                LrcClient(device).invoke("Stop", json.dumps({}))
            final = tracer.wait_for(
                lambda v: v[0] == start_id and "result" in json.loads(v[1]), "_lrcEvent"
            )
        assert json.loads(final[1])["status"] == TaskStatus.ABORTED
        assert json.loads(final[1])["result"][0] == ResultCode.ABORTED

    def test_failures_complete_failed_with_the_stack_trace(
        self, device: tango.DeviceProxy, script_dir: Path
    ) -> None:
        failed_init = LrcClient(device).invoke("Prepare", body(script_dir, "fail_init.py"))
        assert failed_init.statuses[-1] == TaskStatus.FAILED
        assert failed_init.result[0] == ResultCode.FAILED
        assert "cannot initialise" in failed_init.result[1] and "Traceback" in failed_init.result[1]

        prepared = LrcClient(device).invoke("Prepare", body(script_dir, "fail_main.py"))
        pid = decode(prepared.result[1])["id"]
        failed = LrcClient(device).invoke("Start", json.dumps({"procedure_id": pid}))
        assert failed.statuses[-1] == TaskStatus.FAILED
        assert "boom in main" in failed.result[1]
        assert device.state() == tango.DevState.ON and device.healthState == 0

    def test_abort_stops_and_runs_the_abort_script(
        self, device: tango.DeviceProxy, script_dir: Path
    ) -> None:
        prepared = LrcClient(device).invoke(
            "Prepare", body(script_dir, "forever.py", subarray_id=4)
        )
        pid = decode(prepared.result[1])["id"]
        with EventTracer(device, ["lastEvent", "scriptMessage"]) as tracer:
            device.Start(json.dumps({"procedure_id": pid}))
            tracer.wait_for(lambda v: v == "running", "scriptMessage")
            aborted = LrcClient(device).invoke("Abort")
            tracer.wait_for(lambda v: v == "aborting subarray 4", "scriptMessage")
        summaries = decode(aborted.result[1])
        assert summaries[0]["id"] == pid and summaries[0]["state"] == "STOPPED"
        assert summaries[1]["script"]["script_uri"].endswith("abort.py")

    def test_every_event_arrives_once_in_order(
        self, device: tango.DeviceProxy, script_dir: Path
    ) -> None:
        count = 1000
        prepared = LrcClient(device).invoke("Prepare", body(script_dir, "many.py"))
        pid = decode(prepared.result[1])["id"]
        with EventTracer(device, "lastEvent") as tracer:
            first = len(tracer.values("lastEvent"))
            device.Start(
                json.dumps(
                    {"procedure_id": pid, "script_args": {"main": {"kwargs": {"count": count}}}}
                )
            )
            tracer.wait_for(
                lambda v: json.loads(v)["topic"] == "procedure.lifecycle.complete",
                "lastEvent",
                timeout=60,
                start=first,
            )
            events = [json.loads(v) for v in tracer.values("lastEvent")[first:] if v]
        messages = [e["msg"] for e in events if e["topic"] == "user.script.announce"]
        assert messages == list(range(count))
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "an event was lost or repeated"

    def test_each_state_change_is_followed_by_the_list_that_shows_it(
        self, device: tango.DeviceProxy, script_dir: Path
    ) -> None:
        """The gateway's copy of the list relies on this order (rest/listing.py): on the one
        event channel, every statechange on lastEvent is followed by a procedures value
        showing it before any later event, script messages of a burst included."""
        with EventTracer(device, ["lastEvent", "procedures"]) as tracer:
            first = len(tracer.events)
            prepared = LrcClient(device).invoke("Prepare", body(script_dir, "many.py"))
            pid = decode(prepared.result[1])["id"]
            LrcClient(device).invoke(
                "Start",
                json.dumps(
                    {"procedure_id": pid, "script_args": {"main": {"kwargs": {"count": 20}}}}
                ),
            )
            tracer.wait_for(
                lambda v: json.loads(v)["topic"] == "procedure.lifecycle.complete",
                "lastEvent",
                start=first,
            )
            trace = tracer.events[first:]
        changes = 0
        for index, (name, value) in enumerate(trace):
            event = json.loads(value) if name == "lastevent" else {}
            if (
                event.get("topic") != "procedure.lifecycle.statechange"
                or event["procedure_id"] != pid
            ):
                continue
            changes += 1
            following, listed = trace[index + 1]
            assert following == "procedures", (event["new_state"], trace[index + 1])
            [shown] = [p for p in decode(listed) if p["id"] == pid]
            assert shown["state"] == event["new_state"]
        assert changes >= 6  # CREATING ... READY, RUNNING, COMPLETE


class TestRefusals:
    @pytest.mark.parametrize(
        ("command", "argument", "reason"),
        [
            ("Prepare", "{not json", "OET_INVALID_REQUEST"),
            ("Prepare", "[1, 2]", "OET_INVALID_REQUEST"),
            ("Prepare", '{"script": {"script_uri": "file:///etc/passwd"}}', "OET_INVALID_REQUEST"),
            ("Prepare", '{"scrip": {}}', "OET_INVALID_REQUEST"),
            ("Start", '{"procedure_id": "one"}', "OET_INVALID_REQUEST"),
            ("Start", '{"script_args": {"init": {}}}', "OET_INVALID_REQUEST"),
            ("Stop", '{"run_abort": "yes"}', "OET_INVALID_REQUEST"),
            ("GetProcedure", "99999", "OET_NOT_FOUND"),
            ("GetProcedure", "no-such-command", "OET_NOT_FOUND"),
        ],
    )
    def test_bad_requests_raise_devfailed_with_reason(
        self, device: tango.DeviceProxy, command: str, argument: str, reason: str
    ) -> None:
        with pytest.raises(tango.DevFailed) as excinfo:
            device.command_inout(command, argument)
        assert reason_of(excinfo) == reason
        assert excinfo.value.args[0].desc
        assert device.state() == tango.DevState.ON and device.healthState == 0

    @pytest.mark.parametrize(
        ("command", "argument", "reason"),
        [
            ("Start", '{"procedure_id": 99999}', "OET_NOT_FOUND"),
            ("Stop", '{"procedure_id": 99999}', "OET_NOT_FOUND"),
            ("Stop", "{}", "OET_STATE_CONFLICT"),
        ],
    )
    def test_requests_the_engine_cannot_accept_are_rejected(
        self, device: tango.DeviceProxy, command: str, argument: str, reason: str
    ) -> None:
        finished = len(device.lrcFinished)
        message = expect_rejected(device, command, argument)
        assert message.startswith(f"{reason}: ") and len(message) > len(reason) + 5
        assert len(device.lrcFinished) == finished  # no command id, nothing left behind
        assert device.state() == tango.DevState.ON and device.healthState == 0

    def test_second_start_while_one_runs_is_a_state_conflict(
        self, device: tango.DeviceProxy, script_dir: Path
    ) -> None:
        first = decode(
            LrcClient(device).invoke("Prepare", body(script_dir, "forever.py")).result[1]
        )["id"]
        second = decode(
            LrcClient(device).invoke("Prepare", body(script_dir, "hello.py")).result[1]
        )["id"]
        device.Start(json.dumps({"procedure_id": first}))
        try:
            message = expect_rejected(device, "Start", json.dumps({"procedure_id": second}))
            assert message.startswith("OET_STATE_CONFLICT: ") and "already running" in message
        finally:
            stop(device, first)
        assert device.healthState == 0

    def test_offline_device_refuses_commands(
        self, device: tango.DeviceProxy, script_dir: Path
    ) -> None:
        with EventTracer(device, ["State", "adminMode"]) as tracer:
            device.adminMode = 1  # OFFLINE
            tracer.wait_for(lambda v: v == tango.DevState.DISABLE, "State")
            tracer.wait_for(lambda v: v == 1, "adminMode")
            for command, argument in [
                ("Prepare", body(script_dir, "hello.py")),
                ("Start", "{}"),
                ("Stop", "{}"),
            ]:
                with pytest.raises(tango.DevFailed) as excinfo:
                    device.command_inout(command, argument)
                assert reason_of(excinfo) == "OET_DEVICE_OFFLINE"
            # Abort is accepted in every state; an OFFLINE device with nothing running has
            # nothing to abort and runs no abort script.
            aborted = LrcClient(device).invoke("Abort")
            assert aborted.result == [ResultCode.OK, "[]"]
            device.adminMode = 2  # ENGINEERING works like ONLINE
            tracer.wait_for(lambda v: v == tango.DevState.ON, "State")
        assert (
            LrcClient(device).invoke("Prepare", body(script_dir, "hello.py")).result[0]
            == ResultCode.OK
        )
        device.adminMode = 0

    def test_logging_targets(self, device: tango.DeviceProxy, log_folder: Path) -> None:
        log_file = log_folder / "oet.log"  # file:: targets must be inside LogFolder
        device.loggingTargets = ["tango::logger", f"file::{log_file}"]
        assert sorted(device.loggingTargets) == sorted(["tango::logger", f"file::{log_file}"])
        device.loggingLevel = 5  # DEBUG
        expect_rejected(device, "Start", '{"procedure_id": 99999}')
        device.loggingTargets = ["tango::logger"]
        device.loggingLevel = 4
        line = next(line for line in log_file.read_text().splitlines() if "rejected" in line)
        assert line.startswith("1|") and "|tango-device:oso/oet/1|" in line
        with pytest.raises(tango.DevFailed):
            device.loggingTargets = ["nowhere::x"]


class TestReinitialisation:
    def test_init_command_restarts_the_engine_and_keeps_history(
        self, device: tango.DeviceProxy, script_dir: Path
    ) -> None:
        prepared = LrcClient(device).invoke("Prepare", body(script_dir, "hello.py"))
        ready = decode(prepared.result[1])["id"]
        with EventTracer(device, ["State", "procedures"]) as tracer:
            device.Init()
            tracer.wait_for(lambda v: v == tango.DevState.ON, "State")
            # active procedures are stopped and recorded, never lost
            tracer.wait_for(
                lambda v: (
                    {"id": ready, "state": "STOPPED"}
                    in [{"id": p["id"], "state": p["state"]} for p in json.loads(v)]
                ),
                "procedures",
            )
        again = LrcClient(device).invoke("Prepare", body(script_dir, "hello.py"))
        assert again.result[0] == ResultCode.OK
        assert decode(again.result[1])["id"] > ready
