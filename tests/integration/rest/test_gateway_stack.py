"""The documented API and the ``oet`` CLI on the real stack (database, device server, gateway)."""

from __future__ import annotations

import subprocess
import time

import pytest

from .conftest import BIN, TIMEOUT, EventStream, Stack, is_event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

FINAL = ("COMPLETE", "FAILED", "STOPPED")


def create(http, stack: Stack, script: str, **init_kwargs) -> dict:
    body = {
        "script": {"script_type": "filesystem", "script_uri": stack.script_uri(script)},
        "script_args": {"init": {"args": [], "kwargs": init_kwargs}},
    }
    response = http.post("/procedures", json=body)
    assert response.status_code == 201, response.text
    return response.json()["procedure"]


def oet(stack: Stack, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "oet"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**stack.env, "OET_REST_URI": stack.url},
    )


def test_create_start_complete_with_events_in_order(stack):
    with stack.http() as http, EventStream(stack.url) as events:
        procedure = create(http, stack, "hello.py", subarray_id=1, greeting="hi")
        pid = procedure["id"]
        assert procedure["uri"] == f"{stack.url}/procedures/{pid}"
        assert procedure["history"]["process_states"][0][0] == "CREATING"
        events.wait_for(is_event("procedure.lifecycle.statechange", pid, new_state="READY"))

        body = {"state": "RUNNING", "script_args": {"main": {"args": [], "kwargs": {"count": 3}}}}
        response = http.put(f"/procedures/{pid}", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["procedure"]["state"] in ("RUNNING", "COMPLETE")
        events.wait_for(is_event("procedure.lifecycle.complete", pid))

        summary = http.get(f"/procedures/{pid}").json()["procedure"]
        states = [s for s, _ in summary["history"]["process_states"]]
        assert states[0] == "CREATING" and states[-3:] == ["READY", "RUNNING", "COMPLETE"]
        assert summary["script_args"]["main"]["kwargs"] == {"count": 3}

        mine = events.of(pid)
        messages = [e["msg"] for e in mine if e["topic"] == "user.script.announce"]
        assert messages == [f"hi from subarray 1 #{i}" for i in range(3)]
        seqs = [e["seq"] for e in mine]
        assert seqs == sorted(set(seqs))
        assert events.ids == [e["seq"] for e in events.events]
        topics = [e["topic"] for e in mine]
        assert topics[0] == "procedure.lifecycle.created"
        assert topics.index("procedure.lifecycle.started") < topics.index("user.script.announce")
        assert topics[-1] == "procedure.lifecycle.complete"

        listed = http.get("/procedures").json()["procedures"]
        assert pid in [p["id"] for p in listed]


def test_failure_carries_the_stack_trace(stack):
    with stack.http() as http, EventStream(stack.url) as events:
        pid = create(http, stack, "fail.py")["id"]
        response = http.put(f"/procedures/{pid}", json={"state": "RUNNING"})  # waits for READY
        assert response.status_code == 200, response.text
        events.wait_for(is_event("procedure.lifecycle.failed", pid))
        trace = events.wait_for(is_event("procedure.lifecycle.stacktrace", pid))["stacktrace"]
        assert "ValueError: the script failed on purpose" in trace
        summary = http.get(f"/procedures/{pid}").json()["procedure"]
        assert summary["state"] == "FAILED"
        assert "ValueError: the script failed on purpose" in summary["history"]["stacktrace"]

    described = oet(stack, "describe", f"--pid={pid}")
    assert described.returncode == 0, described.stderr
    assert "Stack Trace:" in described.stdout and "ValueError" in described.stdout
    assert "RUNNING 1" in described.stdout


def test_stop_of_a_looping_script(stack):
    with stack.http() as http, EventStream(stack.url) as events:
        pid = create(http, stack, "forever.py")["id"]
        assert http.put(f"/procedures/{pid}", json={"state": "RUNNING"}).status_code == 200
        events.wait_for(lambda e: e.get("procedure_id") == pid and e.get("msg") == "looping")

        other = create(http, stack, "hello.py")["id"]
        events.wait_for(is_event("procedure.lifecycle.statechange", other, new_state="READY"))
        conflict = http.put(f"/procedures/{other}", json={"state": "RUNNING"})
        assert conflict.status_code == 409
        assert conflict.json()["type"] == "StateConflict"

        response = http.put(f"/procedures/{pid}", json={"state": "STOPPED", "abort": False})
        assert response.json() == {"abort_message": f"Successfully stopped script with ID {pid}"}
        assert http.get(f"/procedures/{pid}").json()["procedure"]["state"] == "STOPPED"
        events.wait_for(is_event("procedure.lifecycle.stopped", pid))
        again = http.put(f"/procedures/{pid}", json={"state": "STOPPED"})
        assert again.json()["abort_message"].endswith("Script is not running")


def test_last_event_id_resumes_exactly_after_the_given_event(stack):
    with stack.http() as http, EventStream(stack.url) as events:
        pid = create(http, stack, "hello.py")["id"]
        http.put(f"/procedures/{pid}", json={"state": "RUNNING"})
        events.wait_for(is_event("procedure.lifecycle.complete", pid))
        seen = list(events.ids)
    middle = len(seen) // 2
    with EventStream(stack.url, last_event_id=str(seen[middle])) as resumed:
        resumed.wait_for(lambda e: e["seq"] == seen[-1])
        assert resumed.ids[: len(seen) - middle - 1] == seen[middle + 1 :]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("post", "/procedures", {}, 400),
        ("post", "/procedures", {"script": {"script_uri": "file:///etc/passwd.py"}}, 400),
        ("post", "/procedures", {"script": {"script_uri": "file:///a.py"}, "x": 1}, 400),
        ("get", "/procedures/99999", None, 404),
        ("put", "/procedures/99999", {"state": "RUNNING"}, 404),
        ("get", "/procedures/abc", None, 400),
        ("get", "/activities/99999", None, 404),
        ("post", "/activities", {"activity_name": "observe"}, 400),
    ],
)
def test_bad_requests_get_documented_errors(stack, method, path, body, status):
    with stack.http() as http:
        response = http.request(method, path, json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) == {"error", "type", "Message"}
    assert error["error"].startswith(str(status))


