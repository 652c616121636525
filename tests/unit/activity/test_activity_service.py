"""ActivityService on a real engine: SBD activities resolved, merged, run and followed."""

from __future__ import annotations

import json

import pytest

from ska_oso_oet import events as topics
from ska_oso_oet.activity.domain import ActivityRequest
from ska_oso_oet.activity.sbd_store import SbdNotFound
from ska_oso_oet.activity.service import ActivityNotFound, ActivityService
from ska_oso_oet.procedure.domain import FunctionArgs
from ska_oso_oet.procedure.errors import InvalidRequest, ProcedureNotFound, StateConflict

from ..conftest import TIMEOUT, EventRecorder, prepare_request, script_uri

FINAL = {"COMPLETE", "FAILED", "STOPPED"}


def sbd_document(sbd_id: str = "sbd-t0001-20261121-00001") -> dict:
    return {
        "sbd_id": sbd_id,
        "telescope": "ska_mid",
        "interface": "https://schema.skao.int/ska-oso-pdm-sbd/0.1",
        "metadata": {"version": 1, "created_by": "test"},
        "targets": [{"target_id": "M31", "ra": "00:42:44.3", "dec": "41:16:09"}],
        "activities": {
            "observe": {
                "kind": "filesystem",
                "path": script_uri("success.py"),
                "function_args": {
                    "init": {"args": [], "kwargs": {"subarray_id": 1, "from_sbd": "init"}},
                    "main": {"args": [1, 2], "kwargs": {"a": "sbd", "b": "sbd"}},
                },
            },
            "loop": {"kind": "filesystem", "path": script_uri("loop_forever.py")},
            "broken": {"kind": "filesystem", "path": script_uri("fail.py")},
        },
    }


@pytest.fixture
def activities(service):
    activities = ActivityService(service)
    activities.sbds.add(sbd_document())
    yield activities
    activities.close()


def run(activities, name="observe", **body):
    request = ActivityRequest.from_dict(
        {"activity_name": name, "sbd_id": "sbd-t0001-20261121-00001", **body}
    )
    return activities.run(request)


def wait_activity(service, activities, summary, states=FINAL):
    service.wait_for_state(summary["procedure_id"], {"READY", *FINAL}, TIMEOUT)
    if states != {"PREPARED"}:
        service.wait_for_state(summary["procedure_id"], FINAL, TIMEOUT)
    return activities.get(summary["id"])


def test_activity_runs_its_script_with_merged_arguments(service, activities, recorder):
    summary = run(
        activities,
        script_args={"main": {"args": [9], "kwargs": {"b": "request", "c": 3}}},
    )
    assert summary["state"] == "REQUESTED"
    assert summary["procedure_id"] is not None
    final = wait_activity(service, activities, summary)
    assert [s for s, _ in final["activity_states"]] == [
        "TODO", "REQUESTED", "PREPARED", "RUNNING", "COMPLETE",
    ]  # fmt: skip
    main_kwargs = final["script_args"]["main"]["kwargs"]
    assert final["script_args"]["main"]["args"] == [9]
    assert {k: main_kwargs[k] for k in "abc"} == {"a": "sbd", "b": "request", "c": 3}
    assert main_kwargs["sbi_id"] == final["sbi_id"].strip() and final["sbi_id"].startswith("sbi-")
    with open(main_kwargs["sb_json"]) as stream:
        assert json.load(stream) == sbd_document()
    announced = recorder.wait_for(lambda e: e.topic == topics.USER_SCRIPT_ANNOUNCE)
    assert announced.payload["msg"]["init"] == [[], {"subarray_id": 1, "from_sbd": "init"}]
    assert announced.payload["msg"]["main"][0] == [9]


def test_request_kwargs_never_wipe_the_sbd_init_arguments(service, activities):
    summary = run(activities, script_args={"init": {"kwargs": {"subarray_id": 3}}})
    final = wait_activity(service, activities, summary)
    assert final["script_args"]["init"] == {
        "args": [],
        "kwargs": {"subarray_id": 3, "from_sbd": "init"},
    }


def test_prepare_only_stops_at_prepared_and_starts_later(service, activities):
    summary = run(activities, prepare_only=True)
    prepared = wait_activity(service, activities, summary, states={"PREPARED"})
    assert prepared["state"] == "PREPARED"
    assert service.get(summary["procedure_id"])["state"] == "READY"
    service.start(summary["procedure_id"])
    final = wait_activity(service, activities, summary)
    assert final["state"] == "COMPLETE"


def test_a_later_start_keeps_the_activity_arguments_and_merges_new_ones(service, activities):
    summary = run(activities, prepare_only=True)
    wait_activity(service, activities, summary, states={"PREPARED"})
    other = service.prepare(prepare_request("success.py"))  # not an activity's procedure
    service.wait_for_state(other["id"], {"READY"}, TIMEOUT)
    with pytest.raises(ProcedureNotFound):
        activities.start(summary["procedure_id"] + 1000)
    started = activities.start(summary["procedure_id"], FunctionArgs([], {"b": "later"}))
    kwargs = started["script_args"]["main"]["kwargs"]
    assert started["script_args"]["main"]["args"] == [1, 2]
    assert {k: kwargs[k] for k in "ab"} == {"a": "sbd", "b": "later"}
    final = wait_activity(service, activities, summary)
    assert final["script_args"]["main"] == started["script_args"]["main"]
    assert final["script_args"]["main"]["kwargs"]["sbi_id"] == final["sbi_id"]
    plain = activities.start(None)  # the newest READY one, not an activity's: unchanged
    assert plain["id"] == other["id"] and plain["script_args"]["main"] == {"args": [], "kwargs": {}}
    service.wait_for_state(other["id"], FINAL, TIMEOUT)


