"""Operator control against real workers: pause/resume at checkpoints, freeze, questions,
progress (ska_oso_oet.script through the worker protocol)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from ska_oso_oet import events as topics
from ska_oso_oet.procedure.domain import FunctionArgs, ProcedureState
from ska_oso_oet.procedure.errors import InvalidRequest, StateConflict

from ..conftest import SCRIPTS, TIMEOUT, EventRecorder
from .test_service import FINAL, ready, states_of

S = ProcedureState


def stdout_lines(recorder, pid: int) -> list[str]:
    return [e.payload["line"] for e in recorder.of(pid, topics.SCRIPT_STDOUT)]


def passed_count(recorder, pid: int) -> int:
    counts = [int(line.split()[1]) for line in stdout_lines(recorder, pid) if "passed" in line]
    return max(counts, default=0)


def wait_request(service, recorder, pid: int, after: int = 0) -> dict:
    event = recorder.wait_for(
        lambda e: (
            e.topic == topics.REQUEST_OPENED
            and e.payload["procedure_id"] == pid
            and int(e.payload["request"]["id"]) > after
        )
    )
    return event.payload["request"]


class TestPause:
    def test_pause_at_checkpoint_then_resume_continues(self, service, recorder):
        pid = ready(service, "checkpoints.py")
        service.start(pid, FunctionArgs(kwargs={"interval": 0.01}))
        recorder.wait_for(lambda e: e.payload.get("line") == "passed 3")
        service.pause(pid, user="alice")
        summary = service.wait_for_state(pid, {S.PAUSED}, TIMEOUT)
        assert summary["state"] == "PAUSED"
        recorder.wait_for(lambda e: e.topic == topics.PROCEDURE_PAUSED)
        frozen_at = passed_count(recorder, pid)
        # Paused means no checkpoint is passed: wait for the next event the script would make.
        with pytest.raises(AssertionError):
            recorder.wait_for(lambda e: e.payload.get("line") == f"passed {frozen_at + 2}", 0.5)
        # A second pause is harmless; starting another script is refused (the subarray is held).
        assert service.pause(pid)["state"] == "PAUSED"
        service.resume(pid, user="alice")
        service.wait_for_state(pid, {S.RUNNING}, TIMEOUT)
        recorder.wait_for(lambda e: e.payload.get("line") == f"passed {frozen_at + 2}")
        resumed = recorder.wait_for(lambda e: e.topic == topics.PROCEDURE_RESUMED)
        assert resumed.payload["result"]["state"] == "RUNNING"
        # resuming is not starting again
        assert len(recorder.of(pid, topics.PROCEDURE_STARTED)) == 1
        service.stop(pid)
        final = service.wait_for_state(pid, FINAL, TIMEOUT)
        assert states_of(final)[-4:] == ["RUNNING", "PAUSED", "RUNNING", "STOPPED"]

    def test_every_published_event_is_a_checkpoint(self, service, recorder):
        pid = ready(service, "pauses_on_events.py")
        service.start(pid)
        recorder.wait_for(lambda e: e.topic == topics.USER_SCRIPT_ANNOUNCE)
        service.pause(pid)
        service.wait_for_state(pid, {S.PAUSED}, TIMEOUT)
        service.stop(pid)
        final = service.wait_for_state(pid, FINAL, TIMEOUT)
        assert final["state"] == "STOPPED"

    def test_stop_while_paused_is_immediate(self, make_service):
        # A long grace period: a paused script must still end at once on the SIGTERM.
        service = make_service(stop_grace_seconds=60.0)
        pid = ready(service, "checkpoints.py")
        service.start(pid)
        service.pause(pid)
        service.wait_for_state(pid, {S.PAUSED}, TIMEOUT)
        service.stop(pid)
        assert service.wait_for_state(pid, FINAL, 10.0)["state"] == "STOPPED"

    def test_pause_and_resume_need_the_right_state(self, service):
        pid = ready(service, "checkpoints.py")
        with pytest.raises(StateConflict, match="only a RUNNING procedure can be paused"):
            service.pause(pid)
        service.start(pid)
        with pytest.raises(StateConflict, match="not paused"):
            service.resume(pid)
        service.pause(pid)
        service.wait_for_state(pid, {S.PAUSED}, TIMEOUT)
        other = ready(service, "success.py")
        with pytest.raises(StateConflict, match="already running"):
            service.start(other)
        service.stop(pid)
        service.wait_for_state(pid, FINAL, TIMEOUT)
        with pytest.raises(StateConflict):
            service.resume(pid)

    def test_freeze_stops_at_once_and_stop_still_works(self, make_service):
        service = make_service(stop_grace_seconds=60.0)
        recorder = EventRecorder()
        service.events.subscribe(recorder)
        pid = ready(service, "loop_forever.py")  # no checkpoint at all after its announce
        service.start(pid)
        recorder.wait_for(lambda e: e.topic == topics.USER_SCRIPT_ANNOUNCE)
        assert service.pause(pid, immediate=True)["state"] == "PAUSED"
        assert service.resume(pid)["state"] == "RUNNING"
        service.pause(pid, immediate=True)
        service.stop(pid)
        assert service.wait_for_state(pid, FINAL, 10.0)["state"] == "STOPPED"


class TestQuestions:
    def test_answer_is_returned_recorded_and_audited(self, service, recorder):
        pid = ready(service, "asks.py")
        service.start(pid, FunctionArgs(kwargs={"prompt": "Go?", "choices": ["yes", "no"]}))
        request = wait_request(service, recorder, pid)
        assert request["prompt"] == "Go?" and request["choices"] == ["yes", "no"]
        assert service.pending_request(pid)["id"] == request["id"]
        assert service.get(pid)["request"]["id"] == request["id"]
        with pytest.raises(InvalidRequest, match="choose one of"):
            service.answer(pid, request["id"], "maybe", user="bob")
        closed = service.answer(pid, request["id"], "yes", user="bob")
        assert closed["outcome"] == "answered" and closed["value"] == "yes"
        final = service.wait_for_state(pid, FINAL, TIMEOUT)
        assert final["state"] == "COMPLETE"
        assert "answer='yes'" in stdout_lines(recorder, pid)
        (record,) = final["history"]["requests"]
        assert record["user"] == "bob" and record["value"] == "yes"
        assert record["outcome"] == "answered" and record["prompt"] == "Go?"
        assert final["request"] is None
        # stale: answering again is refused and says why
        with pytest.raises(StateConflict, match="no longer pending: it was answered 'yes' by bob"):
            service.answer(pid, request["id"], "no", user="eve")

    def test_choice_matched_by_its_text(self, service, recorder):
        pid = ready(service, "asks.py")
        service.start(pid, FunctionArgs(kwargs={"choices": [1, 2, 3]}))
        request = wait_request(service, recorder, pid)
        assert service.answer(pid, request["id"], "2")["value"] == 2
        service.wait_for_state(pid, FINAL, TIMEOUT)
        assert "answer=2" in stdout_lines(recorder, pid)

    def test_timeout_returns_the_default(self, service, recorder):
        pid = ready(service, "asks.py")
        service.start(pid, FunctionArgs(kwargs={"default": "later", "timeout": 0.2}))
        final = service.wait_for_state(pid, FINAL, TIMEOUT)
        assert final["state"] == "COMPLETE"
        assert "answer='later'" in stdout_lines(recorder, pid)
        (record,) = final["history"]["requests"]
        assert record["outcome"] == "timeout" and record["value"] == "later"
        with pytest.raises(StateConflict, match=r"timed out after 0\.2 s"):
            service.answer(pid, record["id"], "now")

    def test_timeout_without_default_raises_in_the_script(self, service, recorder):
        pid = ready(service, "asks.py")
        service.start(pid, FunctionArgs(kwargs={"timeout": 0.2}))
        final = service.wait_for_state(pid, FINAL, TIMEOUT)
        assert final["state"] == "FAILED"
        assert "AskTimeout" in final["history"]["stacktrace"]
        assert any(line.startswith("timed out") for line in stdout_lines(recorder, pid))

    def test_unknown_request_is_refused(self, service, recorder):
        pid = ready(service, "asks.py")
        service.start(pid)
        request = wait_request(service, recorder, pid)
        with pytest.raises(StateConflict, match="no pending request 99; the pending request is"):
            service.answer(pid, "99", "x")
        service.answer(pid, request["id"], "x")
        service.wait_for_state(pid, FINAL, TIMEOUT)

    def test_stop_while_waiting_for_an_answer(self, make_service):
        service = make_service(stop_grace_seconds=60.0)
        recorder = EventRecorder()
        service.events.subscribe(recorder)
        pid = ready(service, "asks.py")
        service.start(pid)
        wait_request(service, recorder, pid)
        service.stop(pid)
        assert service.wait_for_state(pid, FINAL, 10.0)["state"] == "STOPPED"

    def test_builtin_input_is_a_question(self, service, recorder):
        pid = ready(service, "asks.py")
        service.start(pid, FunctionArgs(kwargs={"use_input": True, "prompt": "Name? "}))
        request = wait_request(service, recorder, pid)
        assert request["prompt"] == "Name? " and request["choices"] is None
        service.answer(pid, request["id"], "Vera")
        assert service.wait_for_state(pid, FINAL, TIMEOUT)["state"] == "COMPLETE"
        assert "answer='Vera'" in stdout_lines(recorder, pid)

    def test_concurrent_answers_only_one_wins(self, service, recorder):
        pid = ready(service, "asks.py")
        service.start(pid)
        request = wait_request(service, recorder, pid)
        outcomes: list[str] = []

        def answer(value: str) -> None:
            try:
                service.answer(pid, request["id"], value, user=value)
                outcomes.append("ok")
            except StateConflict:
                outcomes.append("refused")

        threads = [threading.Thread(target=answer, args=(f"u{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert sorted(outcomes) == ["ok", "refused", "refused", "refused"]
        final = service.wait_for_state(pid, FINAL, TIMEOUT)
        assert len(final["history"]["requests"]) == 1


class TestProgress:
    def test_progress_reaches_summary_and_events(self, service, recorder):
        pid = ready(service, "checkpoints.py")
        service.start(pid, FunctionArgs(kwargs={"interval": 0.0, "count": 5}))
        final = service.wait_for_state(pid, FINAL, TIMEOUT)
        assert final["state"] == "COMPLETE"
        assert final["progress"]["done"] == 5 and final["progress"]["total"] == 5
        assert final["progress"]["message"] == "step 5"
        done = [e.payload["done"] for e in recorder.of(pid, topics.PROCEDURE_PROGRESS)]
        assert done == [1, 2, 3, 4, 5]


def test_script_api_works_outside_the_oet(tmp_path):
    """A script using the API runs by hand: checkpoints and progress do nothing, ask returns
    its default (no terminal) or raises AskTimeout without one."""
    code = textwrap.dedent(
        """
        from ska_oso_oet.script import AskTimeout, ask, checkpoint, in_oet, progress
        assert not in_oet()
        checkpoint(); progress(1, 2, "half")
        print(ask("Go?", choices=["y", "n"], default="n"))
        try:
            ask("Really?")
        except AskTimeout as exc:
            print("raised", exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "n"
    assert result.stdout.splitlines()[1].startswith("raised no operator to answer 'Really?'")


def test_script_api_reaches_a_foreign_interpreter(tmp_path):
    """Under a bare interpreter with nothing of the OET installed (``python -S -I``: no site,
    no PYTHONPATH), the worker still makes ``ska_oso_oet.script`` importable (a stand-in
    package with only that module)."""
    assert (SCRIPTS / "asks.py").exists()
    worker = SCRIPTS.parents[1] / "src" / "ska_oso_oet" / "procedure" / "worker.py"
    code = textwrap.dedent(
        f"""
        import runpy, sys
        sys.argv = ["worker", "--help"]
        ns = runpy.run_path({str(worker)!r}, run_name="not_main")
        ns["_install_script_api"]()
        import ska_oso_oet.script as api
        from ska_oso_oet.script import progress
        assert api.in_oet()
        import ska_oso_oet
        print(ska_oso_oet.__doc__)
        """
    )
    result = subprocess.run(
        [sys.executable, "-S", "-I", "-c", code], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert "Stand-in package" in result.stdout


def test_the_example_script_runs_under_operator_control(make_service, tmp_path):
    """scripts/operator_demo.py (docs/scripts.md): answered, paused and resumed, COMPLETE."""
    import shutil

    from ..conftest import prepare_uri

    example = tmp_path / "operator_demo.py"
    shutil.copy(SCRIPTS.parents[1] / "scripts" / "operator_demo.py", example)
    service = make_service()
    recorder = EventRecorder()
    service.events.subscribe(recorder)
    summary = service.prepare(prepare_uri(f"file://{example}", {"subarray_id": 3}))
    pid = summary["id"]
    service.wait_for_state(pid, {S.READY}, TIMEOUT)
    service.start(pid, FunctionArgs(kwargs={"scans": 3, "scan_seconds": 0.05}))
    band = wait_request(service, recorder, pid)
    assert band["choices"] == ["1", "2", "5a"]
    service.answer(pid, band["id"], "5a", user="op")
    recorder.wait_for(lambda e: e.topic == topics.USER_SCRIPT_ANNOUNCE)
    service.pause(pid)
    service.wait_for_state(pid, {S.PAUSED}, TIMEOUT)
    service.resume(pid)
    park = wait_request(service, recorder, pid, after=int(band["id"]))
    service.answer(pid, park["id"], "yes", user="op")
    final = service.wait_for_state(pid, FINAL, TIMEOUT)
    assert final["state"] == "COMPLETE", final["history"]
    assert "PAUSED" in states_of(final)
    assert final["progress"]["done"] == 3
    announced = [e.payload["msg"] for e in recorder.of(pid, topics.USER_SCRIPT_ANNOUNCE)]
    assert announced == ["scan 1", "scan 2", "scan 3", "parking"]
    assert [r["value"] for r in final["history"]["requests"]] == ["5a", "yes"]
