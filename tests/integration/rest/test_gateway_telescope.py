"""One OET for the telescope: one gateway in front of subarrays 1, 2 (one device server) and 3
(another), all real processes."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from ska_oso_oet.vocabulary import ResultCode, TaskStatus
from tests.support.lrc_client import LrcClient

from .conftest import EventStream, Telescope, is_event
from .test_gateway_stack import create, oet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def running_on(telescope: Telescope, subarray: int) -> list[int]:
    return [p["id"] for p in json.loads(telescope.proxy(subarray).procedures)]


def test_a_create_runs_on_the_device_of_its_subarray(telescope):
    with telescope.http() as http, EventStream(telescope.url) as events:
        created = {n: create(http, telescope, "hello.py", subarray_id=n) for n in (3, 2)}
        default = create(http, telescope, "hello.py")  # no subarray_id: subarray 1
        for n, procedure in created.items():
            assert procedure["id"] % 100 == n  # ids name their subarray
            assert procedure["id"] in running_on(telescope, n)
        assert default["id"] % 100 == 1 and default["id"] in running_on(telescope, 1)

        pid = created[3]["id"]
        events.wait_for(is_event("procedure.lifecycle.statechange", pid, new_state="READY"))
        started = http.put(f"/procedures/{pid}", json={"state": "RUNNING"})
        assert started.status_code == 200, started.text
        announced = events.wait_for(
            lambda e: e.get("topic") == "user.script.announce" and e.get("procedure_id") == pid
        )
        assert announced["msg"] == "hello from subarray 3 #0"
        events.wait_for(is_event("procedure.lifecycle.complete", pid))

        listed = {p["id"] for p in http.get("/procedures").json()["procedures"]}
        assert {default["id"], *(p["id"] for p in created.values())} <= listed

        refused = http.post(
            "/procedures",
            json={
                "script": {"script_uri": telescope.script_uri("hello.py")},
                "script_args": {"init": {"kwargs": {"subarray_id": 9}}},
            },
        )
        assert refused.status_code == 400
        assert "serves subarrays 1, 2, 3" in refused.json()["Message"]

    described = oet(telescope, "describe", f"--pid={pid}")
    assert described.returncode == 0, described.stderr
    assert "COMPLETE" in described.stdout and "hello.py" in described.stdout
    # The per-subarray URL still serves its device alone.
    with telescope.http() as http:
        alone = http.get(telescope.url.replace("/api/v1.0", "/subarray/3/api/v1.0/procedures"))
        assert {p["id"] % 100 for p in alone.json()["procedures"]} == {3}


def test_ids_stay_unique_and_stable_across_a_device_server_restart(telescope):
    with telescope.http() as http:
        before = create(http, telescope, "hello.py", subarray_id=3)["id"]
        telescope.device_servers["second"].stop()
        telescope.start_device_server("second")
        telescope.wait_gateway_connected()
        kept = http.get(f"/procedures/{before}")
        assert kept.status_code == 200, kept.text  # found again, at the same id
        after = create(http, telescope, "hello.py", subarray_id=3)["id"]
        assert after % 100 == 3 and after > before
        on_two = create(http, telescope, "hello.py", subarray_id=2)["id"]
        ids = [p["id"] for p in http.get("/procedures").json()["procedures"]]
        assert len(ids) == len(set(ids)) and {before, after, on_two} <= set(ids)


def test_v7_and_v1_side_by_side(telescope):
    v1_url = telescope.url
    v7_url = v1_url.replace("/api/v1.0", "/ska-oso-oet/oet/api/v7")
    with (
        httpx.Client(base_url=v7_url, timeout=30) as v7,
        telescope.http() as v1,
        EventStream(v7_url) as events,
    ):
        body = {
            "script": {
                "script_type": "filesystem",
                "script_uri": telescope.script_uri("forever.py"),
            },
            "script_args": {"init": {"args": [], "kwargs": {"subarray_id": 2}}},
        }
        created = v7.post("/procedures/", json=body)
        assert created.status_code == 201, created.text
        procedure = created.json()  # not wrapped
        pid = procedure["id"]
        assert pid % 100 == 2 and procedure["uri"] == f"{v7_url}/procedures/{pid}"
        assert (
            v1.get(f"/procedures/{pid}").json()["procedure"]["uri"] == f"{v1_url}/procedures/{pid}"
        )

        redirect = v7.get("/procedures", follow_redirects=False)
        assert redirect.status_code == 307 and redirect.headers["location"].endswith("/procedures/")
        listed = v7.get("/procedures/").json()
        assert pid in [p["id"] for p in listed]
        assert {p["id"] for p in listed} == {
            p["id"] for p in v1.get("/procedures").json()["procedures"]
        }

        events.wait_for(is_event("procedure.lifecycle.statechange", pid, new_state="READY"))
        started = v7.put(f"/procedures/{pid}", json={"state": "RUNNING"})
        assert started.status_code == 200 and started.json()["state"] == "RUNNING", started.text
        events.wait_for(
            lambda e: e.get("topic") == "user.script.announce" and e.get("procedure_id") == pid
        )
        stopped = v7.put(f"/procedures/{pid}", json={"state": "STOPPED", "abort": False})
        assert stopped.json() == {"abort_message": f"Successfully stopped script with ID {pid}"}
        again = v7.put(f"/procedures/{pid}", json={"state": "STOPPED"})
        assert again.json() == {
            "abort_message": f"Cannot stop script with ID {pid}: Script is not running"
        }
        unchanged = v7.put(f"/procedures/{pid}", json={"state": None})
        assert unchanged.status_code == 200 and unchanged.json()["state"] == "STOPPED"

        missing = v7.get("/procedures/99999")
        assert missing.status_code == 404
        assert missing.json() == {"detail": "No information available for PID=99999"}
        v1_missing = v1.get("/procedures/99999")
        assert v1_missing.status_code == 404 and v1_missing.json()["type"] == "ResourceNotFound"
        invalid = v7.post("/procedures/", json={"script": {"script_type": "filesystem",
                                                           "script_uri": "/no/prefix.py"}})  # fmt: skip
        assert invalid.status_code == 422
        assert invalid.json()["detail"][0]["loc"][:2] == ["body", "script"]
        assert v1.post("/procedures", json={"script": {}}).status_code == 400

        sbd = {
            "sbd_id": "sbd-v7-1",
            "activities": {"observe": {"kind": "filesystem",
                                       "path": telescope.script_uri("activity.py")}},
        }  # fmt: skip
        assert v1.post("/sbds", json=sbd).status_code == 201
        activity = v7.post("/activities/", json={"sbd_id": "sbd-v7-1", "activity_name": "observe"})
        assert activity.status_code == 201, activity.text
        activity_id = activity.json()["id"]
        assert activity.json()["uri"] == f"{v7_url}/activities/{activity_id}"
        events.wait_for(is_event("procedure.lifecycle.complete", activity.json()["procedure_id"]))
        assert v7.get(f"/activities/{activity_id}").json()["id"] == activity_id
        assert activity_id in [a["id"] for a in v7.get("/activities/").json()]
        assert v7.get("/activities/99999").status_code == 404

        document = v7.get("/openapi.json").json()
        assert {"/procedures/", "/procedures/{procedure_id}", "/activities/", "/stream"} <= set(
            document["paths"]
        )
        assert v1.get("/openapi.json").json()["paths"].keys() >= {"/api/v1.0/procedures"}
    with httpx.stream("GET", f"{v7_url}/stream", timeout=10) as response:
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"


def ready_procedure(http, telescope: Telescope, events: EventStream, script: str, n: int) -> int:
    pid = create(http, telescope, script, subarray_id=n)["id"]
    events.wait_for(is_event("procedure.lifecycle.statechange", pid, new_state="READY"))
    return pid


def running_victim(http, telescope, events, script: str, n: int) -> int:
    pid = ready_procedure(http, telescope, events, script, n)
    assert http.put(f"/procedures/{pid}", json={"state": "RUNNING"}).status_code == 200
    events.wait_for(
        lambda e: e.get("topic") == "user.script.announce" and e.get("procedure_id") == pid
    )
    return pid


def test_too_switch_through_rest_cooperative_and_forced(telescope):
    with telescope.http() as http, EventStream(telescope.url) as events:
        victim = running_victim(http, telescope, events, "forever.py", 2)
        too = ready_procedure(http, telescope, events, "forever.py", 2)
        switched = http.post(f"/procedures/{too}/switch", json={"abort": True})
        assert switched.status_code == 200, switched.text
        answer = switched.json()
        assert answer["started"]["id"] == too and answer["started"]["state"] == "RUNNING"
        stopped = {p["id"]: p for p in answer["stopped"]}
        assert stopped[victim]["state"] == "STOPPED"
        assert len(stopped) == 2  # the victim and the abort script that ran after it
        events.wait_for(
            lambda e: (
                e.get("topic") == "user.script.announce" and e.get("msg") == "aborted subarray 2"
            )
        )

        # A victim that ignores SIGTERM: force kills it at once, well within the 2 s grace.
        stubborn = running_victim(http, telescope, events, "stubborn.py", 3)
        too3 = ready_procedure(http, telescope, events, "hello.py", 3)
        began = time.monotonic()
        forced = http.post(f"/procedures/{too3}/switch", json={"force": True})
        took = time.monotonic() - began
        assert forced.status_code == 200, forced.text
        assert [p["id"] for p in forced.json()["stopped"]] == [stubborn]
        assert forced.json()["stopped"][0]["state"] == "STOPPED"
        assert took < 1.5, f"a forced switch waited {took:.2f} s (the grace is 2 s)"
        events.wait_for(is_event("procedure.lifecycle.complete", too3))

        not_ready = http.post(f"/procedures/{too3}/switch", json={})
        assert not_ready.status_code == 409 and "not READY" in not_ready.json()["Message"]
        http.put(f"/procedures/{too}", json={"state": "STOPPED"})

        # The same from the CLI, at the default URL, on subarray 1.
        victim1 = running_victim(http, telescope, events, "forever.py", 1)
        too1 = ready_procedure(http, telescope, events, "hello.py", 1)
        switched = oet(telescope, "switch", f"--pid={too1}", "--force=True")
        assert switched.returncode == 0, switched.stdout + switched.stderr
        assert f"Stopped: {victim1} (STOPPED)" in switched.stdout
        assert re.search(rf"Started: {too1} \((RUNNING|COMPLETE)\)", switched.stdout)
        events.wait_for(is_event("procedure.lifecycle.complete", too1))


def test_too_switch_through_v7(telescope):
    """The same switch in v7 framing: unwrapped answer, {"detail": ...} errors, 422 list."""
    v7_url = telescope.url.replace("/api/v1.0", "/ska-oso-oet/oet/api/v7")
    with (
        telescope.http() as http,
        httpx.Client(base_url=v7_url, timeout=30) as v7,
        EventStream(telescope.url) as events,
    ):
        victim = running_victim(http, telescope, events, "stubborn.py", 3)
        too = ready_procedure(http, telescope, events, "forever.py", 3)
        switched = v7.post(f"/procedures/{too}/switch", json={"force": True})
        assert switched.status_code == 200, switched.text
        answer = switched.json()
        assert answer["started"]["id"] == too and answer["started"]["state"] == "RUNNING"
        assert answer["started"]["uri"] == f"{v7_url}/procedures/{too}"
        assert [(p["id"], p["state"]) for p in answer["stopped"]] == [(victim, "STOPPED")]

        again = v7.post(f"/procedures/{too}/switch", json={})
        assert again.status_code == 409 and "not READY" in again.json()["detail"]
        missing = v7.post("/procedures/99999/switch", json={})
        assert missing.status_code == 404 and isinstance(missing.json()["detail"], str)
        invalid = v7.post(f"/procedures/{too}/switch", json={"force": "at once"})
        assert invalid.status_code == 422
        assert invalid.json()["detail"][0]["loc"] == ["body", "force"]
        paths = v7.get("/openapi.json").json()["paths"]
        assert "post" in paths["/procedures/{procedure_id}/switch"]
        assert http.put(f"/procedures/{too}", json={"state": "STOPPED"}).status_code == 200


def test_a_list_after_a_state_change_event_shows_it(telescope):
    """GET /procedures answers from the gateway's copy of the devices' lists: a client that
    saw a state change on /stream, or changed a procedure through Tango or the gateway,
    then lists, sees the change."""
    with telescope.http() as http, EventStream(telescope.url) as events:
        for subarray in (1, 3):
            pid = ready_procedure(http, telescope, events, "hello.py", subarray)
            listed = {p["id"]: p["state"] for p in http.get("/procedures").json()["procedures"]}
            assert listed[pid] == "READY"
            start = json.dumps({"procedure_id": pid})
            telescope.proxy(subarray).command_inout("Start", start)  # not through the gateway
            for state in ("RUNNING", "COMPLETE"):
                events.wait_for(is_event("procedure.lifecycle.statechange", pid, new_state=state))
                listed = http.get("/procedures").json()["procedures"]
                seen = {p["id"]: p for p in listed}[pid]
                assert state in [s for s, _ in seen["history"]["process_states"]]
                assert seen["state"] in ("RUNNING", "COMPLETE")  # RUNNING, or already ended
            assert {p["id"]: p["state"] for p in listed}[pid] == "COMPLETE"
            one = http.get(f"/procedures/{pid}").json()["procedure"]
            assert one["history"] == {p["id"]: p for p in listed}[pid]["history"]
        # A procedure created through the gateway is listed at once.
        created = create(http, telescope, "hello.py", subarray_id=2)["id"]
        assert created in [p["id"] for p in http.get("/procedures").json()["procedures"]]


REPORTS_AND_ASKS = """
from ska_oso_oet.script import ask, progress

