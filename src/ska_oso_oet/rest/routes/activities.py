"""``/activities``: run the activities of scheduling blocks, and ``/sbds`` to store those.

An activity runs the script its SBD names for it, as a procedure of its own (``procedure_id``),
with the SBD's arguments merged with the request's. A device without activities (an older
version) answers 501 with the documented error body.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from ..auth import Admin, Operator, Viewer
from ..deps import ClientDep
from ..schemas import (
    SBD_ID_PATTERN,
    ActivityListResponse,
    ActivityResponse,
    CreateActivityRequest,
    SbdRequest,
    SbdResponse,
    error_responses,
)

#: SBD ids as the device stores them (printable ASCII): anything else is a clear 400 here
#: rather than a failure to encode it for Tango.
SbdId = Annotated[str, Path(pattern=SBD_ID_PATTERN, examples=["sbd-demo-00001"])]

router = APIRouter(prefix="/activities", tags=["activities"])
sbd_router = APIRouter(prefix="/sbds", tags=["activities"])


def public_activity(request: Request, summary: dict[str, Any]) -> dict[str, Any]:
    """The device's activity summary plus ``uri`` (built like procedure URIs)."""
    path = request.app.url_path_for("get_activity", activity_id=str(summary["id"]))
    root = request.scope.get("root_path", "")
    return {"uri": f"{request.url.scheme}://{request.url.netloc}{root}{path}", **summary}


@router.get("", response_model=ActivityListResponse, responses=error_responses(501, 503))
async def list_activities(request: Request, client: ClientDep, _: Viewer) -> dict[str, Any]:
    """List the activities in the device's history window, oldest first."""
    summaries = await client.list_activities()
    return {"activities": [public_activity(request, s) for s in summaries]}


@router.post(
    "",
    status_code=201,
    response_model=ActivityResponse,
    responses=error_responses(400, 404, 409, 501, 503),
)
async def create_activity(
    body: CreateActivityRequest, request: Request, client: ClientDep, caller: Operator
) -> dict[str, Any]:
    """Run an activity of a stored SBD (``sbd_id``). Answers at once (201) with the activity
    REQUESTED and its procedure; the script starts by itself once READY unless
    ``prepare_only`` (then start its procedure with ``PUT /procedures/{procedure_id}``)."""
    summary = await client.run_activity(body.model_dump(mode="json"), requested_by=caller.user)
    return {"activity": public_activity(request, summary)}


@router.get(
    "/{activity_id}", response_model=ActivityResponse, responses=error_responses(400, 404, 501)
)
async def get_activity(
    activity_id: int, request: Request, client: ClientDep, _: Viewer
) -> dict[str, Any]:
    """Return one activity."""
    return {"activity": public_activity(request, await client.get_activity(activity_id))}


@sbd_router.post(
    "", status_code=201, response_model=SbdResponse, responses=error_responses(400, 501, 503)
)
async def add_sbd(client: ClientDep, _: Admin, sbd: SbdRequest) -> dict[str, Any]:
    """Store (or replace) a scheduling block definition, for activities to run."""
    return {"sbd": await client.add_sbd(sbd.model_dump(mode="json", exclude_unset=True))}


@sbd_router.get("/{sbd_id}", response_model=SbdResponse, responses=error_responses(400, 404, 501))
async def get_sbd(sbd_id: SbdId, client: ClientDep, _: Viewer) -> dict[str, Any]:
    """Return a stored scheduling block definition."""
    return {"sbd": await client.get_sbd(sbd_id)}
