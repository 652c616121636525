"""ScriptExecutionService against real worker processes running the scripts of tests/scripts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from ska_oso_oet import events as topics
from ska_oso_oet.procedure.domain import FunctionArgs, ProcedureState
from ska_oso_oet.procedure.errors import InvalidRequest, ProcedureNotFound, StateConflict
from tests.support.processes import wait_all_gone

from ..conftest import SCRIPTS, TIMEOUT, EventRecorder, prepare_request, prepare_uri, script_uri

S = ProcedureState
FINAL = {S.COMPLETE, S.FAILED, S.STOPPED}


def states_of(summary: dict) -> list[str]:
    return [state for state, _ in summary["history"]["process_states"]]


def ready(service, name: str, **init_kwargs) -> int:
    summary = service.prepare(prepare_request(name, init_kwargs or None))
    assert summary["state"] == "CREATING"
    final = service.wait_for_state(summary["id"], {S.READY, S.FAILED}, TIMEOUT)
    assert final["state"] == "READY", final["history"]
    return summary["id"]


def wait_gone(pid: int, timeout: float = TIMEOUT) -> None:
    wait_all_gone([pid], timeout)


class TestLifecycle:
    def test_prepare_and_run_with_init_walks_every_state(self, service, recorder):
        pid = ready(service, "success.py", subarray_id=2)
        service.start(pid, FunctionArgs((1, "two"), {"three": 3}))
        summary = service.wait_for_state(pid, FINAL, TIMEOUT)

        assert states_of(summary) == [
            "CREATING", "IDLE", "LOADING", "IDLE", "INITIALISING", "READY", "RUNNING", "COMPLETE",
        ]  # fmt: skip
        assert summary["script_args"] == {
            "init": {"args": [], "kwargs": {"subarray_id": 2}},
            "main": {"args": [1, "two"], "kwargs": {"three": 3}},
        }
        assert summary["history"]["stacktrace"] is None
        announced = recorder.wait_for(lambda e: e.topic == topics.USER_SCRIPT_ANNOUNCE)
        assert announced.msg_src == "success"
        assert announced.payload["msg"] == {
            "init": [[], {"subarray_id": 2}],
            "main": [[1, "two"], {"three": 3}],
        }

    def test_script_without_init_skips_initialising(self, service):
        pid = ready(service, "fail.py")
        assert states_of(service.get(pid)) == ["CREATING", "IDLE", "LOADING", "IDLE", "READY"]

    def test_init_may_rebind_main_with_partial(self, service, recorder):
        pid = ready(service, "rebind_main.py", subarray_id=4)
        service.start(pid, FunctionArgs(("a",), {"k": "v"}))
        assert service.wait_for_state(pid, FINAL, TIMEOUT)["state"] == "COMPLETE"
        event = recorder.wait_for(lambda e: e.topic == topics.USER_SCRIPT_ANNOUNCE)
        assert event.payload["msg"] == {"subarray_id": 4, "args": ["a"], "kwargs": {"k": "v"}}

    def test_script_importing_tango_is_ready(self, service):
        ready(service, "imports_tango.py")

    def test_start_defaults_to_newest_ready_procedure(self, service):
        first = ready(service, "success.py")
        second = ready(service, "success.py")
        assert service.start()["id"] == second
        service.wait_for_state(second, FINAL, TIMEOUT)
        assert service.get(first)["state"] == "READY"

    def test_every_transition_is_published_in_order(self, service, recorder):
        pid = ready(service, "success.py")
        service.start(pid)
        service.wait_for_state(pid, FINAL, TIMEOUT)
        recorder.wait_for(lambda e: e.topic == topics.PROCEDURE_COMPLETE)
        changes = [e.payload["new_state"] for e in recorder.of(pid, topics.PROCEDURE_STATECHANGE)]
        assert changes == states_of(service.get(pid))[1:]
        lifecycle = [t for t in recorder.topics(pid) if t.startswith("procedure.lifecycle.")]
        assert lifecycle[0] == topics.PROCEDURE_CREATED
        assert topics.PROCEDURE_STARTED in lifecycle
        assert lifecycle[-1] == topics.PROCEDURE_COMPLETE
        seqs = [e.seq for e in recorder.events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


class TestFailures:
    @pytest.mark.parametrize(
        ("script", "failed_in", "reason"),
        [
            ("fail_init.py", "INITIALISING", "RuntimeError: intentional failure in init"),
            ("syntax_error.py", "LOADING", "SyntaxError"),
            ("no_main.py", "READY", "defines no main()"),
        ],
    )
    def test_prepare_failures_end_failed_with_reason(
        self, service, recorder, script, failed_in, reason
    ):
        pid = service.prepare(prepare_request(script))["id"]
        summary = service.wait_for_state(pid, FINAL, TIMEOUT)
        assert summary["state"] == "FAILED"
        history = states_of(summary)
        assert history[-1] == "FAILED"
        if failed_in != "READY":
            assert history[-2] == failed_in
        assert reason in summary["history"]["stacktrace"]
        trace = recorder.wait_for(lambda e: e.topic == topics.PROCEDURE_STACKTRACE)
        assert reason in trace.payload["stacktrace"]

    def test_exception_in_main_gives_stack_trace(self, service):
        pid = ready(service, "fail.py")
        service.start(pid)
        summary = service.wait_for_state(pid, FINAL, TIMEOUT)
        assert summary["state"] == "FAILED"
        trace = summary["history"]["stacktrace"]
        assert "Traceback" in trace and "ValueError: intentional failure in main" in trace
        assert 'fail.py", line' in trace

    def test_missing_file_and_directory_fail_readably(self, service, tmp_path):
        (tmp_path / "folder.py").mkdir()
        for uri, reason in [
            (f"file://{tmp_path}/absent.py", "script file not found"),
            (f"file://{tmp_path}/folder.py", "is a directory"),
        ]:
            pid = service.prepare(prepare_uri(uri))["id"]
            summary = service.wait_for_state(pid, FINAL, TIMEOUT)
            assert summary["state"] == "FAILED"
            assert reason in summary["history"]["stacktrace"]

    def test_script_outside_roots_is_refused_and_nothing_created(self, service):
        with pytest.raises(InvalidRequest, match="outside the allowed script roots"):
            service.prepare(prepare_uri("file:///etc/passwd"))
        with pytest.raises(InvalidRequest):
            service.prepare(prepare_uri(f"file://{SCRIPTS}/../../pyproject.toml"))
        assert service.summaries() == []

    def test_hard_exit_fails_with_exit_code(self, service):
        pid = ready(service, "exit_hard.py")
        service.start(pid)
        summary = service.wait_for_state(pid, FINAL, TIMEOUT)
        assert summary["state"] == "FAILED"
        assert "exit code 3" in summary["history"]["stacktrace"]

    def test_service_stays_healthy_after_failures(self, service):
        for script in ("fail_init.py", "syntax_error.py"):
            pid = service.prepare(prepare_request(script))["id"]
            service.wait_for_state(pid, FINAL, TIMEOUT)
        pid = ready(service, "success.py")
        service.start(pid)
        assert service.wait_for_state(pid, FINAL, TIMEOUT)["state"] == "COMPLETE"
        assert service.healthy


class TestRules:
    def test_one_running_procedure_at_a_time(self, service):
        looping = ready(service, "loop_forever.py")
        waiting = ready(service, "success.py")
        service.start(looping)
        with pytest.raises(StateConflict, match=f"procedure {looping} is already running"):
            service.start(waiting)
        assert service.get(waiting)["state"] == "READY"
        service.stop(looping)
        service.wait_for_state(looping, FINAL, TIMEOUT)
        service.start(waiting)
        assert service.wait_for_state(waiting, FINAL, TIMEOUT)["state"] == "COMPLETE"

    def test_many_procedures_prepare_at_once(self, service):
        ids = [service.prepare(prepare_request("success.py"))["id"] for _ in range(6)]
        for pid in ids:
            assert service.wait_for_state(pid, {S.READY, S.FAILED}, TIMEOUT)["state"] == "READY"

    def test_unknown_and_wrong_state_requests(self, service):
        with pytest.raises(ProcedureNotFound, match="PID=99"):
            service.start(99)
        with pytest.raises(ProcedureNotFound):
            service.stop(99)
        with pytest.raises(StateConflict, match="no procedure is READY"):
            service.start()
        with pytest.raises(StateConflict, match="no procedure is running"):
            service.stop()
        pid = ready(service, "success.py")
        service.start(pid)
        service.wait_for_state(pid, FINAL, TIMEOUT)
        with pytest.raises(StateConflict, match="only a READY procedure"):
            service.start(pid)
        with pytest.raises(StateConflict, match="already finished"):
            service.stop(pid)

    def test_history_window_keeps_newest_finished_and_all_active(self, make_service):
        service = make_service(history_size=3)
        active = ready(service, "success.py")
        finished = []
        for _ in range(5):
            pid = ready(service, "fail.py")
            service.start(pid)
            service.wait_for_state(pid, FINAL, TIMEOUT)
            finished.append(pid)
        ids = [s["id"] for s in service.summaries()]
        assert ids == [active, *finished[-3:]]
        assert service.procedure_ids() == ids  # the cheap form the device polls
        with pytest.raises(ProcedureNotFound):
            service.get(finished[0])


class TestStop:
    def test_stop_looping_script(self, service, recorder):
        pid = ready(service, "loop_forever.py")
        service.start(pid)
        recorder.wait_for(lambda e: e.topic == topics.USER_SCRIPT_ANNOUNCE)
        worker_pid = service._runs[pid].worker.pid
        service.stop(pid)
        assert service.wait_for_state(pid, FINAL, TIMEOUT)["state"] == "STOPPED"
        wait_gone(worker_pid)
        assert not psutil.pid_exists(worker_pid)

    def test_stop_of_ready_procedure(self, service):
        pid = ready(service, "success.py")
        service.stop(pid)
        assert service.wait_for_state(pid, FINAL, TIMEOUT)["state"] == "STOPPED"

    def test_script_ignoring_sigterm_is_killed_after_grace(self, make_service):
        service = make_service(stop_grace_seconds=0.3)
        recorder = EventRecorder()
        service.events.subscribe(recorder)
        pid = ready(service, "ignore_sigterm.py")
        service.start(pid)
        # Wait until the handler is installed, so the stop really exercises SIGKILL.
        recorder.wait_for(lambda e: e.topic == topics.USER_SCRIPT_ANNOUNCE)
        worker_pid = service._runs[pid].worker.pid
        service.stop(pid)
        assert service.wait_for_state(pid, FINAL, TIMEOUT)["state"] == "STOPPED"
        wait_gone(worker_pid)

    def test_stop_kills_grandchildren(self, service, recorder):
        pid = ready(service, "spawn_grandchild.py")
        service.start(pid)
        event = recorder.wait_for(lambda e: e.topic == topics.USER_SCRIPT_ANNOUNCE)
        grandchild = event.payload["msg"]["grandchild_pid"]
        assert psutil.pid_exists(grandchild)
        service.stop(pid)
        assert service.wait_for_state(pid, FINAL, TIMEOUT)["state"] == "STOPPED"
        wait_gone(grandchild)

    def test_stop_with_abort_runs_abort_script_for_the_subarray(self, service, recorder):
        pid = ready(service, "loop_forever.py", subarray_id=7)
        service.start(pid)
        stopped, abort = service.stop(pid, run_abort=True)
        assert stopped["id"] == pid
        assert abort["script"]["script_uri"] == script_uri("abort.py")
        assert service.wait_for_state(pid, FINAL, TIMEOUT)["state"] == "STOPPED"
        assert service.wait_for_state(abort["id"], FINAL, TIMEOUT)["state"] == "COMPLETE"
        message = recorder.wait_for(
            lambda e: e.topic == topics.USER_SCRIPT_ANNOUNCE and e.msg_src == "abort"
        )
        assert message.payload["msg"] == "aborting subarray 7"

    def test_abort_without_abort_script_is_refused_before_stopping(self, make_service):
        service = make_service(abort_script=None)
        pid = ready(service, "loop_forever.py")
        service.start(pid)
        with pytest.raises(InvalidRequest, match="no abort script"):
            service.stop(pid, run_abort=True)
        assert service.get(pid)["state"] == "RUNNING"


class TestEvents:
    def test_output_logs_and_events_arrive_in_script_order(self, service, recorder):
        pid = ready(service, "log_and_print.py")
        service.start(pid)
        service.wait_for_state(pid, FINAL, TIMEOUT)
        recorder.wait_for(lambda e: e.topic == topics.PROCEDURE_COMPLETE)
        script_events = [
            (e.topic, e.payload.get("line") or e.payload.get("message") or e.payload.get("msg"))
            for e in recorder.of(pid)
            if not e.topic.startswith("procedure.")
        ]
        assert script_events == [
            (topics.SCRIPT_STDOUT, "first line"),
            (topics.SCRIPT_LOG, "a warning"),
            (topics.USER_SCRIPT_ANNOUNCE, "announced"),
            (topics.SCRIPT_STDOUT, "to stderr"),
            (topics.SCRIPT_LOG, "an info record"),
            (topics.SCRIPT_STDOUT, "last line without newline"),
        ]
        streams = [e.payload["stream"] for e in recorder.of(pid, topics.SCRIPT_STDOUT)]
        assert streams == ["stdout", "stderr", "stdout"]

    def test_thousands_of_messages_arrive_in_order_none_lost(self, service, recorder):
        pid = ready(service, "announce.py")
        service.start(pid, FunctionArgs(kwargs={"count": 5000}))
        assert service.wait_for_state(pid, FINAL, TIMEOUT)["state"] == "COMPLETE"
        messages = [e.payload["msg"] for e in recorder.of(pid, topics.USER_SCRIPT_ANNOUNCE)]
        assert messages == list(range(5000))

    def test_unserialisable_payload_is_rendered_readably(self, service, recorder, tmp_path):
        script = tmp_path / "objects.py"
        script.write_text(
            textwrap.dedent(
                """
                from pubsub import pub

                class Pointing:
                    def __init__(self):
                        self.ra, self.dec = 1.5, -0.3

                def main():
                    pub.sendMessage("user.script.announce", msg_src="objects", msg=Pointing())
                """
            )
        )
        pid = service.prepare(prepare_uri(f"file://{script}"))["id"]
        service.wait_for_state(pid, {S.READY}, TIMEOUT)
        service.start(pid)
        event = recorder.wait_for(lambda e: e.topic == topics.USER_SCRIPT_ANNOUNCE)
        assert event.payload["msg"] == {"ra": 1.5, "dec": -0.3}


class TestPersistence:
    def test_history_survives_a_restart(self, make_service, tmp_path):
        first = make_service()
        pid = ready(first, "success.py")
        first.start(pid)
        first.wait_for_state(pid, FINAL, TIMEOUT)
        expected = first.get(pid)
        first.shutdown()

        second = make_service()
        assert second.get(pid) == expected
        assert ready(second, "success.py") == second.config.next_id(pid)  # numbering resumes

    def test_procedures_active_at_a_crash_are_failed_and_their_workers_gone(self, tmp_path):
        database = tmp_path / "state.sqlite"
        owner = subprocess.Popen(
            [sys.executable, "-c", _CRASHING_OWNER, str(SCRIPTS), str(database)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            worker_pid, procedure_id = map(int, owner.stdout.readline().split())
            assert psutil.pid_exists(worker_pid)
            owner.send_signal(signal.SIGKILL)
            owner.wait(TIMEOUT)
        finally:
            if owner.poll() is None:
                owner.kill()
            owner.stdout.close()
        # The worker sees its channel close and ends with everything it started.
        wait_gone(worker_pid, 2.0)

        from ska_oso_oet.procedure.config import OetConfig
        from ska_oso_oet.procedure.service import ScriptExecutionService

        recovered = ScriptExecutionService(
            OetConfig(script_roots=(SCRIPTS,), state_database=database, warm_workers=0)
        )
        try:
            summary = recovered.get(procedure_id)
            assert states_of(summary)[-2:] == ["RUNNING", "FAILED"]
            assert "stopped while this procedure was RUNNING" in summary["history"]["stacktrace"]
        finally:
            recovered.shutdown()
            if psutil.pid_exists(worker_pid):
                os.killpg(worker_pid, signal.SIGKILL)


_CRASHING_OWNER = """
import sys
from pathlib import Path
from ska_oso_oet.procedure.config import OetConfig
from ska_oso_oet.procedure.domain import PrepareRequest
from ska_oso_oet.procedure.service import ScriptExecutionService

scripts, database = Path(sys.argv[1]), Path(sys.argv[2])
service = ScriptExecutionService(
    OetConfig(script_roots=(scripts,), state_database=database, warm_workers=0)
)
summary = service.prepare(PrepareRequest.from_dict(
    {"script": {"script_uri": f"file://{scripts}/loop_forever.py"}}
))
service.wait_for_state(summary["id"], {"READY"}, 30)
service.start(summary["id"])
print(service._runs[summary["id"]].worker.pid, summary["id"], flush=True)
__import__("threading").Event().wait()
"""
