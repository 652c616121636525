"""``/activities``: running the activities of scheduling blocks.

The device does not run activities yet, so every route answers 501 with the documented error
body; clients can tell "not available on this server" from a bad request or a missing id.
"""

from __future__ import annotations

from typing import Any, NoReturn

from fastapi import APIRouter, Body

from .. import errors
from ..errors import GatewayError
from ..schemas import error_responses

router = APIRouter(prefix="/activities", tags=["activities"])

_NOT_YET = (
    "Activities are not available on this OET yet: run scripts as procedures "
    "(POST /procedures) until the activity service is deployed"
)


def _not_available() -> NoReturn:
    raise GatewayError(errors.NOT_IMPLEMENTED, _NOT_YET)


@router.get("", responses=error_responses(501))
async def list_activities() -> dict[str, Any]:
    """List activities (``{"activities": [...]}``). Not available yet: 501."""
    _not_available()


@router.post("", status_code=201, responses=error_responses(501))
async def create_activity(body: dict[str, Any] = Body(default_factory=dict)) -> dict[str, Any]:  # noqa: B008
    """Run an activity of a scheduling block (``{"activity": ...}``). Not available yet: 501."""
    _not_available()


@router.get("/{activity_id}", responses=error_responses(501))
async def get_activity(activity_id: int) -> dict[str, Any]:
    """Return one activity (``{"activity": ...}``). Not available yet: 501."""
    _not_available()
