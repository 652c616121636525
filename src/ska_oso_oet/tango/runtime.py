"""Process-wide resources of a device server, shared by all its OETDevices.

One :class:`~ska_oso_oet.procedure.launcher.WorkerLauncher` serves every device of a server
process: it is created early in ``main`` (before ``tango.server.run`` starts omniORB threads)
and closed when the server exits. Devices built without it (e.g. in unit tests that run the
device class directly) let their service own a launcher of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..procedure.launcher import WorkerLauncher

_lock = threading.Lock()
_launcher: WorkerLauncher | None = None
_factory: Callable[[], WorkerLauncher] | None = None


def install_launcher(
    launcher: WorkerLauncher | None, factory: Callable[[], WorkerLauncher] | None = None
) -> None:
    """Make ``launcher`` the one the devices of this process share (None removes it);
    ``factory`` builds a replacement when a device's Reset finds it broken."""
    global _launcher, _factory
    with _lock:
        _launcher = launcher
        _factory = factory


def renew_launcher() -> WorkerLauncher | None:
    """The shared launcher, replaced by a new one first if it is broken (its fork server
    died) and a factory was installed. Devices still holding the old one stay in FAULT
    until their own Reset."""
    global _launcher
    with _lock:
        old = _launcher
        if old is None or old.healthy or _factory is None:
            return old
        _launcher = _factory()
        fresh = _launcher
    old.close()
    return fresh


def shared_launcher() -> WorkerLauncher | None:
    with _lock:
        return _launcher