def test_outside_script_roots_is_refused_with_the_device_reason(stack):
    with stack.http() as http:
        response = http.post("/procedures", json={"script_uri": "file:///tmp/elsewhere.py"})
    assert response.status_code == 400
    assert response.json()["type"] == "Malformed Request"
    assert response.json()["Message"]


def test_cli_create_start_follow_list(stack):
    created = oet(
        stack, "create", stack.script_uri("hello.py"), "--subarray_id=1", "--greeting=hey"
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.splitlines()[0].split() == ["ID", "Script", "Creation", "Time", "State"]
    pid = int(created.stdout.splitlines()[2].split()[0])

    started = oet(stack, "start", "--count=2")
    assert started.returncode == 0, started.stdout + started.stderr
    lines = started.stdout.splitlines()
    assert "- Script message: hey from subarray 1 #0" in lines
    assert "- Script message: hey from subarray 1 #1" in lines
    assert (
        lines[-1]
        == f"- Procedure {pid} ({stack.script_uri('hello.py')}) execution complete on subarray 1"
    )

    listed = oet(stack, "procedure", "list", f"--pid={pid}")
    assert listed.returncode == 0 and listed.stdout.splitlines()[2].split()[-1] == "COMPLETE"

    failing = oet(stack, "create", stack.script_uri("fail.py"))
    assert failing.returncode == 0, failing.stderr
    failed = oet(stack, "start")
    assert failed.returncode == 8, failed.stdout + failed.stderr
    assert "ValueError: the script failed on purpose" in failed.stdout

    unknown = oet(stack, "describe", "--pid=99999")
    assert unknown.returncode == 4
    assert unknown.stderr.strip().endswith("No information available for PID=99999") or (
        "99999" in unknown.stderr
    )


def test_cli_stop_and_start_without_listening(stack):
    created = oet(stack, "create", stack.script_uri("forever.py"))
    pid = int(created.stdout.splitlines()[2].split()[0])
    started = oet(stack, "start", "--listen=False")
    assert started.returncode == 0, started.stderr
    assert started.stdout.splitlines()[2].split()[-1] in ("RUNNING",)
    stopped = oet(stack, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"Successfully stopped script with ID {pid}"


def test_latencies(stack, record_property):
    """POST -> READY (seen on the stream) and PUT RUNNING -> first event of the run."""
    post_to_ready, put_to_event = [], []
    with stack.http() as http, EventStream(stack.url) as events:
        for _ in range(5):
            sent = time.perf_counter()
            pid = create(http, stack, "hello.py")["id"]
            ready = is_event("procedure.lifecycle.statechange", pid, new_state="READY")
            events.wait_for(ready)
            post_to_ready.append(events.arrival[events.events.index(events.wait_for(ready))] - sent)
            count_before = len(events.events)
            sent = time.perf_counter()
            assert http.put(f"/procedures/{pid}", json={"state": "RUNNING"}).status_code == 200
            first = events.wait_for(
                lambda e, n=count_before, p=pid: (
                    e.get("procedure_id") == p and events.events.index(e) >= n
                )
            )
            put_to_event.append(events.arrival[events.events.index(first)] - sent)
            events.wait_for(is_event("procedure.lifecycle.complete", pid))
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    record_property("post_to_ready_ms", [round(x * 1000, 1) for x in post_to_ready])
    record_property("put_to_first_event_ms", [round(x * 1000, 1) for x in put_to_event])
    print(
        f"\nPOST->READY median {median(post_to_ready) * 1000:.1f} ms "
        f"(all: {[round(x * 1000, 1) for x in post_to_ready]}); "
        f"PUT(RUNNING)->first SSE event median {median(put_to_event) * 1000:.1f} ms "
        f"(all: {[round(x * 1000, 1) for x in put_to_event]})"
    )
    assert median(post_to_ready) < 5 and median(put_to_event) < 5


def test_activities_run_the_script_of_a_stored_sbd(stack):
    sbd = {
        "sbd_id": "sbd-rest-1",
        "activities": {
            "observe": {
                "kind": "filesystem",
                "path": stack.script_uri("activity.py"),
                "function_args": {"main": {"args": [], "kwargs": {"scans": 2}}},
            }
        },
    }
    with stack.http() as http, EventStream(stack.url) as events:
        stored = http.post("/sbds", json=sbd)
        assert stored.status_code == 201, stored.text
        assert http.get("/sbds/sbd-rest-1").json()["sbd"]["sbd_id"] == "sbd-rest-1"
        response = http.post(
            "/activities", json={"activity_name": "observe", "sbd_id": "sbd-rest-1"}
        )
        assert response.status_code == 201, response.text
        activity = response.json()["activity"]
        assert activity["uri"] == f"{stack.url}/activities/{activity['id']}"
        pid = activity["procedure_id"]
        announced = events.wait_for(lambda e: e.get("procedure_id") == pid and "msg" in e)
        assert announced["msg"] == f"sbd-rest-1 {activity['sbi_id']} x2"
        events.wait_for(is_event("procedure.lifecycle.complete", pid))
        events.wait_for(
            lambda e: (
                e.get("topic") == "activity.lifecycle.complete"
                and e.get("activity_id") == activity["id"]
            )
        )
        final = http.get(f"/activities/{activity['id']}").json()["activity"]
        assert final["state"] == "COMPLETE"
        assert activity["id"] in [a["id"] for a in http.get("/activities").json()["activities"]]
        missing = http.post("/activities", json={"activity_name": "observe", "sbd_id": "nope"})
        assert missing.status_code == 404, missing.text

    ran = oet(
        stack,
        "activity",
        "run",
        "observe",
        "sbd-rest-1",
        '--script_args={"main": {"kwargs": {"scans": 3}}}',
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert any(
        line.startswith("- Script message: sbd-rest-1 ") and line.endswith(" x3")
        for line in ran.stdout.splitlines()
    )
