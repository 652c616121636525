"""Process-wide resources of a device server, shared by all its OETDevices.

One :class:`~ska_oso_oet.procedure.launcher.WorkerLauncher` serves every device of a server
process: it is created early in ``main`` (before ``tango.server.run`` starts omniORB threads)
and closed when the server exits. Devices built without it (e.g. in unit tests that run the
device class directly) let their service own a launcher of its own.
"""

from __future__ import annotations

import threading

from ..procedure.launcher import WorkerLauncher

_lock = threading.Lock()
_launcher: WorkerLauncher | None = None


def install_launcher(launcher: WorkerLauncher | None) -> None:
    """Make ``launcher`` the one the devices of this process share (None removes it)."""
    global _launcher
    with _lock:
        _launcher = launcher


def shared_launcher() -> WorkerLauncher | None:
    with _lock:
        return _launcher
