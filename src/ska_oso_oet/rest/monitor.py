"""Health of the devices the gateway fronts, for ``GET /health`` and ``GET /metrics``.

Each device gets a *probe*: for a Tango device, :class:`TangoProbe` pings it and reads
``State``, ``adminMode``, ``healthState`` and ``procedureStates`` in one round trip, through a
``DeviceProxy`` and a thread of its own (so a gateway whose Tango threads are all busy, or a
device that hangs, still gets a timely answer). :class:`Monitor` bounds every check:

* a probe that has not answered within ``timeout`` counts as *unreachable*, and the next check
  waits for that same probe instead of starting another: one device can never pile up threads;
* checks of several devices run concurrently, so ``/health`` answers within about ``timeout``;
* a result is reused for ``max_age`` seconds, so health checks, Prometheus scrapes and
  impatient clients together cost one probe per device per second at most.

A device is *usable* when it answers, the gateway's own client is connected to it (requests
can be served), its ``State`` is ON or RUNNING, its ``adminMode`` is ONLINE or ENGINEERING and
its ``healthState`` is not FAILED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from ..vocabulary import COMMAND_ACCEPTING_ADMIN_MODES, AdminMode, HealthState, label_of
from .client import DeviceClient, TangoDeviceClient, error_from_any
from .metrics import GatewayMetrics

LOGGER = logging.getLogger(__name__)

#: Values under which the device accepts commands.
USABLE_STATES = frozenset({"ON", "RUNNING"})
USABLE_ADMIN_MODES = frozenset(mode.name for mode in COMMAND_ACCEPTING_ADMIN_MODES)
#: Longest wait for one device's probe (Tango's own timeout on the probe proxy is shorter).
PROBE_TIMEOUT = 1.5
#: How long a probe result is reused.
MAX_AGE = 1.0
_PROBED_ATTRIBUTES = ("State", "adminMode", "healthState", "procedureStates")


@dataclass(frozen=True)
class DeviceStatus:
    """What one probe found out about one device."""

    device: str
    reachable: bool
    state: str | None = None
    admin_mode: str | None = None
    health_state: str | None = None
    procedure_states: tuple[str, ...] = ()
    ping_seconds: float | None = None
    error: str | None = None
    #: The gateway's client of this device is connected (its requests can be served).
    connected: bool = True
    #: Where the device's API is served, e.g. ``/api/v1.0`` or ``/subarray/2/api/v1.0``.
    path: str = ""
    checked_at: float = field(default_factory=time.time)

    @property
    def usable(self) -> bool:
        return (
            self.reachable
            and self.connected
            and self.error is None
            and (self.state is None or self.state in USABLE_STATES)
            and (self.admin_mode is None or self.admin_mode in USABLE_ADMIN_MODES)
            and self.health_state != HealthState.FAILED.name
        )

    def as_json(self) -> dict[str, Any]:
        """The ``/health`` entry of this device."""
        return {
            "device": self.device,
            "path": self.path,
            "usable": self.usable,
            "reachable": self.reachable,
            "connected": self.connected,
            "state": self.state,
            "admin_mode": self.admin_mode,
            "health_state": self.health_state,
            "ping_ms": None if self.ping_seconds is None else round(self.ping_seconds * 1e3, 3),
            "procedures": len(self.procedure_states),
            "error": self.error,
            "checked_at": self.checked_at,
        }


class Probe:
    """Finds out a device's status; may block or fail (the :class:`Monitor` bounds it)."""

    async def probe(self) -> DeviceStatus:
        raise NotImplementedError

    def close(self) -> None:
        """Release threads and connections (shutdown)."""


