"""Hostile scripts against the real engine: nothing a script starts outlives its stop, a stop
ends STOPPED whatever the script does with SIGTERM, the fork server heals, limits hold.

Each stop case prints its measured stop time (``stop() -> STOPPED``, and until every process of
the script is gone) as ``STOP-TIME <case> <seconds> <seconds>``; run with ``-s`` to see them."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import psutil
import pytest

from ska_oso_oet import events as topics
from ska_oso_oet.procedure import protocol
from ska_oso_oet.procedure.config import OetConfig, config_from_sources
from ska_oso_oet.procedure.domain import FunctionArgs, ProcedureState
from ska_oso_oet.procedure.errors import EngineUnavailable, LimitExceeded
from ska_oso_oet.procedure.launcher import WorkerLauncher
from ska_oso_oet.procedure.service import ScriptExecutionService
from tests.support.processes import alive, wait_all_gone

from ..conftest import SCRIPTS, TIMEOUT, EventRecorder, prepare_request

S = ProcedureState
FINAL = {S.COMPLETE, S.FAILED, S.STOPPED}


def states_of(summary: dict) -> list[str]:
    return [state for state, _ in summary["history"]["process_states"]]


def run_until_announced(service, recorder, name: str) -> tuple[int, object]:
    pid = service.prepare(prepare_request(name))["id"]
    assert service.wait_for_state(pid, {S.READY, S.FAILED}, TIMEOUT)["state"] == "READY"
    service.start(pid)
    event = recorder.wait_for(
        lambda e: e.topic == topics.USER_SCRIPT_ANNOUNCE and e.payload["procedure_id"] == pid
    )
    return pid, event.payload["msg"]


def worker_pid(service, pid: int) -> int:
    run = service._runs[pid]
    assert run.worker is not None
    return run.worker.pid


def timed_stop(service, pid: int, case: str, pids: list[int], grace: float | None = None):
    """Stop ``pid``; returns (seconds to STOPPED, seconds until all ``pids`` are gone)."""
    start = time.monotonic()
    service.stop(pid, grace=grace)
    summary = service.wait_for_state(pid, FINAL, TIMEOUT)
    stopped = time.monotonic() - start
    wait_all_gone(pids, 2.0)
    gone = time.monotonic() - start
    print(f"\nSTOP-TIME {case} {stopped:.3f} {gone:.3f}")
    assert summary["state"] == "STOPPED", summary["history"]
    return stopped, gone


@pytest.mark.parametrize("script", ["setsid_grandchild.py", "double_fork_daemon.py"])
def test_a_stop_kills_descendants_however_they_detached(service, recorder, script):
    pid, msg = run_until_announced(service, recorder, script)
    escaped = msg["pids"]
    assert all(alive(p) for p in escaped)
    assert all(os.getsid(p) != worker_pid(service, pid) for p in escaped), "they left the session"
    timed_stop(service, pid, script, [worker_pid(service, pid), *escaped])


def test_a_grandchild_ignoring_sigterm_in_the_group_is_killed_after_the_grace(service, recorder):
    pid, msg = run_until_announced(service, recorder, "spawn_grandchild.py")
    timed_stop(
        service, pid, "spawn_grandchild.py", [worker_pid(service, pid), msg["grandchild_pid"]]
    )


@pytest.mark.parametrize("script", ["sigterm_raises.py", "sigterm_exits.py"])
def test_a_stop_ends_stopped_at_once_whatever_sigterm_does(make_service, script):
    service = make_service(stop_grace_seconds=20.0)
    recorder = EventRecorder()
    service.events.subscribe(recorder)
    pid, _ = run_until_announced(service, recorder, script)
    stopped, _ = timed_stop(service, pid, script, [worker_pid(service, pid)])
    assert stopped < 10.0, "the stop must not wait out the 20 s grace once the script exited"
    if script == "sigterm_raises.py":
        lines = [e.payload["line"] for e in recorder.of(pid, topics.SCRIPT_STDOUT)]
        assert "cleaned up" in lines, "the script's clean-up ran"


def test_the_grace_period_can_be_given_per_stop(make_service):
    service = make_service(stop_grace_seconds=60.0)
    recorder = EventRecorder()
    service.events.subscribe(recorder)
    pid, _ = run_until_announced(service, recorder, "ignore_sigterm.py")
    stopped, _ = timed_stop(
        service, pid, "ignore_sigterm.py (grace 0.5)", [worker_pid(service, pid)], grace=0.5
    )
    assert 0.5 <= stopped < 30.0


def test_a_bad_grace_is_refused(service, recorder):
    pid, _ = run_until_announced(service, recorder, "loop_forever.py")
    with pytest.raises(Exception, match="grace must be a number"):
        service.stop(pid, grace=-1)
    service.stop(pid, grace=0)
    assert service.wait_for_state(pid, FINAL, TIMEOUT)["state"] == "STOPPED"


def test_a_fork_server_killed_by_a_script_is_restarted_and_harms_no_procedure(tmp_path):
    launcher = WorkerLauncher(warm_workers=1)
    changes = threading.Event()
    launcher.add_listener(changes.set)
    config = {"script_roots": (SCRIPTS,), "stop_grace_seconds": 1.0}
    other = ScriptExecutionService(OetConfig(name="other", **config), launcher=launcher)
    victim = ScriptExecutionService(OetConfig(name="victim", **config), launcher=launcher)
    try:
        other_recorder, victim_recorder = EventRecorder(), EventRecorder()
        other.events.subscribe(other_recorder)
        victim.events.subscribe(victim_recorder)
        running, _ = run_until_announced(other, other_recorder, "loop_forever.py")
        old_zygote = launcher.zygote_pid
        start = time.monotonic()
        killer, msg = run_until_announced(victim, victim_recorder, "kill_parent.py")
        assert msg["killed"] == old_zygote
        assert changes.wait(TIMEOUT), "the launcher reports the fork server's death"
        deadline = time.monotonic() + TIMEOUT
        while launcher.restarts < 1 and time.monotonic() < deadline:
            changes.clear()
            changes.wait(1.0)
        restarted = time.monotonic() - start
        print(f"\nFORK-SERVER-RESTART {launcher.last_restart_seconds:.3f}")
        assert launcher.last_restart_seconds < 5.0
        assert launcher.restarts == 1 and launcher.degraded is None and launcher.healthy
        assert launcher.zygote_pid != old_zygote and alive(launcher.zygote_pid)
        assert restarted < 5.0
        # Both running procedures kept their processes and channels.
        assert other.get(running)["state"] == "RUNNING"
        assert victim.get(killer)["state"] == "RUNNING"
        # New procedures start on either service.
        done = other.prepare(prepare_request("success.py", {"subarray_id": 1}))["id"]
        assert other.wait_for_state(done, {S.READY, S.FAILED}, TIMEOUT)["state"] == "READY"
        for service, pid in ((other, running), (victim, killer)):
            timed_stop(service, pid, "after fork-server restart", [worker_pid(service, pid)])
    finally:
        victim.shutdown()
        other.shutdown()
        launcher.close()


def test_workers_die_with_their_engine_process(tmp_path):
    """kill -9 of the process that owns the engine: no script process survives it by more than
    a moment, however the script detached its children."""
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(SCRIPTS)], stdout=subprocess.PIPE, text=True
    )
    try:
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) >= 2 and all(alive(p) for p in pids)
        start = time.monotonic()
        owner.send_signal(signal.SIGKILL)
        owner.wait(TIMEOUT)
        gone = wait_all_gone(pids, 2.0)
        print(f"\nKILL-9-OWNER {time.monotonic() - start:.3f} {gone:.3f}")
    finally:
        if owner.poll() is None:
            owner.kill()
        owner.stdout.close()


_OWNER = """
import sys
from pathlib import Path
from ska_oso_oet.procedure.config import OetConfig
from ska_oso_oet.procedure.domain import PrepareRequest
from ska_oso_oet.procedure.service import ScriptExecutionService

