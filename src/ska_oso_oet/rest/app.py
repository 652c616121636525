"""The FastAPI application of the gateway.

One app is one OET for every device it fronts: at ``base_path`` a create goes to the device of
its ``subarray_id``, ids lead to their device and lists and the stream cover every device
(:mod:`.routing`); each extra device is also served alone under ``/subarray/<n>``. Serve it with
uvicorn's factory mode (``uvicorn --factory ska_oso_oet.rest.app:create_app``, or
``oet-gateway``); settings then come from ``OET_REST_*`` variables. Tests pass their own
settings and a fake :class:`~.client.DeviceClient`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from .. import __version__
from . import v7
from .auth import Authenticator
from .client import DeviceClient, TangoDeviceClient
from .errors import install_error_handlers
from .fastpath import ProcedureListFastPath
from .group_client import GroupsClient, TangoGroupsClient
from .hub import EventHub
from .limits import RequestLimits
from .routes import activities, groups, health, procedures, stream
from .routing import RoutedClient
from .settings import RestSettings

LOGGER = logging.getLogger(__name__)

DESCRIPTION = """\
The documented OET REST API, served in front of the OETDevice Tango device: create procedures
(load a script and call its `init`), start them (`main`), stop them, inspect their history, and
follow every engine and script event as Server-Sent Events on `/stream`.
"""


def create_app(
    settings: RestSettings | None = None,
    client: DeviceClient | None = None,
    extra_clients: Mapping[str, DeviceClient] | None = None,
    groups_client: GroupsClient | None = None,
) -> FastAPI:
    """Build the gateway app.

    The device ``settings.device`` is served under ``settings.base_path``; each device of
    ``settings.devices`` gets the same API under ``/subarray/<n>`` in front of it.

    :param settings: defaults to ``RestSettings()`` (``OET_REST_*`` environment variables)
    :param client: the client of ``settings.device``; by default a :class:`TangoDeviceClient`,
        created (and connected in the background) in the app's lifespan
    :param extra_clients: clients of ``settings.devices`` by device name (same default)
    :param groups_client: the client of the groups device (``/groups``); by default a Tango
        client of ``settings.groups_device`` when the device clients are the default ones
    """
    settings = settings or RestSettings()
    authenticator = Authenticator.from_settings(settings)
    mounted: dict[str, FastAPI] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Mounted apps get no lifespan of their own: open every device's client here.
        device_clients = {settings.device: client or _tango_client(settings)}
        for device, api in mounted.items():
            given = (extra_clients or {}).get(device)
            device_clients[device] = given or _tango_client(api.state.settings)
            api.state.client = device_clients[device]
        # The default URL is one OET: every device behind one routing client.
        merged = EventHub(settings.replay_size, settings.client_queue_size)
        app.state.client = RoutedClient(device_clients, merged, settings.id_stride)
        if v7_app is not None:  # the same routing client: one implementation, two framings
            v7_app.state.client = app.state.client
        monitor.attach(device_clients)
        linked = _groups_client(settings, groups_client, client is None)
        for api in (app, *mounted.values()):
            api.state.groups = linked
        if linked is not None and len(device_clients) > 1:
            linked.hub.add_observer(app.state.client.hub.relay)  # group events on /stream
        started: list[Any] = []
        try:
            for device_client in [*device_clients.values(), app.state.client, linked]:
                if device_client is not None:
                    await device_client.start()
                    started.append(device_client)
            yield
        finally:
            for device_client in reversed(started):
                await device_client.close()
            monitor.close()

    app = _api(settings, lifespan, authenticator)
    v7_app = v7.create_v7_app(settings, authenticator) if settings.v7_path else None
    if v7_app is not None:
        app.mount(settings.v7_path, v7_app)
    for device in settings.devices:
        device_settings = settings.model_copy(update={"device": device, "devices": []})
        api = _api(device_settings, None, authenticator, title=f"OET REST API of {device}")
        app.mount(subarray_prefix(device), api)
        mounted[device] = api
    paths = {settings.device: settings.base_path}
    paths.update((device, subarray_prefix(device) + settings.base_path) for device in mounted)
    monitor = health.install(app, settings.base_path, paths)  # /health, /metrics
    # The polled list, answered without routing when the copies are current (fastpath.py).
    app.add_middleware(ProcedureListFastPath, path=f"{settings.base_path}/procedures")
    # Outermost: limits apply before anything (the mounted devices' APIs included) reads the
    # request.
    app.add_middleware(
        RequestLimits,
        max_body_bytes=settings.max_body_bytes,
        max_json_depth=settings.max_json_depth,
        max_header_bytes=settings.max_header_bytes,
    )
    return app


def subarray_prefix(device: str) -> str:
    """Where an extra device is served: ``oso/oet/3`` -> ``/subarray/3`` (``stack_service``
    applies the same rule)."""
    match = re.search(r"(\d+)$", device)
    return f"/subarray/{match.group(1) if match else re.sub(r'[^A-Za-z0-9_-]+', '-', device)}"


def _groups_client(
    settings: RestSettings, given: GroupsClient | None, default: bool
) -> GroupsClient | None:
    if given is not None or not default or not settings.groups_device:
        return given
    return TangoGroupsClient(
        settings.trl(settings.groups_device),
        EventHub(settings.replay_size, settings.client_queue_size),
        timeout_ms=settings.tango_timeout_ms,
        threads=2,
        reconnect_seconds=settings.reconnect_seconds,
    )


def _tango_client(settings: RestSettings) -> TangoDeviceClient:
    return TangoDeviceClient(
        settings.device_trl,
        EventHub(settings.replay_size, settings.client_queue_size),
        timeout_ms=settings.tango_timeout_ms,
        threads=settings.tango_threads,
        reconnect_seconds=settings.reconnect_seconds,
    )


def _api(
    settings: RestSettings,
    lifespan: Any,
    authenticator: Authenticator,
    title: str = "OET REST API",
) -> FastAPI:
    """One device's API: routes, error handlers, documentation."""
    base = settings.base_path
    app = FastAPI(
        title=title,
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url=f"{base}/openapi.json",
        docs_url=f"{base}/docs",
        redoc_url=f"{base}/redoc",
    )
    app.state.settings = settings
    app.state.authenticator = authenticator
    if not authenticator.enabled:
        _document_as_open(app)
    install_error_handlers(app)
    routers = (procedures.router, activities.router, activities.sbd_router, groups.router)
    for router in (*routers, stream.router):
        app.include_router(router, prefix=base)
    return app


def _document_as_open(app: FastAPI) -> None:
    """An open gateway (no authentication configured) asks for no token: its OpenAPI
    document then declares no security requirement, so that it matches what it serves."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                if isinstance(operation, dict):
                    operation.pop("security", None)
                    for status in ("401", "403"):
                        operation.get("responses", {}).pop(status, None)
        schema.get("components", {}).pop("securitySchemes", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
