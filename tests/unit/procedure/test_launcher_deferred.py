"""A launcher made with ``start=False`` (the device server's: its fork server starts once the
devices exist, or in oet-stack once the gateway answers) starts nothing until :meth:`start`
or the first worker asked for, which starts the fork server and waits for it instead of
failing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import pytest

from ska_oso_oet.procedure.launcher import WorkerLauncher

TIMEOUT = 60.0


def _zygotes() -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process().children()
        if "--zygote" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE
    ]


def test_nothing_starts_before_start_or_a_spawn() -> None:
    before = {p.pid for p in _zygotes()}
    launcher = WorkerLauncher(preload_modules=(), warm_workers=1, start=False)
    try:
        assert launcher.zygote_pid is None and launcher.healthy and launcher.degraded is None
        assert {p.pid for p in _zygotes()} == before
        launcher.start()
        launcher.start()  # a second call does nothing
        worker = launcher.spawn()
        assert psutil.Process(worker.pid).ppid() == launcher.zygote_pid
        assert len({p.pid for p in _zygotes()} - before) == 1
        worker.kill()
        worker.close()
    finally:
        launcher.close()


def test_a_spawn_before_start_starts_the_fork_server_and_waits_for_it() -> None:
    before = {p.pid for p in _zygotes()}
    launcher = WorkerLauncher(preload_modules=(), warm_workers=0, start=False)
    try:
        got: list[object] = []
        thread = threading.Thread(target=lambda: got.append(launcher.spawn()))
        thread.start()
        thread.join(TIMEOUT)
        assert not thread.is_alive() and got, "the spawn started the deferred fork server"
        worker = got[0]
        assert launcher.zygote_pid is not None
        assert psutil.Process(worker.pid).ppid() == launcher.zygote_pid
        assert len({p.pid for p in _zygotes()} - before) == 1
        launcher.start()  # already started: nothing more
        assert len({p.pid for p in _zygotes()} - before) == 1
        worker.kill()
        worker.close()
    finally:
        launcher.close()


def test_closing_before_start_ends_a_waiting_spawn_and_starts_nothing() -> None:
    before = {p.pid for p in _zygotes()}
    launcher = WorkerLauncher(preload_modules=(), warm_workers=1, start=False)
    errors: list[BaseException] = []

    def spawn() -> None:
        try:
            launcher.spawn()
        except BaseException as exc:  # what the waiting caller gets
            errors.append(exc)

    thread = threading.Thread(target=spawn)
    thread.start()
    launcher.close()
    thread.join(TIMEOUT)
    assert not thread.is_alive() and errors and "closed" in str(errors[0])
    launcher.start()  # after close: nothing
    assert {p.pid for p in _zygotes()} == before


def test_closing_while_the_fork_server_starts_waits_for_it_and_ends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() during the fork server's start (here: a preload that waits for a file) must not
    return before that fork server is gone, and no start may follow."""
    go_on = tmp_path / "go-on"
    (tmp_path / "oet_held_preload.py").write_text(
        "import pathlib, time\n"
        f"deadline = time.monotonic() + {TIMEOUT}\n"
        f"while not pathlib.Path({str(go_on)!r}).exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    before = {p.pid for p in _zygotes()}
    launcher = WorkerLauncher(preload_modules=("oet_held_preload",), warm_workers=1, start=False)
    launcher.start()
    deadline = time.monotonic() + TIMEOUT
    while not {p.pid for p in _zygotes()} - before:  # its fork server is importing
        assert time.monotonic() < deadline, "the fork server was not started"
        time.sleep(0.01)
    closing = threading.Thread(target=launcher.close)
    closing.start()
    closing.join(0.2)
    assert closing.is_alive(), "close() returned while a fork server was still starting"
    go_on.touch()
    closing.join(TIMEOUT)
    assert not closing.is_alive()
    assert {p.pid for p in _zygotes()} == before
    assert not launcher.healthy
