"""Hostile scripts through a real Tango client: two devices in one device server, started the
way Tango's Starter starts it (SIGTERM, SIGINT, SIGHUP and SIGQUIT blocked in the inherited
signal mask). Stop times are printed as ``STOP-TIME <case> <seconds>`` (run with ``-s``)."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import tango

from tests.support.lrc_client import LrcClient
from tests.support.processes import alive, wait_all_gone
from tests.support.tango_events import EventTracer, close_hubs
from tests.support.tango_server import DeviceServerProcess

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
FIRST, SECOND = "oso/oet/1", "oso/oet/2"
#: Devices of the restart tests: names of their own (a client keeps event channels by name).
RESTARTED = "oso/oet/7"
#: Starts the server with the stop signals blocked, as Tango's Starter does.
BLOCKED_MASK_SERVER = [
    sys.executable,
    "-c",
    "import os, signal, sys; "
    "signal.pthread_sigmask(signal.SIG_BLOCK, "
    "{signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT}); "
    "os.execv(sys.executable, [sys.executable, '-m', 'ska_oso_oet.tango.server', *sys.argv[1:]])",
]
SERVER = [sys.executable, "-m", "ska_oso_oet.tango.server"]
GRACE = 30.0  # far longer than any stop here may take


def properties(state: Path, **extra: object) -> dict:
    return {
        "ScriptRoots": [str(SCRIPTS)],
        "StateDatabase": str(state),
        "StopGraceSeconds": GRACE,
        "WarmWorkers": 1,
        **extra,
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceServerProcess]:
    state = tmp_path_factory.mktemp("state")
    devices = {
        FIRST: properties(state / "one.sqlite", MaxPrepared=3),
        SECOND: properties(state / "two.sqlite"),
    }
    with DeviceServerProcess(
        BLOCKED_MASK_SERVER, devices, "OETDeviceServer/contain", env={"OET_WARM_WORKERS": "1"}
    ) as process:
        yield process
        close_hubs()
        assert process.process is not None
        mask = _blocked_signals(process.process.pid)
    # SIGTERM (blocked when the server started) ends it cleanly.
    assert process.process.returncode == 0, process.output()
    assert not mask & {signal.SIGTERM, signal.SIGINT}, "the server unblocked its signal mask"


@pytest.fixture(autouse=True)
def nothing_left_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on the shared server, stop what a failed test left unfinished."""
    yield
    if "server" not in request.fixturenames:
        return
    server = request.getfixturevalue("server")
    for name in (FIRST, SECOND):
        device = server.proxy(name)
        for summary in json.loads(device.procedures):
            if summary["state"] not in ("COMPLETE", "FAILED", "STOPPED"):
                with contextlib.suppress(tango.DevFailed, AssertionError):
                    LrcClient(device).invoke(
                        "Stop", json.dumps({"procedure_id": summary["id"], "grace": 0})
                    )