def test_activity_events_follow_the_procedure_events(service, activities):
    recorder = EventRecorder()
    service.events.subscribe(recorder)
    summary = run(activities)
    recorder.wait_for(lambda e: e.topic == "activity.lifecycle.complete")
    ordered = [
        e.topic
        for e in recorder.events
        if e.topic.startswith("activity.") or e.topic == topics.PROCEDURE_CREATED
    ]
    assert ordered == [
        topics.PROCEDURE_CREATED,
        "activity.lifecycle.requested",
        "activity.lifecycle.prepared",
        "activity.lifecycle.running",
        "activity.lifecycle.complete",
    ]
    last = recorder.of(summary["procedure_id"], "activity.lifecycle.complete")[0]
    assert last.payload["activity_id"] == summary["id"]
    assert last.payload["result"]["state"] == "COMPLETE"


def test_failing_and_stopped_activities(service, activities):
    failed = wait_activity(service, activities, run(activities, "broken"))
    assert failed["state"] == "FAILED"
    looping = run(activities, "loop")
    service.wait_for_state(looping["procedure_id"], {"RUNNING"}, TIMEOUT)
    with pytest.raises(StateConflict, match="is running on this subarray"):
        run(activities, "observe")
    service.stop(looping["procedure_id"])
    assert wait_activity(service, activities, looping)["state"] == "STOPPED"


def test_bad_requests_are_refused_and_nothing_is_created(service, activities):
    with pytest.raises(SbdNotFound, match="No SBD with sbd_id=sbd-nope"):
        activities.run(ActivityRequest("observe", "sbd-nope"))
    with pytest.raises(InvalidRequest, match="has no activity 'calibrate'; it has broken, loop"):
        run(activities, "calibrate")
    with pytest.raises(InvalidRequest, match="unknown function"):
        run(activities, script_args={"teardown": {}})
    with pytest.raises(InvalidRequest, match="activity_name is required"):
        ActivityRequest.from_dict({"sbd_id": "x"})
    with pytest.raises(ActivityNotFound, match="activity ID=42"):
        activities.get(42)
    outside = sbd_document("sbd-outside")
    outside["activities"]["observe"]["path"] = "file:///etc/hosts"
    activities.sbds.add(outside)
    with pytest.raises(InvalidRequest, match="outside the allowed script roots"):
        activities.run(ActivityRequest("observe", "sbd-outside"))
    assert activities.summaries() == []
    assert service.summaries() == []


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"activities": {}}, "sbd_id is required"),
        ({"sbd_id": "../etc", "activities": {}}, "sbd_id is required"),
        ({"sbd_id": "s1"}, "needs 'activities'"),
        ({"sbd_id": "s1", "activities": {"a": {"kind": "tape", "path": "x"}}}, "kind must be"),
        (
            {"sbd_id": "s1", "activities": {"a": {"kind": "git", "path": "git://a.py", "repo": 5}}},
            "git_repo must be a string",
        ),
        (
            {
                "sbd_id": "s1",
                "activities": {
                    "a": {
                        "kind": "filesystem",
                        "path": "file:///a.py",
                        "function_args": {"main": {"args": 5}},
                    }
                },
            },
            "args must be a list",
        ),
    ],
)
def test_malformed_sbds_are_refused_with_the_reason(activities, document, message):
    with pytest.raises(InvalidRequest, match=message):
        activities.sbds.add(document)
    assert activities.sbds.ids() == ["sbd-t0001-20261121-00001"]


def test_activity_history_survives_a_restart(make_service):
    service = make_service()
    activities = ActivityService(service)
    activities.sbds.add(sbd_document())
    done = wait_activity(service, activities, run(activities))
    activities.close()
    service.shutdown()

    again = ActivityService(make_service())
    try:
        assert again.get(done["id"]) == done
        assert again.sbds.ids() == ["sbd-t0001-20261121-00001"]
    finally:
        again.close()


def test_sb_instance_files_leave_with_their_activities(make_service, tmp_path):
    service = make_service(history_size=2)
    activities = ActivityService(service)
    activities.sbds.add(sbd_document())
    try:
        done = [wait_activity(service, activities, run(activities)) for _ in range(4)]
        files = [d["script_args"]["main"]["kwargs"]["sb_json"] for d in done]
        remaining = sorted(p.name for p in (tmp_path / "sbds" / "instances").iterdir())
        assert remaining == sorted(f.rsplit("/", 1)[1] for f in files[2:])
        with pytest.raises(ActivityNotFound):
            activities.get(done[0]["id"])
    finally:
        activities.close()
