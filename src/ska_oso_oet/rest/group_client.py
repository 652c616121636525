"""The gateway's client of the OETGroups device (linked observation groups).

:class:`GroupsClient` is what ``/groups`` uses (tests pass a fake);
:class:`TangoGroupsClient` speaks to the device with the connection handling of
:class:`~.client.TangoDeviceClient` (background connection, one ``lastEvent`` subscription
feeding its hub, whose events the gateway relays into ``/stream``).
"""

from __future__ import annotations

import abc
import asyncio
import json
from typing import Any

from . import errors
from .client import TangoDeviceClient, _loads
from .errors import GatewayError
from .hub import EventHub


class GroupsClient(abc.ABC):
    """Asynchronous access to the groups device; every failure is a :class:`GatewayError`."""

    hub: EventHub
    device: str

    async def start(self) -> None:
        """Called once from the app's lifespan, on the event loop."""
        self.hub.bind(asyncio.get_running_loop())

    async def close(self) -> None:
        """Called once when the app shuts down."""
        self.hub.close_all()

    @abc.abstractmethod
    async def create_group(
        self, request: dict[str, Any], requested_by: str | None = None
    ) -> dict[str, Any]:
        """Link procedures/activities; returns the new group."""

    @abc.abstractmethod
    async def add_member(
        self, group_id: int, member: dict[str, int], requested_by: str | None = None
    ) -> dict[str, Any]:
        """Link one more procedure (``{"procedure_id": n}``) or activity into a group."""

    @abc.abstractmethod
    async def disband(self, group_id: int, requested_by: str | None = None) -> dict[str, Any]:
        """Unlink a group's members (nothing is stopped)."""

    @abc.abstractmethod
    async def get_group(self, group_id: int) -> dict[str, Any]:
        """One group; ``OET_NOT_FOUND`` when unknown."""

    @abc.abstractmethod
    async def list_groups(self) -> list[dict[str, Any]]:
        """Every group the device keeps, oldest first."""


class TangoGroupsClient(TangoDeviceClient, GroupsClient):
    """:class:`GroupsClient` over ``tango.DeviceProxy`` (the OETGroups device)."""

    async def _group_command(self, name: str, argument: str) -> dict[str, Any]:
        try:
            return _loads(await self._command(name, argument), name)
        except GatewayError as exc:
            raise _unavailable(self.device, exc) from exc

    async def create_group(
        self, request: dict[str, Any], requested_by: str | None = None
    ) -> dict[str, Any]:
        return await self._group_command("CreateGroup", _body(request, requested_by))

    async def add_member(
        self, group_id: int, member: dict[str, int], requested_by: str | None = None
    ) -> dict[str, Any]:
        body = {"group_id": group_id, **member}
        return await self._group_command("AddMember", _body(body, requested_by))

    async def disband(self, group_id: int, requested_by: str | None = None) -> dict[str, Any]:
        return await self._group_command("Disband", _body({"group_id": group_id}, requested_by))

    async def get_group(self, group_id: int) -> dict[str, Any]:
        return await self._group_command("GetGroup", str(group_id))

    async def list_groups(self) -> list[dict[str, Any]]:
        try:
            return await self._read_json_list("groups")
        except GatewayError as exc:
            raise _unavailable(self.device, exc) from exc


def _body(body: dict[str, Any], requested_by: str | None) -> str:
    return json.dumps({**body, "requested_by": requested_by} if requested_by else body)


def _unavailable(device: str, exc: GatewayError) -> GatewayError:
    """A groups device that cannot be reached says so in the words of groups."""
    if exc.code in (errors.DEVICE_UNREACHABLE, errors.NOT_IMPLEMENTED):
        return GatewayError(
            errors.DEVICE_UNREACHABLE,
            f"Linked groups are unavailable: the groups device {device} cannot be reached "
            f"({exc.message})",
        )
    return exc
