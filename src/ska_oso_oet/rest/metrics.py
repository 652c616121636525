"""Prometheus metrics of the gateway (``GET /metrics``).

Measured in the gateway, per device (label ``device``):

* ``oet_gateway_device_command_seconds{command=prepare|start|stop}``: histogram of the time the
  gateway spends in the device calls behind ``POST /procedures`` (``Prepare`` + reading the new
  procedure), ``PUT state=RUNNING`` (``Start`` + reading it back) and ``PUT state=STOPPED``
  (``Stop``); failures also count in ``oet_gateway_device_command_errors_total{code}``;
* ``oet_gateway_prepare_to_ready_seconds``: from a ``POST /procedures`` of this gateway to the
  procedure's READY event reaching the gateway;
* ``oet_gateway_events_relayed_total``: device events received and fanned out to the streams;
* ``oet_gateway_sse_clients``: ``/stream`` connections open now.

Read from the devices at scrape time (by the :class:`~.monitor.Monitor`, bounded and cached):
``oet_device_reachable``, ``oet_device_usable``, ``oet_device_ping_seconds``,
``oet_device_state{state}``, ``oet_device_admin_mode{mode}``, ``oet_device_health_state{health}``
and ``oet_procedures{state}`` (count of the device's ``procedureStates`` for every procedure
state). Process metrics (CPU, memory, file descriptors) come with prometheus-client.

Hot paths stay cheap: a batch of events costs one counter increment (label children are bound
once) and a substring test per event; an SSE connection one dictionary lookup.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import wraps
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Receive, Scope, Send

from ..vocabulary import AdminMode, HealthState, ProcedureState
from .errors import GatewayError

if TYPE_CHECKING:
    from .client import DeviceClient
    from .hub import EventHub, HubEvent
    from .monitor import DeviceStatus

#: Procedure states (DESIGN §3): every one is exported, 0 included, so series never vanish.
PROCEDURE_STATES = tuple(state.value for state in ProcedureState)
#: SKA enum labels (ska-control-model), as the device publishes them.
ADMIN_MODES = tuple(mode.name for mode in AdminMode)
HEALTH_STATES = tuple(health.name for health in HealthState)
COMMAND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
READY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: Procedure ids remembered for the POST -> READY measurement (per device).
READY_TRACKED = 256
CONTENT_TYPE = CONTENT_TYPE_LATEST


class GatewayMetrics:
    """The gateway's metrics in a registry of its own (one per app, so tests can build many).

    :param paths: device name -> where its API is served; the ``/stream`` of each is counted
    """

    def __init__(self, paths: Mapping[str, str]):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.command_seconds = Histogram(
            "oet_gateway_device_command_seconds",
            "Time spent in the device calls of prepare, start and stop requests",
            ["device", "command"],
            buckets=COMMAND_BUCKETS,
            registry=self.registry,
        )
        self.command_errors = Counter(
            "oet_gateway_device_command_errors",
            "Prepare, start and stop device calls that failed, by error code",
            ["device", "command", "code"],
            registry=self.registry,
        )
        self.ready_seconds = Histogram(
            "oet_gateway_prepare_to_ready_seconds",
            "From POST /procedures to the procedure's READY event reaching the gateway",
            ["device"],
            buckets=READY_BUCKETS,
            registry=self.registry,
        )
        self.events_relayed = Counter(
            "oet_gateway_events_relayed",
            "Device events received by the gateway and fanned out to its event streams",
            ["device"],
            registry=self.registry,
        )
        self.sse_clients = Gauge(
            "oet_gateway_sse_clients",
            "Event-stream (/stream) connections open now",
            ["device"],
            registry=self.registry,
        )
        #: exact path of each device's ``/stream`` -> its gauge child
        self.stream_paths = {
            f"{path}/stream": self.sse_clients.labels(device) for device, path in paths.items()
        }
        #: open ``/stream`` connections of all devices (for ``/health``)
        self.sse_open = 0
        self._snapshot: Callable[[], list[DeviceStatus]] = list
        self.registry.register(_DeviceCollector(self))

    def set_snapshot(self, snapshot: Callable[[], list[DeviceStatus]]) -> None:
        """Where device statuses come from at collection time (the monitor's last probes)."""
        self._snapshot = snapshot

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def instrument(self, device: str, client: DeviceClient) -> None:
        """Time the client's prepare/start/stop calls and count the events of its hub.

        Wraps the methods of this one client object and observes its hub, so the routes, the
        client classes and the hub stay unaware of metrics.
        """
        if getattr(client, "_oet_instrumented", False):  # the lifespan ran before (tests)
            return
        client._oet_instrumented = True  # type: ignore[attr-defined]
        ready = _ReadyTimer(self.ready_seconds.labels(device))
        for attribute, command in (
            ("prepare", "prepare"),
            ("start_procedure", "start"),
            ("stop_procedure", "stop"),
        ):
            original = getattr(client, attribute)
            timed = self._timed(device, command, original)
            if command == "prepare":
                timed = ready.wrap_prepare(timed)
            setattr(client, attribute, timed)
        _count_events(client.hub, self.events_relayed.labels(device), ready)

    def _timed(self, device: str, command: str, call: Callable[..., Any]) -> Callable[..., Any]:
        histogram = self.command_seconds.labels(device, command)
        errors = self.command_errors

        @wraps(call)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await call(*args, **kwargs)
            except GatewayError as exc:
                errors.labels(device, command, exc.code).inc()
                raise
            finally:
                histogram.observe(time.perf_counter() - started)

        return timed


class _ReadyTimer:
    """POST -> READY per procedure, on the event loop thread (no locks needed).

    The READY event may reach the gateway before or after ``prepare`` returns the procedure's
    id, so whichever comes second completes the measurement.
    """

    def __init__(self, histogram: Any):
        self.histogram = histogram
        self.posted: dict[int, float] = {}  # procedure id -> monotonic time of the POST
        self.ready: dict[int, float] = {}  # procedure id -> monotonic time READY was seen

    def wrap_prepare(self, prepare: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(prepare)
        async def prepare_and_track(*args: Any, **kwargs: Any) -> Any:
            posted = time.monotonic()
            summary = await prepare(*args, **kwargs)
            procedure_id = summary.get("id") if isinstance(summary, dict) else None
            if isinstance(procedure_id, int):
                ready_at = self.ready.pop(procedure_id, None)
                if ready_at is not None:
                    self.histogram.observe(ready_at - posted)
                else:
                    _remember(self.posted, procedure_id, posted)
            return summary

        return prepare_and_track

    def on_ready(self, procedure_id: Any) -> None:
        if not isinstance(procedure_id, int):
            return
        posted = self.posted.pop(procedure_id, None)
        if posted is not None:
            self.histogram.observe(time.monotonic() - posted)
        else:
            _remember(self.ready, procedure_id, time.monotonic())


def _remember(table: dict[int, float], key: int, value: float) -> None:
    table[key] = value
    if len(table) > READY_TRACKED:  # procedures never seen READY (failed) or not ours
        del table[next(iter(table))]


def _count_events(hub: EventHub, counter: Any, ready: _ReadyTimer) -> None:
    """Count what the hub publishes, a batch at a time, and time prepares to READY."""

    def count(events: Sequence[HubEvent]) -> None:
        counter.inc(len(events))
        for event in events:
            if '"READY"' not in event.raw:  # most events: no decoding needed
                continue
            data = event.data
            if data.get("new_state") == "READY" and data.get("topic") == (
                "procedure.lifecycle.statechange"
            ):
                ready.on_ready(data.get("procedure_id"))

    hub.add_observer(count)


class _DeviceCollector(Collector):
    """Device gauges from the monitor's latest probes (collected at scrape time)."""

    def __init__(self, metrics: GatewayMetrics):
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # dynamic: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        statuses = self.metrics._snapshot()
        reachable = GaugeMetricFamily(
            "oet_device_reachable", "1 when the device answered its last probe", labels=["device"]
        )
        usable = GaugeMetricFamily(
            "oet_device_usable",
            "1 when the device answers, is ONLINE/ENGINEERING, ON/RUNNING and not FAILED",
            labels=["device"],
        )
        ping = GaugeMetricFamily(
            "oet_device_ping_seconds", "Round trip of the last ping", labels=["device"]
        )
        state = GaugeMetricFamily(
            "oet_device_state", "The device's Tango State (1 for the current one)",
            labels=["device", "state"],
        )  # fmt: skip
        admin = GaugeMetricFamily(
            "oet_device_admin_mode", "The device's adminMode (1 for the current one)",
            labels=["device", "mode"],
        )  # fmt: skip
        health = GaugeMetricFamily(
            "oet_device_health_state", "The device's healthState (1 for the current one)",
            labels=["device", "health"],
        )  # fmt: skip
        procedures = GaugeMetricFamily(
            "oet_procedures", "Procedures in the device's history window, by state",
            labels=["device", "state"],
        )  # fmt: skip
        for status in statuses:
            device = status.device
            reachable.add_metric([device], float(status.reachable))
            usable.add_metric([device], float(status.usable))
            if not status.reachable:
                continue  # nothing current to say about the rest
            if status.ping_seconds is not None:
                ping.add_metric([device], status.ping_seconds)
            if status.state is not None:
                state.add_metric([device, status.state], 1.0)
            if status.admin_mode is not None:
                for mode in ADMIN_MODES:
                    admin.add_metric([device, mode], float(mode == status.admin_mode))
            if status.health_state is not None:
                for value in HEALTH_STATES:
                    health.add_metric([device, value], float(value == status.health_state))
            counts = dict.fromkeys(PROCEDURE_STATES, 0)
            for procedure_state in status.procedure_states:
                counts[procedure_state] = counts.get(procedure_state, 0) + 1
            for procedure_state, count in counts.items():
                procedures.add_metric([device, procedure_state], float(count))
        yield from (reachable, usable, ping, state, admin, health, procedures)


class SseClientCounter:
    """ASGI middleware: counts open ``/stream`` connections per device.

    Counting at the connection, not in the hub, leaves out the gateway's own internal
    subscriptions (waits for a state) and costs one dictionary lookup per request.
    """

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics):
        self.app = app
        self.metrics = metrics
        self.gauges = metrics.stream_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gauge = self.gauges.get(scope.get("path", "")) if scope["type"] == "http" else None
        if gauge is None:
            await self.app(scope, receive, send)
            return
        gauge.inc()
        self.metrics.sse_open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            gauge.dec()
            self.metrics.sse_open -= 1