scripts = Path(sys.argv[1])
service = ScriptExecutionService(OetConfig(script_roots=(scripts,), warm_workers=0))
got = []
service.events.subscribe(lambda e: got.append(e) if e.topic == "user.script.announce" else None)
request = PrepareRequest.from_dict(
    {"script": {"script_type": "filesystem", "script_uri": f"file://{scripts}/double_fork_daemon.py"}}
)
pid = service.prepare(request)["id"]
service.wait_for_state(pid, {"READY"}, 30)
service.start(pid)
import time
deadline = time.monotonic() + 30
while not got and time.monotonic() < deadline:
    time.sleep(0.01)
worker = service._runs[pid].worker.pid
print(worker, launcher_pid := service.launcher.zygote_pid, *got[0].payload["msg"]["pids"], flush=True)
import threading
threading.Event().wait()
"""


def test_memory_past_the_limit_fails_the_script_not_the_host(make_service):
    service = make_service(script_memory_bytes=1024**3)
    pid = service.prepare(prepare_request("memory_hog.py"))["id"]
    service.wait_for_state(pid, {S.READY}, TIMEOUT)
    service.start(pid, FunctionArgs(kwargs={"gib": 2}))
    summary = service.wait_for_state(pid, FINAL, TIMEOUT)
    assert summary["state"] == "FAILED"
    assert "MemoryError" in summary["history"]["stacktrace"]


def test_prepared_procedures_are_limited_per_device(make_service):
    service = make_service(max_prepared=2)
    first = service.prepare(prepare_request("loop_forever.py"))["id"]
    service.prepare(prepare_request("loop_forever.py"))
    with pytest.raises(LimitExceeded, match="OET_MAX_PREPARED = 2") as refused:
        service.prepare(prepare_request("loop_forever.py"))
    assert refused.value.code == "OET_LIMIT"
    service.wait_for_state(first, {S.READY}, TIMEOUT)
    service.stop(first, grace=0)
    service.wait_for_state(first, FINAL, TIMEOUT)
    third = service.prepare(prepare_request("success.py", {"subarray_id": 1}))["id"]
    assert service.wait_for_state(third, {S.READY, S.FAILED}, TIMEOUT)["state"] == "READY"


def test_long_lines_are_cut_with_a_marker_and_char_writes_stay_whole(service, recorder):
    pid = service.prepare(prepare_request("long_lines.py"))["id"]
    service.wait_for_state(pid, {S.READY}, TIMEOUT)
    service.start(pid)
    assert service.wait_for_state(pid, FINAL, TIMEOUT)["state"] == "COMPLETE"
    recorder.wait_for(lambda e: e.topic == topics.PROCEDURE_COMPLETE)
    lines = [e.payload["line"] for e in recorder.of(pid, topics.SCRIPT_STDOUT)]
    limit = service.config.max_line_length
    assert limit < 200_000
    assert lines == [
        "L" * limit + protocol.TRUNCATED.format(dropped=40_000_000 - limit),
        "c" * limit + protocol.TRUNCATED.format(dropped=200_000 - limit),
        "short",
    ]


def test_a_script_flooding_output_is_slowed_to_its_consumer_and_loses_nothing(make_service):
    service = make_service(event_queue_limit=200)
    backlog: list = []
    room = threading.Condition()
    peak = [0]

    def consume(event) -> None:  # a consumer that takes its time, like a device's event thread
        with room:
            backlog.append(event)
            peak[0] = max(peak[0], len(backlog))

    def has_room(timeout: float) -> bool:
        with room:
            return room.wait_for(lambda: len(backlog) < 200, timeout)

    service.events.subscribe(consume)
    service.set_throttle(has_room)
    received: list[str] = []
    finished = threading.Event()

    def drain() -> None:
        while not finished.is_set() or backlog:
            with room:
                batch, backlog[:] = backlog[:20], backlog[20:]
                room.notify_all()
            received.extend(e.payload["line"] for e in batch if e.topic == topics.SCRIPT_STDOUT)
            time.sleep(0.001)

    drainer = threading.Thread(target=drain)
    drainer.start()
    try:
        pid = service.prepare(prepare_request("print_flood.py"))["id"]
        service.wait_for_state(pid, {S.READY}, TIMEOUT)
        service.start(pid, FunctionArgs(kwargs={"count": 20_000}))
        assert service.wait_for_state(pid, FINAL, TIMEOUT * 4)["state"] == "COMPLETE"
    finally:
        finished.set()
        drainer.join(TIMEOUT)
    assert received == [f"line {i} " + "x" * 100 for i in range(20_000)], "in order, none lost"
    assert peak[0] <= 200 + 50, f"the consumer's backlog stayed bounded (peak {peak[0]})"


class TestStartupAndShutdown:
    def test_a_bad_abort_script_is_refused_naming_the_setting(self):
        with pytest.raises(ValueError, match=r"abort_script.*OET_ABORT_SCRIPT\).*file://"):
            OetConfig(abort_script="/scripts/abort.py")
        with pytest.raises(ValueError, match="OET_MAX_PREPARED is invalid"):
            config_from_sources(environ={"OET_MAX_PREPARED": "many"})

    def test_a_malformed_stored_row_is_skipped_not_fatal(self, make_service, tmp_path, caplog):
        first = make_service()
        pid = first.prepare(prepare_request("success.py", {"subarray_id": 1}))["id"]
        first.wait_for_state(pid, {S.READY}, TIMEOUT)
        first.start(pid)
        first.wait_for_state(pid, FINAL, TIMEOUT)
        first.shutdown()
        with sqlite3.connect(tmp_path / "state.sqlite") as db:
            db.execute("INSERT INTO procedures (id, summary) VALUES (40, '{not json')")
            db.execute("""INSERT INTO procedures (id, summary) VALUES (41, '{"id": 41}')""")
        second = make_service()
        assert second.get(pid)["state"] == "COMPLETE"
        assert [s["id"] for s in second.summaries()] == [pid]
        assert "skipping" in caplog.text and "41" in caplog.text
        assert second.prepare(prepare_request("success.py"))["id"] == second.config.next_id(pid)

    def test_one_state_database_per_live_engine(self, make_service, tmp_path):
        make_service()
        with pytest.raises(EngineUnavailable, match="already used by another live OET device"):
            make_service()

    def test_shutdown_during_prep_env_cancels_the_build(self, make_service, tmp_path):
        from tests.support.gitrepos import make_repo

        repo = make_repo(tmp_path / "repo")
        repo.commit(
            {"scripts/s.py": "def main():\n    pass\n", "requirements.txt": "nowhere==1.0\n"},
            "first",
        )
        hang = __import__("socket").create_server(("127.0.0.1", 0))  # accepts, never answers
        port = hang.getsockname()[1]
        service = make_service(
            allowed_repositories=(repo.url,),
            git_cache_dir=tmp_path / "git",
            environments_dir=tmp_path / "envs",
            pip_options=("--index-url", f"http://127.0.0.1:{port}/", "--timeout", "300"),
            env_installer="pip",
        )
        recorder = EventRecorder()
        service.events.subscribe(recorder)
        from ska_oso_oet.procedure.domain import PrepareRequest

        request = PrepareRequest.from_dict(
            {"script": {"script_type": "git", "script_uri": "git://scripts/s.py",
                        "git_args": {"git_repo": repo.url}, "create_env": True}}
        )  # fmt: skip
        try:
            pid = service.prepare(request)["id"]
            service.wait_for_state(pid, {S.PREP_ENV}, TIMEOUT)
            builders = _wait_for_pip(TIMEOUT)
            start = time.monotonic()
            service.shutdown(timeout=TIMEOUT)
            took = time.monotonic() - start
            print(f"\nSHUTDOWN-IN-PREP_ENV {took:.3f}")
            wait_all_gone(builders, 5.0)
        finally:
            hang.close()
        reopened = make_service(state_database=tmp_path / "state.sqlite")
        assert reopened.get(pid)["state"] == "STOPPED"


def _wait_for_pip(timeout: float) -> list[int]:
    """The pids of the build's ``pip install`` once it runs (it then hangs on the index)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < deadline:
        found = [
            p.pid
            for p in psutil.Process().children(recursive=True)
            if "pip" in _cmdline(p) and "install" in _cmdline(p)
        ]
        if found:
            return found
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise AssertionError("pip install did not start")


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []
