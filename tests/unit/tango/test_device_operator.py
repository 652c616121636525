"""Operator control through a real OETDevice: Pause/Resume, inputRequest + Answer, progress on
the LRC attributes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tango

from ska_oso_oet.tango.ska import ResultCode, TaskStatus
from tests.support.lrc_client import LrcClient
from tests.support.tango_events import EventTracer

from .conftest import body, write_scripts

pytestmark = pytest.mark.timeout(120)
TEST_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def script_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = write_scripts(tmp_path_factory.mktemp("scripts"))
    for name in ("checkpoints.py", "asks.py"):
        shutil.copy(TEST_SCRIPTS / name, folder / name)
    return folder


def prepare(device: tango.DeviceProxy, script_dir: Path, name: str) -> int:
    prepared = LrcClient(device).invoke("Prepare", body(script_dir, name))
    assert prepared.result[0] == ResultCode.OK, prepared
    return json.loads(prepared.result[1])["id"]


def states(device: tango.DeviceProxy, pid: int) -> list[str]:
    summary = json.loads(device.GetProcedure(str(pid)))
    return [s for s, _ in summary["history"]["process_states"]]


def reason_of(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.args[0].reason


def test_pause_at_a_checkpoint_and_resume(device, script_dir) -> None:
    pid = prepare(device, script_dir, "checkpoints.py")
    with EventTracer(device, ["lastEvent", "Status"]) as tracer:
        device.Start(json.dumps({"procedure_id": pid}))
        tracer.wait_for(lambda v: "passed 2" in v, "lastEvent")
        paused = LrcClient(device).invoke(
            "Pause", json.dumps({"procedure_id": pid, "requested_by": "op"})
        )
        assert paused.statuses[-1] == TaskStatus.COMPLETED, paused
        assert json.loads(paused.result[1])["state"] == "PAUSED"
        tracer.wait_for(lambda v: "procedure.lifecycle.paused" in v, "lastEvent")
        tracer.wait_for(lambda v: "is paused" in v, "Status")
        assert device.runningProcedureId == pid
        resumed = LrcClient(device).invoke("Resume", json.dumps({"procedure_id": pid}))
        assert resumed.statuses[-1] == TaskStatus.COMPLETED, resumed
        assert json.loads(resumed.result[1])["state"] == "RUNNING"
        tracer.wait_for(lambda v: "procedure.lifecycle.resumed" in v, "lastEvent")
        # Pausing again, then stopping while paused.
        LrcClient(device).invoke("Pause", json.dumps({"procedure_id": pid}))
        stopped = LrcClient(device).invoke("Stop", json.dumps({"procedure_id": pid}))
        assert stopped.statuses[-1] == TaskStatus.COMPLETED
    assert states(device, pid)[-5:] == ["RUNNING", "PAUSED", "RUNNING", "PAUSED", "STOPPED"]


def test_pause_refused_when_nothing_runs(device, script_dir) -> None:
    (code,), (message,) = device.Pause("{}")
    assert code == ResultCode.REJECTED and "no procedure is running" in message
    with pytest.raises(tango.DevFailed) as excinfo:
        device.Pause('{"immediate": "yes"}')
    assert reason_of(excinfo) == "OET_INVALID_REQUEST"


def test_question_answered_from_tango(device, script_dir) -> None:
    pid = prepare(device, script_dir, "asks.py")
    with EventTracer(device, ["inputRequest", "lastEvent"]) as tracer:
        start = json.dumps(
            {"procedure_id": pid, "script_args": {"main": {"kwargs": {"choices": ["a", "b"]}}}}
        )
        device.Start(start)
        pending = tracer.wait_for(lambda v: json.loads(v), "inputRequest")
        (request,) = json.loads(pending)
        assert request["procedure_id"] == pid and request["choices"] == ["a", "b"]
        answer = {"procedure_id": pid, "request_id": request["id"], "requested_by": "tango-op"}
        with pytest.raises(tango.DevFailed) as excinfo:
            device.Answer(json.dumps({**answer, "value": "c"}))
        assert reason_of(excinfo) == "OET_INVALID_REQUEST"
        closed = json.loads(device.Answer(json.dumps({**answer, "value": "b"})))
        assert closed["outcome"] == "answered" and closed["user"] == "tango-op"
        tracer.wait_for(lambda v: json.loads(v) == [], "inputRequest")
        tracer.wait_for(lambda v: "procedure.lifecycle.complete" in v, "lastEvent")
    with pytest.raises(tango.DevFailed) as excinfo:  # stale: already answered
        device.Answer(json.dumps({**answer, "value": "a"}))
    assert reason_of(excinfo) == "OET_STATE_CONFLICT"
    assert "no longer pending" in excinfo.value.args[0].desc
    summary = json.loads(device.GetProcedure(str(pid)))
    assert summary["history"]["requests"][0]["user"] == "tango-op"


def test_progress_reaches_the_start_command(device, script_dir) -> None:
    pid = prepare(device, script_dir, "checkpoints.py")
    arguments = {"procedure_id": pid, "script_args": {"main": {"kwargs": {"count": 4}}}}
    outcome = LrcClient(device).invoke("Start", json.dumps(arguments))
    assert outcome.statuses[-1] == TaskStatus.COMPLETED, outcome
    assert outcome.progress == [25, 50, 75, 100]
    summary = json.loads(device.GetProcedure(str(pid)))
    assert summary["progress"]["done"] == 4 and summary["progress"]["message"] == "step 4"
