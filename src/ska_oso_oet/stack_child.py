"""How ``oet-stack`` starts its Python children: they import while the Tango database starts.

Most of a child's start-up is importing (``tango`` alone takes most of a second on a small
machine), and none of it needs the database. So ``oet-stack`` starts the device server and the
gateway at the same moment as the database, each as::

    python -m ska_oso_oet.stack_child [--parent PID] [--preload M,...] [--ready-fd N] MODULE [ARGS...]

which

1. with ``--parent``: asks to be sent SIGTERM when ``oet-stack`` dies (:func:`guard`);
2. imports the ``--preload`` modules and ``MODULE``;
3. reads one JSON line on standard input, sent by ``oet-stack`` once the database listens (its
   port is known only then): ``{"env": {"TANGO_HOST": ...}, "register": {...}}``, and puts
   ``env`` into its environment (end of input without a line: the stack is gone, exit 70);
4. with ``--ready-fd`` (the device server): waits until the database answers ``get_info``
   (the honest ready check: the port line alone says the socket is bound, not that the
   database serves), then declares the devices of ``register`` (``{name: {property:
   [values], "__class_server__": [class, server]}}``, see :func:`register`) in one
   ``DbAddServer`` call and one ``DbPutDeviceProperty`` per device. Steps 3 and 4 run in a
   thread (:class:`Setup`) while ``MODULE`` imports: they wait on the database, the import
   on the CPU;
5. runs ``MODULE.main(ARGS)``; with ``--ready-fd``, ``main`` gets an ``on_ready`` callback (see
   :func:`ska_oso_oet.tango.server.main`) after which every device of the server is pinged and
   read (``ping``, ``state``) through a ``DeviceProxy``, as any client reaches it, and the
   names that answered are written to the descriptor as one JSON line ``{"ready": [...]}``
   (``{"error": "..."}`` if they did not answer within :data:`READY_TIMEOUT`); and
   ``workers_after``, an event set when ``oet-stack`` closes standard input: it keeps it open
   until its services (the gateway) answer, and the server starts its worker fork server then
   (or at the first script), so that the fork server's imports do not compete with the
   gateway's start.

Doing the database and device checks here, in processes that load ``tango`` anyway, spares
``oet-stack`` the short-lived probe processes (each one more ``tango`` import) it used before,
and keeps the long-running parent free of ``tango``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

#: Pause between attempts while the database or a device does not answer yet.
POLL_SECONDS = 0.01
#: How long the database and the devices may take to answer.
READY_TIMEOUT = 60.0
#: Exit code when ``oet-stack`` went away before sending the setup line.
EXIT_NO_SETUP = 70
#: Key of a registration entry naming its device class and server (``Class``, ``Server/inst``).
CLASS_SERVER = "__class_server__"


def register(db: Any, devices: dict[str, dict[str, list[str]]]) -> None:
    """Declare ``devices`` in the database ``db`` (a ``tango.Database``): one ``DbAddServer``
    per server and one ``DbPutDeviceProperty`` per device with properties."""
    by_server: dict[str, list[str]] = {}
    for name, properties in devices.items():
        device_class, server = properties[CLASS_SERVER]
        by_server.setdefault(server, []).extend([name, device_class])
    for server, pairs in by_server.items():
        db.command_inout("DbAddServer", [server, *pairs])
    for name, properties in devices.items():
        values = {k: v for k, v in properties.items() if k != CLASS_SERVER}
        if values:
            db.put_device_property(name, values)


def wait_for_database(tango: Any, deadline: float) -> Any:
    """A ``tango.Database`` of ``TANGO_HOST`` once it answers ``get_info``."""
    while True:
        try:
            db = tango.Database()
            db.get_info()
            return db
        except tango.DevFailed as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Tango database did not answer: {exc.args[0].desc}"
                ) from exc
            time.sleep(POLL_SECONDS)  # the database process is still starting


def check_devices(tango: Any, names: Sequence[str], deadline: float) -> None:
    """Until every device answers ``ping`` and ``state`` through a DeviceProxy."""
    for name in names:
        proxy = None
        while True:
            try:
                proxy = proxy or tango.DeviceProxy(name)
                proxy.ping()
                proxy.state()
                break
            except tango.DevFailed as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not answer: {exc.args[0].desc}") from exc
                time.sleep(POLL_SECONDS)


def _report(fd: int, message: dict[str, Any]) -> None:
    try:
        os.write(fd, (json.dumps(message) + "\n").encode())
    except OSError:  # oet-stack is gone: nobody to tell
        pass
    finally:
        os.close(fd)


def _on_ready(ready_fd: int) -> Any:
    """The device server's ``on_ready`` callback: checks its devices in a thread (the server
    only starts serving after the callback returns) and reports on ``ready_fd``."""

    def callback() -> None:
        import tango

        util = tango.Util.instance()
        names = [
            device.get_name()
            for device in util.get_device_list("*")
            if not device.get_name().lower().startswith("dserver/")
        ]

        def check() -> None:
            try:
                check_devices(tango, names, time.monotonic() + READY_TIMEOUT)
            except Exception as exc:  # reported to oet-stack, which gives up on this server
                _report(ready_fd, {"error": str(exc)})
                return
            _report(ready_fd, {"ready": names})

        threading.Thread(target=check, name="oet-stack-ready", daemon=True).start()

    return callback


def guard(parent: int) -> None:
    """Ask Linux to send this process SIGTERM when the ``oet-stack`` thread that started it
    ends, so that nothing outlives a stack killed by SIGKILL (what ``stack.guarded`` does for
    other programs, without an interpreter of its own); exit at once if the stack is already
    gone (it died before the request took effect)."""
    import ctypes
    import signal

    with contextlib.suppress(AttributeError):  # no prctl (not Linux): nothing to ask for
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(EXIT_NO_SETUP)


class Setup:
    """The device server's part of the start that needs the database: read the setup line,
    wait until the database answers, declare the devices. It runs in a thread while the
    server's own modules import (a second or more of CPU, the longest part of its start), so
    that the database's start and the registration's round trips are not added to it."""

    def __init__(self, stdin: Any) -> None:
        self._stdin = stdin
        self.done = threading.Event()
        #: set once ``oet-stack`` closes standard input after the setup line (its services
        #: are up, or it is gone): the device server then starts its worker fork server
        self.stack_up = threading.Event()
        self.received = False
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="oet-stack-setup", daemon=True)

    def start(self) -> Setup:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            line = self._stdin.readline()
            if not line:
                return
            self.received = True
            setup = json.loads(line)
            os.environ.update(setup.get("env") or {})
            import tango  # preloaded by the main thread

            try:
                db = wait_for_database(tango, time.monotonic() + READY_TIMEOUT)
                register(db, setup.get("register") or {})
            except (RuntimeError, tango.DevFailed) as exc:
                self.error = exc.args[0].desc if isinstance(exc, tango.DevFailed) else str(exc)
        except Exception as exc:  # a malformed line: reported like a failed registration
            self.error = str(exc)
        finally:
            self.done.set()
        with contextlib.suppress(OSError, ValueError):
            self._stdin.read()  # until oet-stack closes it
        self.stack_up.set()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ska_oso_oet.stack_child")
    parser.add_argument("--parent", type=int, help="pid of oet-stack: die with it (see guard)")
    parser.add_argument("--preload", default="", help="comma-separated modules to import first")
    parser.add_argument("--ready-fd", type=int, help="report the devices' readiness here")
    parser.add_argument("module")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    if options.parent is not None:
        guard(options.parent)
    for name in filter(None, options.preload.split(",")):
        importlib.import_module(name)
    if options.ready_fd is None:
        module = importlib.import_module(options.module)
        line = sys.stdin.readline()
        if not line:
            return EXIT_NO_SETUP
        os.environ.update(json.loads(line).get("env") or {})
        module.main(options.args)
        return 0
    setup = Setup(sys.stdin).start()
    module = importlib.import_module(options.module)
    setup.done.wait()
    if not setup.received:
        return EXIT_NO_SETUP
    if setup.error is not None:
        _report(options.ready_fd, {"error": f"registering the devices failed: {setup.error}"})
        print(f"registering the devices failed: {setup.error}", file=sys.stderr)
        return 1
    on_ready = _on_ready(options.ready_fd)
    return module.main(options.args, on_ready=on_ready, workers_after=setup.stack_up) or 0


if __name__ == "__main__":
    sys.exit(main())