class TangoProbe(Probe):
    """Probes an OETDevice through a ``DeviceProxy`` and a thread of its own."""

    def __init__(self, device: str, timeout_ms: int = 1000):
        self.device = device
        self._timeout_ms = timeout_ms
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="health-probe")
        self._proxy: Any = None

    async def probe(self) -> DeviceStatus:
        future: Future[DeviceStatus] = self._executor.submit(self._probe_blocking)
        return await asyncio.wrap_future(future)

    def _probe_blocking(self) -> DeviceStatus:
        import tango  # only the Tango probe needs it

        try:
            if self._proxy is None:
                proxy = tango.DeviceProxy(self.device)
                proxy.set_timeout_millis(self._timeout_ms)
                self._proxy = proxy
            started = time.perf_counter()
            self._proxy.ping()
            ping = time.perf_counter() - started
            values = self._proxy.read_attributes(list(_PROBED_ATTRIBUTES))
        except Exception as exc:
            return DeviceStatus(self.device, reachable=False, error=error_from_any(exc).message)
        read = dict(zip(_PROBED_ATTRIBUTES, values, strict=True))
        failed = [name for name, value in read.items() if getattr(value, "has_failed", False)]
        state = read["State"].value
        return DeviceStatus(
            self.device,
            reachable=True,
            state=None if state is None else str(state),
            admin_mode=label_of(AdminMode, read["adminMode"].value),
            health_state=label_of(HealthState, read["healthState"].value),
            procedure_states=tuple(read["procedureStates"].value or ()),
            ping_seconds=ping,
            error=f"cannot read {', '.join(failed)}" if failed else None,
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class ClientProbe(Probe):
    """For clients that are not Tango (test doubles): the procedure list is the probe."""

    def __init__(self, device: str, client: DeviceClient):
        self.device = device
        self.client = client

    async def probe(self) -> DeviceStatus:
        started = time.perf_counter()
        try:
            summaries = await self.client.list_procedures()
        except Exception as exc:
            return DeviceStatus(self.device, reachable=False, error=error_from_any(exc).message)
        return DeviceStatus(
            self.device,
            reachable=True,
            procedure_states=tuple(str(s.get("state")) for s in summaries),
            ping_seconds=time.perf_counter() - started,
        )


class DeviceMonitor:
    """One device: its client, its probe, the probe in flight and the last result."""

    def __init__(self, device: str, path: str, client: DeviceClient, probe: Probe):
        self.device = device
        self.path = path
        self.client = client
        self.probe = probe
        self.last: DeviceStatus | None = None
        self._pending: asyncio.Task[DeviceStatus] | None = None

    async def status(self, timeout: float, max_age: float) -> DeviceStatus:
        last = self.last
        if last is not None and time.time() - last.checked_at < max_age:
            return last
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(self.probe.probe())
        try:
            found = await asyncio.wait_for(asyncio.shield(self._pending), timeout)
        except TimeoutError:
            found = DeviceStatus(
                self.device, reachable=False, error=f"no answer within {timeout:g} s"
            )
        except Exception as exc:  # a probe is not supposed to raise: report, don't fail
            LOGGER.warning("health probe of %s failed", self.device, exc_info=True)
            found = DeviceStatus(self.device, reachable=False, error=f"probe failed: {exc}")
        hub_closed = getattr(getattr(self.client, "hub", None), "closed", False)
        connected = bool(getattr(self.client, "connected", True)) and not hub_closed
        self.last = replace(found, path=self.path, connected=connected, checked_at=time.time())
        return self.last


class Monitor:
    """Health and metrics of the gateway and of every device it fronts.

    :param paths: device name -> where its API is served (e.g. ``/api/v1.0``)
    """

    def __init__(
        self,
        paths: Mapping[str, str],
        metrics: GatewayMetrics | None = None,
        timeout: float = PROBE_TIMEOUT,
        max_age: float = MAX_AGE,
    ):
        self.paths = dict(paths)
        self.metrics = metrics or GatewayMetrics(self.paths)
        self.timeout = timeout
        self.max_age = max_age
        self.devices: dict[str, DeviceMonitor] = {}
        self.started_at = time.time()
        self.metrics.set_snapshot(self.snapshot)

    def attach(self, clients: Mapping[str, DeviceClient]) -> None:
        """Watch these clients (from the app's lifespan, before they start): choose each
        device's probe and instrument the client for ``/metrics``."""
        for device, client in clients.items():
            if isinstance(client, TangoDeviceClient):
                probe: Probe = TangoProbe(client.device, int(min(self.timeout, 1.0) * 1000))
            else:
                probe = ClientProbe(device, client)
            self.devices[device] = DeviceMonitor(device, self.paths.get(device, ""), client, probe)
            self.metrics.instrument(device, client)

    async def check(self) -> list[DeviceStatus]:
        """Every device's status, probed concurrently, within about ``timeout``."""
        monitors = list(self.devices.values())
        return list(await asyncio.gather(*(m.status(self.timeout, self.max_age) for m in monitors)))

    def snapshot(self) -> list[DeviceStatus]:
        """The latest statuses without probing (for metric collection)."""
        return [m.last for m in self.devices.values() if m.last is not None]

    def gateway_status(self) -> dict[str, Any]:
        """The gateway's own part of ``/health``."""
        from .. import __version__

        return {
            "status": "ok",
            "version": __version__,
            "started_at": self.started_at,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "sse_clients": self.metrics.sse_open,
        }

    def close(self) -> None:
        for monitor in self.devices.values():
            if monitor._pending is not None:
                monitor._pending.cancel()
            with contextlib.suppress(Exception):
                monitor.probe.close()
