"""Shared dependencies as ``Annotated`` aliases; tests override :func:`get_client`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .client import DeviceClient
from .settings import RestSettings


# Both are coroutines: FastAPI runs a plain ``def`` dependency on its thread pool, a thread
# hop per request for an attribute lookup.
async def get_settings(request: Request) -> RestSettings:
    """The settings the app was built with."""
    return request.app.state.settings


async def get_client(request: Request) -> DeviceClient:
    """The device client opened in the app's lifespan."""
    return request.app.state.client


SettingsDep = Annotated[RestSettings, Depends(get_settings)]
ClientDep = Annotated[DeviceClient, Depends(get_client)]