def _blocked_signals(pid: int) -> set[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            bits = int(line.split()[1], 16)
            return {n for n in range(1, 65) if bits & (1 << (n - 1))}
    return set()


def proxy(server: DeviceServerProcess, name: str) -> tango.DeviceProxy:
    return server.proxy(name)


def body(name: str) -> str:
    return json.dumps(
        {"script": {"script_type": "filesystem", "script_uri": f"file://{SCRIPTS / name}"}}
    )


def run(device: tango.DeviceProxy, name: str, tracer: EventTracer) -> tuple[int, object]:
    """Prepare and start ``name``; returns its procedure id and its first announce."""
    prepared = LrcClient(device).invoke("Prepare", body(name))
    assert prepared.result[0] == 0, prepared.result
    pid = json.loads(prepared.result[1])["id"]
    start = len(tracer.events)
    (code,), _ = device.Start(json.dumps({"procedure_id": pid}))
    assert code == 1  # STARTED
    event = tracer.wait_for(
        lambda v: (
            (e := json.loads(v))["topic"] == "user.script.announce" and e["procedure_id"] == pid
        ),
        "lastEvent",
        start=start,
    )
    return pid, json.loads(event)["msg"]


def stop(device: tango.DeviceProxy, pid: int, case: str, pids: list[int], **extra) -> float:
    begin = time.monotonic()
    outcome = LrcClient(device).invoke("Stop", json.dumps({"procedure_id": pid, **extra}))
    took = time.monotonic() - begin
    assert outcome.result[0] == 0, outcome.result
    assert json.loads(outcome.result[1])[0]["state"] == "STOPPED"
    wait_all_gone(pids, 2.0)
    print(
        f"\nSTOP-TIME {case} {took:.3f} (until every process is gone {time.monotonic() - begin:.3f})"
    )
    return took


def script_processes(server: DeviceServerProcess) -> list[psutil.Process]:
    return psutil.Process(server.process.pid).children(recursive=True)


def test_the_server_and_its_scripts_run_with_an_open_signal_mask(server):
    assert not _blocked_signals(server.process.pid) & {signal.SIGTERM, signal.SIGINT}
    device = proxy(server, FIRST)
    with EventTracer(device, "lastEvent") as tracer:
        pid, msg = run(device, "sigterm_raises.py", tracer)
        took = stop(device, pid, "sigterm_raises.py (Tango)", [msg["worker"]], grace=GRACE)
        assert took < GRACE / 3, "SIGTERM reached the script: no waiting for SIGKILL"
        tracer.wait_for(
            lambda v: json.loads(v).get("line") == "cleaned up", "lastEvent", timeout=10
        )


@pytest.mark.parametrize(
    "script", ["setsid_grandchild.py", "double_fork_daemon.py", "sigterm_exits.py"]
)
def test_a_stop_leaves_nothing_behind(server, script):
    device = proxy(server, FIRST)
    with EventTracer(device, "lastEvent") as tracer:
        pid, msg = run(device, script, tracer)
        assert all(alive(p) for p in msg["pids"])
        took = stop(device, pid, f"{script} (Tango)", [msg["worker"], *msg["pids"]])
        assert took < GRACE / 3


def test_a_script_killing_the_fork_server_harms_neither_device(server):
    first, second = proxy(server, FIRST), proxy(server, SECOND)
    with (
        EventTracer(first, ["lastEvent", "healthState"]) as tracer,
        EventTracer(second, "lastEvent") as other,
    ):
        running, _ = run(second, "loop_forever.py", other)
        health_from = len(tracer.events)
        killer, msg = run(first, "kill_parent.py", tracer)
        wait_all_gone([msg["killed"]], 5.0)  # SIGKILL takes effect when the victim is scheduled
        tracer.wait_for(lambda v: v == 1, "healthState", start=health_from)  # DEGRADED
        tracer.wait_for(lambda v: v == 0, "healthState", start=health_from)  # OK again
        assert first.healthState == 0 and second.healthState == 0
        assert first.state() == tango.DevState.RUNNING
        assert json.loads(second.GetProcedure(str(running)))["state"] == "RUNNING"
        # Both devices keep working: stops, and new procedures from the new fork server.
        stop(second, running, "loop_forever.py beside a fork-server kill", [])
        stop(first, killer, "kill_parent.py", [])
        again = LrcClient(first).invoke("Prepare", body("success.py"))
        assert again.result[0] == 0, again.result
        stop(first, json.loads(again.result[1])["id"], "a READY procedure", [])


def test_prepared_procedures_past_the_limit_are_refused(server):
    device = proxy(server, FIRST)
    prepared = []
    try:
        for _ in range(3):
            outcome = LrcClient(device).invoke("Prepare", body("loop_forever.py"))
            prepared.append(json.loads(outcome.result[1])["id"])
        (code,), (message,) = device.Prepare(body("loop_forever.py"))
        assert code == 5, message  # REJECTED
        assert message.startswith("OET_LIMIT:") and "MaxPrepared" in message
    finally:
        for pid in prepared:
            LrcClient(device).invoke("Stop", json.dumps({"procedure_id": pid, "grace": 0}))


def test_a_print_flood_is_slowed_and_the_server_memory_stays_flat(server):
    device = proxy(server, SECOND)
    count = 100_000
    process = psutil.Process(server.process.pid)
    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    lines = [0]

    def on_event(value: str) -> bool:
        event = json.loads(value)
        if event["topic"] == "script.stdout":
            lines[0] += 1
        return event["topic"] == "procedure.lifecycle.complete"

    try:
        with EventTracer(device, "lastEvent") as tracer:
            prepared = LrcClient(device).invoke("Prepare", body("print_flood.py"))
            pid = json.loads(prepared.result[1])["id"]
            start = len(tracer.events)
            outcome = LrcClient(device).invoke(
                "Start",
                json.dumps(
                    {"procedure_id": pid, "script_args": {"main": {"kwargs": {"count": count}}}}
                ),
                timeout=300,
            )
            assert outcome.result[0] == 0, outcome.result
            tracer.wait_for(on_event, "lastEvent", start=start, timeout=60)
    finally:
        done.set()
        sampler.join()
    growth = (peak[0] - baseline) / 2**20
    print(f"\nPRINT-FLOOD {count} lines: server RSS grew {growth:.1f} MiB, {lines[0]} lines seen")
    assert lines[0] == count, "every line reached the subscriber"
    assert growth < 100, f"server RSS grew {growth:.1f} MiB"


# ----- restarts ------------------------------------------------------------------------------
def test_kill_9_of_the_server_leaves_no_script_and_the_restart_records_it(tmp_path):
    state = tmp_path / "one.sqlite"
    devices = {RESTARTED: properties(state, WarmWorkers=0)}
    with DeviceServerProcess(SERVER, devices, "OETDeviceServer/kill9") as first:
        device = first.proxy(RESTARTED)
        with EventTracer(device, "lastEvent") as tracer:
            pid, msg = run(device, "double_fork_daemon.py", tracer)
        processes = [p.pid for p in script_processes(first)]
        assert set(msg["pids"]) <= set(processes)
        close_hubs([device])
        begin = time.monotonic()
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(30)
        gone = wait_all_gone(processes, 2.0)
        print(
            f"\nKILL-9-SERVER no script process left {time.monotonic() - begin:.3f} s ({gone:.3f})"
        )
    with DeviceServerProcess(SERVER, devices, "OETDeviceServer/kill9") as second:
        summary = json.loads(second.proxy(RESTARTED).GetProcedure(str(pid)))
        assert summary["state"] == "FAILED"
        assert "stopped while this procedure was RUNNING" in summary["history"]["stacktrace"]


def test_a_bad_abort_script_and_a_corrupt_row_cannot_brick_the_device(tmp_path):
    state = tmp_path / "one.sqlite"
    good = {RESTARTED: properties(state, AbortScript=f"file://{SCRIPTS / 'abort.py'}")}
    with DeviceServerProcess(SERVER, good, "OETDeviceServer/brick") as first:
        outcome = LrcClient(first.proxy(RESTARTED)).invoke("Prepare", body("success.py"))
        pid = json.loads(outcome.result[1])["id"]
    with sqlite3.connect(state) as db:
        db.execute('INSERT INTO procedures (id, summary) VALUES (90, \'{"id": 90, "bad\')')
    bad = {RESTARTED: properties(state, AbortScript=str(SCRIPTS / "abort.py"))}
    with DeviceServerProcess(SERVER, bad, "OETDeviceServer/brick") as second:
        device = second.proxy(RESTARTED)
        assert device.state() == tango.DevState.FAULT
        assert "AbortScript (abort_script, OET_ABORT_SCRIPT) must be a file://" in device.status()
    # Corrected, the device starts again with its history, the corrupt row skipped.
    with DeviceServerProcess(SERVER, good, "OETDeviceServer/brick") as third:
        device = third.proxy(RESTARTED)
        assert device.state() == tango.DevState.ON, device.status()
        ids = [s["id"] for s in json.loads(device.procedures)]
        assert ids == [pid], "the good row is back, the corrupt one skipped"
