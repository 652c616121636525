"""``/health`` and ``/metrics``: operability of the gateway and of the devices it fronts.

Both are served at the root (``/health``, ``/metrics``: what Kubernetes probes and Prometheus
expect) and under the base path (``/api/v1.0/health``, ``/api/v1.0/metrics``: reachable
through an Ingress that only routes the API's prefix). They cover every device of the gateway,
the ``/subarray/<n>`` ones included.

``/health`` answers 200 when every device is usable (see :mod:`..monitor`), 503 otherwise,
always within about :data:`~..monitor.PROBE_TIMEOUT` seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..metrics import CONTENT_TYPE, SseClientCounter
from ..monitor import Monitor

router = APIRouter(tags=["operability"])

_HEALTH_EXAMPLE = {
    "status": "ok",
    "gateway": {"status": "ok", "version": "1.0.0", "started_at": 1795000000.0,
                "uptime_seconds": 12.5, "sse_clients": 1},
    "devices": [{"device": "oso/oet/1", "path": "/api/v1.0", "usable": True, "reachable": True,
                 "connected": True, "state": "ON", "admin_mode": "ONLINE", "health_state": "OK",
                 "ping_ms": 0.21, "procedures": 3, "error": None, "checked_at": 1795000012.4}],
}  # fmt: skip


@router.get(
    "/health",
    responses={
        200: {"description": "Every device is usable", "content": {
            "application/json": {"example": _HEALTH_EXAMPLE}}},
        503: {"description": "A device is unreachable, OFFLINE, in FAULT/DISABLE or FAILED, or "
              "the gateway is not connected to it yet (same body)"},
    },
)  # fmt: skip
async def health(request: Request) -> JSONResponse:
    """The gateway's status and each fronted device's reachability (ping, ``State``,
    ``adminMode``, ``healthState``); 200 when every device answers and is usable, else 503."""
    monitor: Monitor = request.app.state.monitor
    statuses = await monitor.check()
    usable = all(status.usable for status in statuses)
    body: dict[str, Any] = {
        "status": "ok" if usable else "unavailable",
        "gateway": monitor.gateway_status(),
        "devices": [status.as_json() for status in statuses],
    }
    return JSONResponse(body, status_code=200 if usable else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format", "content": {CONTENT_TYPE: {}}}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: procedures by state, device reachability, prepare/start/stop
    latencies, events relayed, event-stream clients (see docs/operations.md)."""
    monitor: Monitor = request.app.state.monitor
    await monitor.check()  # fresh device gauges (bounded, cached for a second)
    return Response(monitor.metrics.render(), media_type=CONTENT_TYPE)


def install(app: FastAPI, base_path: str, paths: Mapping[str, str]) -> Monitor:
    """Serve ``/health`` and ``/metrics`` on ``app`` and count its event-stream clients.

    The caller attaches the device clients with :meth:`Monitor.attach` once they exist (in the
    app's lifespan) and closes the monitor on shutdown.

    :param paths: device name -> where its API is served
    """
    monitor = Monitor(paths)
    app.state.monitor = monitor
    app.include_router(router, prefix=base_path)  # documented in the OpenAPI
    if base_path:  # the same at the root, left out of the OpenAPI (no duplicate operations)
        app.add_api_route("/health", health, methods=["GET"], include_in_schema=False)
        app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    app.add_middleware(SseClientCounter, metrics=monitor.metrics)
    return monitor