def init(subarray_id=1):
    pass

def main(steps=3):
    for n in range(1, steps + 1):
        progress(n, steps, f"step {n}")
    answer = ask("Go on?", choices=["yes", "no"])
    progress(steps, steps, f"answered {answer}")
"""


def test_one_procedure_after_each_of_its_events_shows_it(telescope):
    """GET /procedures/{id} answers from the gateway's copy of the summary: right after each
    event of a procedure that reports progress and asks a question (started and answered
    through Tango, not the gateway), a client that saw the event on /stream gets a summary
    that shows it (or something later)."""
    (telescope.scripts / "reports_and_asks.py").write_text(REPORTS_AND_ASKS)
    device = telescope.proxy(3)
    with telescope.http() as http, EventStream(telescope.url) as events:
        pid = ready_procedure(http, telescope, events, "reports_and_asks.py", 3)
        for _ in range(3):  # the copy is kept: what follows must drop it
            one = http.get(f"/procedures/{pid}").json()["procedure"]
            assert one["state"] == "READY" and one["progress"] is None
        seen = len(events.of(pid))
        device.command_inout("Start", json.dumps({"procedure_id": pid}))
        checked: set[str] = set()
        while "COMPLETE" not in checked:
            events.wait_for(lambda _, n=seen: len(events.of(pid)) > n)
            event = events.of(pid)[seen]
            seen += 1
            one = http.get(f"/procedures/{pid}")
            assert one.status_code == 200, one.text
            summary = one.json()["procedure"]
            states = [state for state, _ in summary["history"]["process_states"]]
            topic = event["topic"]
            if topic == "procedure.progress":
                assert summary["progress"]["ts"] >= event["ts"], (event, summary["progress"])
                checked.add(event["message"])
            elif topic == "procedure.request.opened":
                assert summary["request"]["id"] == event["request"]["id"]
                checked.add("asked")
                answer = {"procedure_id": pid, "request_id": event["request"]["id"]}
                device.command_inout("Answer", json.dumps({**answer, "value": "yes"}))
            elif topic == "procedure.request.closed":
                assert summary["request"] is None
                closed = summary["history"]["requests"][-1]
                assert (closed["id"], closed["value"]) == (event["request"]["id"], "yes")
                checked.add("answered")
            elif topic == "procedure.lifecycle.statechange":
                assert event["new_state"] in states
                checked.add(event["new_state"])
        assert {"step 1", "step 3", "asked", "answered", "answered yes", "RUNNING"} <= checked
        assert http.get(f"/procedures/{pid}").json()["procedure"]["state"] == "COMPLETE"


def test_too_switch_through_tango_waits_the_grace_unless_forced(telescope):
    with telescope.http() as http, EventStream(telescope.url) as events:
        device = telescope.proxy(3)
        stubborn = running_victim(http, telescope, events, "stubborn.py", 3)
        too = ready_procedure(http, telescope, events, "forever.py", 3)
        began = time.monotonic()
        outcome = LrcClient(device).invoke("Switch", json.dumps({"procedure_id": too}))
        took = time.monotonic() - began
        assert outcome.statuses[-1] == TaskStatus.COMPLETED, outcome
        result = json.loads(outcome.result[1])
        assert [s["id"] for s in result["stopped"]] == [stubborn]
        assert result["started"]["id"] == too and result["started"]["state"] == "RUNNING"
        assert took >= 1.5, "the grace (2 s) was not given to the stubborn script"

        too2 = ready_procedure(http, telescope, events, "hello.py", 3)
        forced = LrcClient(device).invoke(
            "Switch", json.dumps({"procedure_id": too2, "force": True})
        )
        assert forced.statuses[-1] == TaskStatus.COMPLETED, forced
        assert [s["id"] for s in json.loads(forced.result[1])["stopped"]] == [too]
        events.wait_for(is_event("procedure.lifecycle.complete", too2))
        refused = LrcClient(device).invoke("Switch", json.dumps({"procedure_id": too2}))
        assert refused.result_code == ResultCode.REJECTED
