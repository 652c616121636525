"""``OETDeviceServer <instance> [tango options]``: the OET Tango device server.

Runs one OETDevice per device registered for ``OETDeviceServer/<instance>`` in the Tango
database (and the OETGroups device of linked groups, when one is registered there), or the
devices named on the command line without a database::

    OETDeviceServer test -nodb -dlist oso/oet/1 -ORBendPoint giop:tcp:127.0.0.1:45678

Before Tango starts its threads, ``main`` starts the worker launcher that every device of the
process shares (scripts' processes come from its fork server, never from forking this
threaded server), and it raises the event buffer high-water mark so that bursts of script
events reach subscribers without loss.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import tango
import tango.server

from ..procedure.config import config_from_sources
from ..procedure.launcher import WorkerLauncher
from ..procedure.worker import STOP_SIGNALS
from . import runtime
from .device import OETDevice
from .groups import OETGroups
from .logs import configure_process_logging

SERVER_NAME = "OETDeviceServer"
#: Events a server buffers per client before dropping (cppTango's default is 10,000).
EVENT_BUFFER_HWM = "200000"
LOGGER = logging.getLogger(__name__)


def main(
    argv: Sequence[str] | None = None,
    on_ready: Callable[[], None] | None = None,
    workers_after: threading.Event | None = None,
) -> int:
    """Run the device server until it is told to stop (Ctrl-C, SIGTERM, DServer Kill).

    :param on_ready: called once the devices exist, before the server serves (``oet-stack``
        checks them from there, see :mod:`ska_oso_oet.stack_child`)
    :param workers_after: the worker fork server starts once this is set (``oet-stack`` sets it
        once its gateway answers), or at the first script if that comes sooner; by default it
        starts once the devices exist
    """
    # Tango's Starter leaves SIGTERM, SIGINT, SIGHUP and SIGQUIT blocked in the mask it hands
    # down; unblocked here, before any thread exists, so every thread, the fork server and
    # the scripts receive them (``kill -TERM`` of the server works, stops do not end in
    # SIGKILL only).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    args = [SERVER_NAME, *(sys.argv[1:] if argv is None else argv)]
    os.environ.setdefault("TANGO_DS_EVENT_BUFFER_HWM", EVENT_BUFFER_HWM)
    configure_process_logging(stream=sys.stderr)  # Starter keeps stderr, drops stdout
    warm = _warm_workers_property(args)
    config = config_from_sources({"warm_workers": warm}, os.environ)

    def new_launcher(start: bool = True) -> WorkerLauncher:
        return WorkerLauncher(
            config.preload_modules, config.warm_workers, nice=config.worker_nice, start=start
        )

    # The fork server (which imports tango and pubsub) starts once the devices exist (or, in
    # oet-stack, once the gateway answers), not before: it would compete with the server's
    # own start (and the gateway's) for the CPU; a Prepare that comes first starts it and
    # waits for it.
    launcher = new_launcher(start=False)
    runtime.install_launcher(launcher, factory=new_launcher)  # factory: for Reset

    def start_workers_after(event: threading.Event) -> None:
        event.wait()
        launcher.start()

    def post_init() -> None:
        if workers_after is None:
            launcher.start()
        else:
            threading.Thread(
                target=start_workers_after, args=(workers_after,), name="oet-workers-after",
                daemon=True,
            ).start()  # fmt: skip
        if on_ready is not None:
            on_ready()

    try:
        classes = device_classes(args)
        tango.server.run(classes, args=args, post_init_callback=post_init)
    finally:
        current = runtime.shared_launcher()  # a Reset may have replaced the first one
        runtime.install_launcher(None)
        launcher.close()
        if current is not None and current is not launcher:
            current.close()
        LOGGER.info("%s stopped", SERVER_NAME)
    return 0


def device_classes(args: Sequence[str]) -> tuple[type, ...]:
    """OETDevice, and OETGroups (linked groups) beside it where it can be declared.

    Without a database (``-nodb``) the ``-dlist`` devices would go to the last class, and a
    file database (``-file=``) that declares no OETGroups device fails the server's start
    ("Database error while trying to retrieve device list for class OETGroups"): OETGroups
    is then left out (``OETGroupsServer`` runs it alone)."""
    if "-nodb" in args:
        return (OETDevice,)
    files = [a.split("=", 1)[1] for a in args if a.startswith("-file=")]
    if files:
        try:
            declared = "/DEVICE/OETGroups:" in Path(files[0]).read_text(errors="replace")
        except OSError:
            declared = False
        return (OETDevice, OETGroups) if declared else (OETDevice,)
    return (OETDevice, OETGroups)


def _warm_workers_property(args: Sequence[str]) -> int | None:
    """The largest ``WarmWorkers`` property of this instance's devices in the Tango database.

    The warm pool is shared by the devices of the process, so it is sized before the devices
    exist. Without a database (``-nodb``, ``-file=``) the OET_WARM_WORKERS variable decides.
    """
    if len(args) < 2 or any(a == "-nodb" or a.startswith("-file=") for a in args):
        return None
    try:
        db = tango.Database()
        listed = db.get_device_class_list(f"{SERVER_NAME}/{args[1]}").value_string
        names = [n for n in listed[0::2] if not n.lower().startswith("dserver/")]
        values = [
            int(v)
            for name in names
            for v in db.get_device_property(name, "WarmWorkers")["WarmWorkers"]
            if str(v).strip().isdigit()
        ]
    except (tango.DevFailed, ValueError) as exc:
        LOGGER.warning("cannot read WarmWorkers from the Tango database: %s", exc)
        return None
    return max(values) if values else None


if __name__ == "__main__":
    sys.exit(main())
