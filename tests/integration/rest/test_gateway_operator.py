"""Operator control through the real stack: REST (both the PUT state and the request routes),
SSE and the ``oet`` CLI (pause, resume, answer, prompting and progress while following)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import BIN, TIMEOUT, EventStream, Stack, is_event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TEST_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
FINAL = ("COMPLETE", "FAILED", "STOPPED")


@pytest.fixture(scope="module", autouse=True)
def operator_scripts(stack: Stack) -> None:
    for name in ("checkpoints.py", "asks.py"):
        shutil.copy(TEST_SCRIPTS / name, stack.scripts / name)


def create(http, stack: Stack, script: str) -> int:
    body = {"script": {"script_type": "filesystem", "script_uri": stack.script_uri(script)}}
    response = http.post("/procedures", json=body)
    assert response.status_code == 201, response.text
    return response.json()["procedure"]["id"]


def start(http, pid: int, **kwargs) -> dict:
    body = {"state": "RUNNING", "script_args": {"main": {"args": [], "kwargs": kwargs}}}
    response = http.put(f"/procedures/{pid}", json=body)
    assert response.status_code == 200, response.text
    return response.json()["procedure"]


def wait_final(events: EventStream, pid: int) -> dict:
    return events.wait_for(
        lambda e: (
            e.get("procedure_id") == pid
            and e.get("topic") in {f"procedure.lifecycle.{s.lower()}" for s in FINAL}
        )
    )


def oet(stack: Stack, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "oet"), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        input=stdin,
        env={**stack.env, "OET_REST_URI": stack.url},
    )


def test_rest_pause_resume_and_stop_while_paused(stack):
    with stack.http() as http, EventStream(stack.url) as events:
        pid = create(http, stack, "checkpoints.py")
        start(http, pid)
        events.wait_for(lambda e: e.get("procedure_id") == pid and e.get("line") == "passed 2")
        paused = http.put(f"/procedures/{pid}", json={"state": "PAUSED"})
        assert paused.status_code == 200, paused.text
        assert paused.json()["procedure"]["state"] == "PAUSED"
        events.wait_for(is_event("procedure.lifecycle.paused", pid))
        # pausing again is harmless
        assert http.put(f"/procedures/{pid}", json={"state": "PAUSED"}).status_code == 200
        resumed = http.put(f"/procedures/{pid}", json={"state": "RUNNING"})
        assert resumed.status_code == 200 and resumed.json()["procedure"]["state"] == "RUNNING"
        events.wait_for(is_event("procedure.lifecycle.resumed", pid))
        http.put(f"/procedures/{pid}", json={"state": "PAUSED"})
        stopped = http.put(f"/procedures/{pid}", json={"state": "STOPPED"})
        assert stopped.json() == {"abort_message": f"Successfully stopped script with ID {pid}"}
        history = http.get(f"/procedures/{pid}").json()["procedure"]["history"]
        states = [s for s, _ in history["process_states"]]
        assert states[-5:] == ["RUNNING", "PAUSED", "RUNNING", "PAUSED", "STOPPED"]
        # a finished procedure cannot be paused: the documented error body
        refused = http.put(f"/procedures/{pid}", json={"state": "PAUSED"})
        assert refused.status_code == 409, refused.text
        assert set(refused.json()) == {"error", "type", "Message"}


def test_rest_question_answer_and_stale_answer(stack):
    with stack.http() as http, EventStream(stack.url) as events:
        pid = create(http, stack, "asks.py")
        assert http.get(f"/procedures/{pid}/request").json() == {"request": None}
        start(http, pid, prompt="Band?", choices=["1", "2"])
        opened = events.wait_for(is_event("procedure.request.opened", pid))
        request = http.get(f"/procedures/{pid}/request").json()["request"]
        assert request["id"] == opened["request"]["id"] and request["prompt"] == "Band?"
        wrong = http.post(
            f"/procedures/{pid}/request", json={"request_id": request["id"], "value": "3"}
        )
        assert wrong.status_code == 400 and "choose one of" in wrong.json()["Message"]
        answered = http.post(
            f"/procedures/{pid}/request", json={"request_id": request["id"], "value": "2"}
        )
        assert answered.status_code == 200, answered.text
        assert answered.json()["request"]["outcome"] == "answered"
        closed = events.wait_for(is_event("procedure.request.closed", pid))
        assert closed["request"]["value"] == "2"
        assert wait_final(events, pid)["topic"] == "procedure.lifecycle.complete"
        stale = http.post(
            f"/procedures/{pid}/request", json={"request_id": request["id"], "value": "1"}
        )
        assert stale.status_code == 409 and "no longer pending" in stale.json()["Message"]
        missing = http.post(f"/procedures/{pid}/request", json={"value": "1"})
        assert missing.status_code == 400


@pytest.mark.parametrize(("default", "final"), [("later", "COMPLETE"), (None, "FAILED")])
def test_rest_question_timing_out(stack, default, final):
    with stack.http() as http, EventStream(stack.url) as events:
        pid = create(http, stack, "asks.py")
        start(http, pid, default=default, timeout=0.3)
        closed = events.wait_for(is_event("procedure.request.closed", pid))
        assert closed["request"]["outcome"] == "timeout"
        assert closed["request"]["value"] == default
        wait_final(events, pid)
        summary = http.get(f"/procedures/{pid}").json()["procedure"]
        assert summary["state"] == final
        if default is None:
            assert "AskTimeout" in summary["history"]["stacktrace"]
        else:
            assert any(e.get("line") == "answer='later'" for e in events.of(pid))


def test_progress_reaches_sse_and_the_summary(stack):
    with stack.http() as http, EventStream(stack.url) as events:
        pid = create(http, stack, "checkpoints.py")
        start(http, pid, count=3, interval=0)
        wait_final(events, pid)
        done = [e["done"] for e in events.of(pid) if e.get("topic") == "procedure.progress"]
        assert done == [1, 2, 3]
        summary = http.get(f"/procedures/{pid}").json()["procedure"]
        assert summary["progress"]["total"] == 3 and summary["progress"]["message"] == "step 3"


def test_cli_answer_pause_resume(stack):
    with stack.http() as http, EventStream(stack.url) as events:
        pid = create(http, stack, "asks.py")
        start(http, pid, choices=["yes", "no"])
        events.wait_for(is_event("procedure.request.opened", pid))
        answered = oet(stack, "answer", f"--pid={pid}", "yes")
        assert answered.returncode == 0, answered.stderr
        assert answered.stdout.strip() == f"Answered request 1 of procedure {pid}: 'yes'"
        wait_final(events, pid)
        again = oet(stack, "answer", f"--pid={pid}", "no")
        assert again.returncode != 0 and "not waiting for an answer" in again.stderr

        loop = create(http, stack, "checkpoints.py")
        start(http, loop)
        paused = oet(stack, "pause", f"--pid={loop}")
        assert paused.returncode == 0, paused.stderr
        assert paused.stdout.splitlines()[2].split()[-1] == "PAUSED"
        resumed = oet(stack, "resume")
        assert resumed.returncode == 0, resumed.stderr
        assert resumed.stdout.splitlines()[2].split()[-1] == "RUNNING"
        frozen = oet(stack, "pause", "--now")
        assert frozen.returncode == 0 and frozen.stdout.splitlines()[2].split()[-1] == "PAUSED"
        stopped = oet(stack, "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.strip() == f"Successfully stopped script with ID {loop}"


def test_cli_start_prompts_and_shows_progress(stack):
    """``oet start --ask=true`` reads the answers from stdin (a wrong one is asked again),
    and shows progress as plain lines when its output is not a terminal."""
    with stack.http() as http:
        pid = create(http, stack, "asks.py")
        started = oet(
            stack, "start", f"--pid={pid}", "--ask=true", '--choices=["a", "b"]', "--again=1",
            stdin="c\na\nb\n",
        )  # fmt: skip
        assert started.returncode == 0, started.stdout + started.stderr
        out = started.stdout
        assert f"Procedure {pid} asks (request 1): Continue? [a/b]" in out
        assert "Answer not taken" in out  # "c"
        assert "- Script output: answer='a'" in out and "- Script output: answer='b'" in out
        assert f"Procedure {pid} request 2 answered 'b'" in out

        counted = create(http, stack, "checkpoints.py")
        progress = oet(stack, "start", f"--pid={counted}", "--count=2", "--interval=0")
        assert progress.returncode == 0, progress.stdout + progress.stderr
        assert f"- Procedure {counted} progress: 2/2 (100%) step 2" in progress.stdout


def test_v7_pause_resume_and_answer(stack):
    """The v7 API runs the same shared logic: PUT state PAUSED/RUNNING, the request routes."""
    import httpx

    v7_url = stack.url.replace("/api/v1.0", "/ska-oso-oet/oet/api/v7")
    with (
        stack.http() as http,
        httpx.Client(base_url=v7_url, timeout=30) as v7,
        EventStream(stack.url) as events,
    ):
        loop = create(http, stack, "checkpoints.py")
        start(http, loop)
        paused = v7.put(f"/procedures/{loop}", json={"state": "PAUSED"})
        assert paused.status_code == 200 and paused.json()["state"] == "PAUSED", paused.text
        resumed = v7.put(f"/procedures/{loop}", json={"state": "RUNNING"})
        assert resumed.json()["state"] == "RUNNING"
        v7.put(f"/procedures/{loop}", json={"state": "STOPPED"})
        wait_final(events, loop)

        pid = create(http, stack, "asks.py")
        start(http, pid)
        events.wait_for(is_event("procedure.request.opened", pid))
        request = v7.get(f"/procedures/{pid}/request").json()
        answered = v7.post(
            f"/procedures/{pid}/request", json={"request_id": request["id"], "value": "ok"}
        )
        assert answered.status_code == 200 and answered.json()["outcome"] == "answered"
        assert wait_final(events, pid)["topic"] == "procedure.lifecycle.complete"
