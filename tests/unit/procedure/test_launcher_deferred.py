"""A launcher made with ``start=False`` (the device server's: its fork server starts once the
devices exist) starts nothing until :meth:`start`, and a worker asked for meanwhile waits for
the fork server instead of failing."""

from __future__ import annotations

import threading

import psutil

from ska_oso_oet.procedure.launcher import WorkerLauncher

TIMEOUT = 60.0


def _zygotes() -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process().children()
        if "--zygote" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE
    ]


def test_nothing_starts_before_start_and_a_spawn_waits_for_it() -> None:
    before = {p.pid for p in _zygotes()}
    launcher = WorkerLauncher(preload_modules=(), warm_workers=1, start=False)
    try:
        assert launcher.zygote_pid is None and launcher.healthy and launcher.degraded is None
        assert {p.pid for p in _zygotes()} == before
        got: list[object] = []
        asked = threading.Event()

        def spawn() -> None:
            asked.set()
            got.append(launcher.spawn())

        thread = threading.Thread(target=spawn)
        thread.start()
        assert asked.wait(TIMEOUT)
        thread.join(0.2)
        assert thread.is_alive() and not got, "spawn() waits for the deferred fork server"
        launcher.start()
        launcher.start()  # a second call does nothing
        thread.join(TIMEOUT)
        assert not thread.is_alive() and got
        worker = got[0]
        assert psutil.Process(worker.pid).ppid() == launcher.zygote_pid
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
