"""An in-memory groups device for gateway tests: the real group rules
(:class:`~ska_oso_oet.groups.GroupCoordinator`) over a table of known procedures."""

from __future__ import annotations

from typing import Any

from ska_oso_oet.groups import GroupCoordinator, HaltOrder, HaltPolicy, MemberSpec
from ska_oso_oet.procedure.errors import OetError
from ska_oso_oet.rest import errors
from ska_oso_oet.rest.errors import GatewayError
from ska_oso_oet.rest.group_client import GroupsClient
from ska_oso_oet.rest.hub import EventHub


class FakeGroups(GroupsClient):
    def __init__(self, procedures: dict[int, str] | None = None):
        self.hub = EventHub(replay_size=100, queue_size=50)
        self.device = "oso/oet/groups"
        #: procedure id -> state, as the OET devices would report them
        self.procedures = dict(procedures or {})
        self.halts: list[HaltOrder] = []
        self.coordinator = GroupCoordinator(None, self.halts.append)

    def _spec(self, pid: int) -> MemberSpec:
        if pid not in self.procedures:
            raise GatewayError(errors.NOT_FOUND, f"procedure {pid} is not known to any OET device")
        return MemberSpec(pid, f"oso/oet/{pid % 100}", self.procedures[pid])

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except OetError as exc:
            raise GatewayError(exc.code, str(exc)) from exc

    async def create_group(
        self, request: dict[str, Any], requested_by: str | None = None
    ) -> dict[str, Any]:
        ids = request.get("procedures", []) + request.get("activities", [])
        specs = [self._spec(pid) for pid in ids]
        policy = HaltPolicy(request.get("abort", False), request.get("force", False))
        return self._call(
            self.coordinator.create, specs, policy, request.get("name", ""), requested_by or "?"
        )

    async def add_member(
        self, group_id: int, member: dict[str, int], requested_by: str | None = None
    ) -> dict[str, Any]:
        self._call(self.coordinator.get, group_id)
        spec = self._spec(next(iter(member.values())))
        return self._call(self.coordinator.add_member, group_id, spec, requested_by or "?")

    async def disband(self, group_id: int, requested_by: str | None = None) -> dict[str, Any]:
        return self._call(self.coordinator.disband, group_id, requested_by or "?")

    async def get_group(self, group_id: int) -> dict[str, Any]:
        return self._call(self.coordinator.get, group_id)

    async def list_groups(self) -> list[dict[str, Any]]:
        return self.coordinator.summaries()
