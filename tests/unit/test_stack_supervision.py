"""``oet-stack``'s supervisor on small real processes: restarts with back-off, retries a failed
restart, never restarts what the stack itself stopped, and reports a critical death.
(tests/integration/tango/test_oet_stack.py kills the real gateway, device server and database.)"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

import pytest

from ska_oso_oet import stack

TIMEOUT = 30.0


def child(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def crashing(exit_code: int = 7) -> subprocess.Popen:
    return child(f"raise SystemExit({exit_code})")


def lasting() -> subprocess.Popen:
    return child("import signal; signal.pause()")


class Restarts:
    """A restarter that hands out the given process factories in turn and records when."""

    def __init__(self, *factories) -> None:
        self._factories = list(factories)
        self.times: list[float] = []
        self.started: list[subprocess.Popen] = []
        self.done = threading.Event()

    def __call__(self) -> subprocess.Popen:
        self.times.append(time.monotonic())
        factory = self._factories.pop(0)
        if not self._factories:
            self.done.set()
        process = factory()  # may raise, as a restart that fails does
        self.started.append(process)
        return process


@pytest.fixture
def running():
    stacks: list[tuple[stack.Stack, stack.Supervisor]] = []

    def make(backoff: stack.Backoff) -> tuple[stack.Stack, stack.Supervisor]:
        s = stack.Stack()
        supervisor = stack.Supervisor(s, backoff)
        stacks.append((s, supervisor))
        return s, supervisor

    yield make
    for s, supervisor in stacks:
        supervisor.stop()
        s.stop()
        supervisor.release()


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_crashed_process_is_restarted_with_growing_delays(running, caplog) -> None:
    caplog.set_level(logging.INFO, logger="ska_oso_oet.stack")
    s, supervisor = running(stack.Backoff(initial=0.1, maximum=0.4, stable_after=60))
    first = crashing()
    s.add("svc", first)
    restarts = Restarts(crashing, crashing, crashing, lasting)
    crashed_at = time.monotonic()
    supervisor.restartable("svc", first, restarts)
    wait_until(lambda: len(restarts.started) == 4, "four restarts")
    last = restarts.started[-1]
    wait_until(lambda: s.processes == [("svc", last)], "the last one registered in its place")
    # each restart waited 0.1, 0.2, 0.4, 0.4 (capped) at least after the previous crash
    gaps = [b - a for a, b in zip([crashed_at, *restarts.times], restarts.times, strict=False)]
    for gap, delay in zip(gaps, (0.1, 0.2, 0.4, 0.4), strict=True):
        assert gap >= delay - 0.01  # (a timed wait may end a hair early)
    assert last.poll() is None  # the lasting one is kept running
    messages = [r.getMessage() for r in caplog.records]
    crashes = [m for m in messages if m.startswith("svc (pid") and "exited with code 7" in m]
    assert [m.split("restarting it in ")[1] for m in crashes] == [
        f"{d} s (the rest of the stack keeps running)" for d in ("0.1", "0.2", "0.4", "0.4")
    ]
    assert f"svc restarted (pid {last.pid})" in messages


def test_a_failed_restart_is_retried_after_a_longer_wait(running, caplog) -> None:
    s, supervisor = running(stack.Backoff(initial=0.05, maximum=1.0, stable_after=60))
    first = crashing()
    s.add("svc", first)

    def fails() -> subprocess.Popen:
        raise RuntimeError("svc not ready within 60 s")

    restarts = Restarts(fails, fails, lasting)
    supervisor.restartable("svc", first, restarts)
    assert restarts.done.wait(TIMEOUT)
    assert restarts.times[2] - restarts.times[1] >= 0.19  # 0.05 -> 0.1 -> 0.2
    messages = [r.getMessage() for r in caplog.records]
    assert sum("svc did not restart: svc not ready within 60 s" in m for m in messages) == 2


def test_what_the_stack_stops_is_not_restarted(running) -> None:
    s, supervisor = running(stack.Backoff(initial=0.05))
    process = lasting()
    s.add("svc", process)
    restarts = Restarts(lasting)
    supervisor.restartable("svc", process, restarts)
    supervisor.stop()
    s.stop()
    assert process.poll() is not None
    assert restarts.times == []
    assert s.processes == []


def test_a_stop_during_the_back_off_ends_it_at_once(running) -> None:
    s, supervisor = running(stack.Backoff(initial=600))
    first = crashing()
    s.add("svc", first)
    restarts = Restarts(lasting)
    supervisor.restartable("svc", first, restarts)
    wait_until(lambda: first.poll() is not None, "the crash")
    begun = time.monotonic()
    supervisor.stop(timeout=TIMEOUT)
    assert time.monotonic() - begun < TIMEOUT
    assert all(done.is_set() for _, done in supervisor._threads)
    assert restarts.times == []


def test_a_critical_death_ends_the_wait_with_the_reason(running) -> None:
    s, supervisor = running(stack.Backoff())
    database = crashing(3)
    s.add(stack.DATABASE, database)
    supervisor.critical(stack.DATABASE, database)
    waited = threading.Thread(target=supervisor.wait, args=(s.stopping,))
    waited.start()
    waited.join(TIMEOUT)
    assert not waited.is_alive()
    assert supervisor.fatal == (
        f"PyDatabaseds (pid {database.pid}) exited with code 3: the devices and the gateway "
        "cannot work without the Tango database"
    )


def test_a_stop_request_ends_the_wait_without_a_reason(running) -> None:
    s, supervisor = running(stack.Backoff())
    database = lasting()
    s.add(stack.DATABASE, database)
    supervisor.critical(stack.DATABASE, database)
    threading.Timer(0.1, s.stopping.set).start()
    supervisor.wait(s.stopping)
    assert supervisor.fatal is None


@pytest.mark.parametrize(
    ("code", "text"),
    [(-9, "was killed by SIGKILL"), (-15, "was killed by SIGTERM"), (1, "exited with code 1")],
)
def test_exit_descriptions(code: int, text: str) -> None:
    assert stack.describe_exit(code) == text


def test_backoff_doubles_up_to_its_maximum_and_resets_once_stable() -> None:
    backoff = stack.Backoff(initial=1, maximum=5, stable_after=60)
    delays = [backoff.next_delay(None, 0)]
    for _ in range(4):
        delays.append(backoff.next_delay(delays[-1], 1))
    assert delays == [1, 2, 4, 5, 5]
    assert backoff.next_delay(5, 61) == 1


def test_restart_delay_options_are_checked() -> None:
    with pytest.raises(SystemExit, match="restart-delay"):
        stack.main(["--restart-delay", "10", "--max-restart-delay", "5"])
