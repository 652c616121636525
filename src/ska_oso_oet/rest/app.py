"""The FastAPI application of the gateway.

Serve it with uvicorn's factory mode (``uvicorn --factory ska_oso_oet.rest.app:create_app``, or
``oet-gateway``); settings then come from ``OET_REST_*`` variables. Tests pass their own
settings and a fake :class:`~.client.DeviceClient`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .. import __version__
from .client import DeviceClient, TangoDeviceClient
from .errors import install_error_handlers
from .hub import EventHub
from .routes import activities, procedures, stream
from .settings import RestSettings

LOGGER = logging.getLogger(__name__)

DESCRIPTION = """\
The documented OET REST API, served in front of the OETDevice Tango device: create procedures
(load a script and call its `init`), start them (`main`), stop them, inspect their history, and
follow every engine and script event as Server-Sent Events on `/stream`.
"""


def create_app(settings: RestSettings | None = None, client: DeviceClient | None = None) -> FastAPI:
    """Build the gateway app.

    :param settings: defaults to ``RestSettings()`` (``OET_REST_*`` environment variables)
    :param client: the device client; by default a :class:`TangoDeviceClient` for
        ``settings.device``, created (and connected in the background) in the app's lifespan
    """
    settings = settings or RestSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        device_client = client or TangoDeviceClient(
            settings.device_trl,
            EventHub(settings.replay_size, settings.client_queue_size),
            timeout_ms=settings.tango_timeout_ms,
            threads=settings.tango_threads,
            reconnect_seconds=settings.reconnect_seconds,
        )
        await device_client.start()
        app.state.client = device_client
        try:
            yield
        finally:
            await device_client.close()

    base = settings.base_path
    app = FastAPI(
        title="OET REST API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url=f"{base}/openapi.json",
        docs_url=f"{base}/docs",
        redoc_url=f"{base}/redoc",
    )
    app.state.settings = settings
    install_error_handlers(app)
    for router in (procedures.router, activities.router, stream.router):
        app.include_router(router, prefix=base)
    return app
