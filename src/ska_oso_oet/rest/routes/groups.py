"""``/groups``: linked observation groups (the OETGroups device).

A group links procedures (or activities) of several subarrays: when one member fails, is
stopped by somebody else or loses its device, the groups device stops every other member
(with the subarray's abort script when the group has ``abort``). Creating, extending and
disbanding a group needs the operator role, like procedure control; reading needs viewer.
Without a groups device the routes answer 503.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from .. import errors
from ..auth import Operator, Viewer
from ..errors import GatewayError
from ..group_client import GroupsClient
from ..schemas import error_responses

router = APIRouter(prefix="/groups", tags=["groups"])

Id = Annotated[int, Field(ge=1, le=2**31 - 1)]
GroupId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def _unique(ids: list[int]) -> list[int]:
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"procedure {repeated[0]} is listed more than once")
    return ids


_ID_SCHEMA = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}
UniqueIds = Annotated[
    list[Id],
    AfterValidator(_unique),
    WithJsonSchema({"type": "array", "uniqueItems": True, "items": _ID_SCHEMA}),
]


class CreateGroupRequest(BaseModel):
    """Body of ``POST /groups``: at least two procedures or activities in all."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"procedures": [101, 202, 303], "abort": True}],
            # At least two members in all (the groups device checks it too).
            "anyOf": [
                {"required": ["procedures"], "properties": {"procedures": {"minItems": 2}}},
                {"required": ["activities"], "properties": {"activities": {"minItems": 2}}},
                {
                    "required": ["procedures", "activities"],
                    "properties": {
                        "procedures": {"minItems": 1},
                        "activities": {"minItems": 1},
                    },
                },
            ],
        },
    )
    procedures: UniqueIds = Field(default_factory=list, max_length=64)
    #: Activities, each standing for its procedure.
    activities: UniqueIds = Field(default_factory=list, max_length=64)
    name: str = Field("", max_length=128)
    #: Halt the other members with their subarray's abort script after the stop.
    abort: bool = False
    #: Kill the other members at once instead of giving them the stop grace.
    force: bool = False


class AddMemberRequest(BaseModel):
    """Body of ``POST /groups/{id}/members``: one of the two."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {"required": ["procedure_id"], "not": {"required": ["activity_id"]}},
                {"required": ["activity_id"], "not": {"required": ["procedure_id"]}},
            ]
        },
    )
    procedure_id: Annotated[Id | None, WithJsonSchema(_ID_SCHEMA)] = None
    activity_id: Annotated[Id | None, WithJsonSchema(_ID_SCHEMA)] = None

    @model_validator(mode="after")
    def _one_of_them(self) -> AddMemberRequest:
        given = [k for k in ("procedure_id", "activity_id") if getattr(self, k) is not None]
        if len(given) != 1 or len(self.model_fields_set) != 1:
            raise ValueError("give one of procedure_id, activity_id")
        return self


class UpdateGroupRequest(BaseModel):
    """Body of ``PUT /groups/{id}``: disbanding is the one change asked for."""

    model_config = ConfigDict(extra="forbid")
    state: Literal["DISBANDED"]


class GroupMember(BaseModel):
    procedure_id: int
    activity_id: int | None = None
    device: str
    state: str
    halted: bool
    halt_outcome: str | None = None


class GroupHistoryEntry(BaseModel):
    timestamp: float
    state: str
    reason: str


class GroupSummary(BaseModel):
    id: int
    name: str
    state: Literal["ACTIVE", "HALTING", "HALTED", "COMPLETE", "DISBANDED"]
    policy: dict[str, bool]
    members: list[GroupMember]
    created_by: str
    history: list[GroupHistoryEntry]


class GroupResponse(BaseModel):
    group: GroupSummary


class GroupListResponse(BaseModel):
    groups: list[GroupSummary]


def get_groups(request: Request) -> GroupsClient:
    """The groups client of the app; 503 when the gateway has none."""
    client = getattr(request.app.state, "groups", None)
    if client is None:
        raise GatewayError(
            errors.DEVICE_UNREACHABLE,
            "Linked groups are unavailable: this gateway has no groups device "
            "(set OET_REST_GROUPS_DEVICE)",
        )
    return client


GroupsDep = Annotated[GroupsClient, Depends(get_groups)]


@router.get("", response_model=GroupListResponse, responses=error_responses(400, 503))
async def list_groups(_: Viewer, groups: GroupsDep) -> dict[str, Any]:
    """Every group kept by the groups device (the active ones and the newest finished)."""
    return {"groups": await groups.list_groups()}


@router.post(
    "",
    status_code=201,
    response_model=GroupResponse,
    responses=error_responses(400, 404, 409, 503),
)
async def create_group(
    body: CreateGroupRequest, caller: Operator, groups: GroupsDep
) -> dict[str, Any]:
    """Link procedures (or activities) of several subarrays into a group: when one member
    fails or is stopped, every other unfinished member is stopped. 404 names an unknown id,
    409 a procedure that has finished or is in another active group."""
    request = body.model_dump(exclude_defaults=True)
    return {"group": await groups.create_group(request, requested_by=caller.user)}


@router.get("/{group_id}", response_model=GroupResponse, responses=error_responses(400, 404, 503))
async def get_group(group_id: GroupId, _: Viewer, groups: GroupsDep) -> dict[str, Any]:
    """One group, with its members and its history."""
    return {"group": await groups.get_group(group_id)}


@router.post(
    "/{group_id}/members",
    response_model=GroupResponse,
    responses=error_responses(400, 404, 409, 503),
)
async def add_member(
    group_id: GroupId, body: AddMemberRequest, caller: Operator, groups: GroupsDep
) -> dict[str, Any]:
    """Link one more procedure (or activity) into an ACTIVE group."""
    member = body.model_dump(exclude_none=True)
    return {"group": await groups.add_member(group_id, member, requested_by=caller.user)}


@router.put(
    "/{group_id}", response_model=GroupResponse, responses=error_responses(400, 404, 409, 503)
)
async def update_group(
    group_id: GroupId, body: UpdateGroupRequest, caller: Operator, groups: GroupsDep
) -> dict[str, Any]:
    """``{"state": "DISBANDED"}``: unlink the members; they carry on independently."""
    return {"group": await groups.disband(group_id, requested_by=caller.user)}


@router.delete(
    "/{group_id}", response_model=GroupResponse, responses=error_responses(400, 404, 409, 503)
)
async def disband_group(group_id: GroupId, caller: Operator, groups: GroupsDep) -> dict[str, Any]:
    """Disband the group (as ``PUT {"state": "DISBANDED"}``); the group stays listed."""
    return {"group": await groups.disband(group_id, requested_by=caller.user)}
