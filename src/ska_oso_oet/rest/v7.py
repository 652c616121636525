"""The current OET REST API (v7), served beside the documented v1.0 API by the same code.

The routes here are framing only: each calls the v1.0 handler (same device calls, same waits,
same roles, same routing across subarrays) and unwraps its answer. What differs is what v7
clients expect from the reference OET v7.0.0: collections end with a slash (without it a 307
redirect), bodies are not wrapped (``{"procedure": ...}`` becomes the summary itself), the
script of a create is a union tagged by ``script_type`` whose URI prefix is checked (422),
validation errors are FastAPI's 422 ``{"detail": [...]}`` and every other error is
``{"detail": "<message>"}`` with the same status as in v1.0. The app is mounted at
``settings.v7_path`` (default ``/ska-oso-oet/oet/api/v7``) with its OpenAPI document at
``<prefix>/openapi.json`` and Swagger UI at ``<prefix>/ui``; its event stream frames each event
as ``data:<json>`` then ``id:<seq>``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Header, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..vocabulary import ProcedureState
from .auth import Authenticator, AuthError, OidcUnavailable, Operator, Viewer
from .deps import ClientDep, SettingsDep
from .errors import LOGGER, GatewayError
from .hub import HubEvent
from .routes import activities, procedures, stream
from .schemas import (
    ActivitySummary,
    AnswerRequest,
    CreateActivityRequest,
    CreateProcedureRequest,
    FunctionArgs,
    GitArgs,
    InputRequest,
    ProcedureSummary,
    StopResponse,
    SwitchRequest,
    SwitchResponse,
    UpdateProcedureRequest,
)
from .settings import RestSettings

DESCRIPTION = """\
The current OET REST API (v7), served by the same gateway and the same code as the documented
v1.0 API: procedures, activities and the event stream of every subarray the gateway fronts.
"""


class FilesystemScript(BaseModel):
    model_config = ConfigDict(extra="forbid")
    script_type: Literal["filesystem"]
    script_uri: str = Field(examples=["file:///scripts/hello_world.py"])

    @field_validator("script_uri")
    @classmethod
    def _file_uri(cls, value: str) -> str:
        if not value.startswith("file://"):
            raise ValueError("Filesystem script URI must start with file://")
        return value


class GitScript(BaseModel):
    model_config = ConfigDict(extra="forbid")
    script_type: Literal["git"]
    script_uri: str = Field(examples=["git://scripts/observe.py"])
    git_args: GitArgs
    create_env: bool = False

    @field_validator("script_uri")
    @classmethod
    def _git_uri(cls, value: str) -> str:
        if not value.startswith("git://"):
            raise ValueError("Git script URI must start with git://")
        return value


def _default_script_args() -> dict[str, FunctionArgs]:
    return {"init": FunctionArgs()}


class ProcedurePostRequest(BaseModel):
    """Body of ``POST /procedures/``."""

    model_config = ConfigDict(extra="forbid")
    script: Annotated[FilesystemScript | GitScript, Field(discriminator="script_type")]
    script_args: dict[str, FunctionArgs] = Field(default_factory=_default_script_args)


class ProcedurePutRequest(BaseModel):
    """Body of ``PUT /procedures/{procedure_id}``: ``state`` null changes nothing."""

    model_config = ConfigDict(extra="ignore")
    script_args: dict[str, FunctionArgs] | None = None
    state: Literal[tuple(s.value for s in ProcedureState)] | None = None  # type: ignore[valid-type]
    abort: bool = False
    #: With PAUSED: freeze at once instead of at the next checkpoint (docs/scripts.md).
    immediate: bool = False


router = APIRouter()

#: The v7 list, encoded as FastAPI would for ``response_model=list[ProcedureSummary]``.
LIST_ANSWER = TypeAdapter(list[ProcedureSummary])


def _unwrapped(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return summaries


@router.get("/procedures/", response_model=list[ProcedureSummary], tags=["procedures"])
async def list_procedures(request: Request, client: ClientDep, caller: Viewer) -> Response:
    """Every procedure of every subarray, oldest first."""
    return await procedures.procedure_list_answer(request, client, LIST_ANSWER, _unwrapped)


@router.post("/procedures/", status_code=201, response_model=ProcedureSummary, tags=["procedures"])
async def create_procedure(
    body: ProcedurePostRequest, request: Request, client: ClientDep, caller: Operator
) -> Any:
    """Prepare a procedure on the subarray of its ``init`` ``subarray_id`` (default 1)."""
    v1 = CreateProcedureRequest.model_validate(body.model_dump(mode="json"))
    return (await procedures.create_procedure(v1, request, client, caller))["procedure"]


@router.get("/procedures/{procedure_id}", response_model=ProcedureSummary, tags=["procedures"])
async def get_procedure(
    procedure_id: int, request: Request, client: ClientDep, caller: Viewer
) -> Any:
    """One procedure, wherever it runs."""
    return (await procedures.get_procedure(procedure_id, request, client, caller))["procedure"]


@router.put(
    "/procedures/{procedure_id}",
    response_model=ProcedureSummary | StopResponse,
    tags=["procedures"],
)
async def update_procedure(
    procedure_id: int,
    body: ProcedurePutRequest,
    request: Request,
    client: ClientDep,
    settings: SettingsDep,
    caller: Operator,
) -> Any:
    """``state: RUNNING`` starts a READY procedure (or resumes a PAUSED one), ``state:
    STOPPED`` stops it (``abort`` then runs the abort script), ``state: PAUSED`` pauses it at
    its next checkpoint (``immediate``: at once); anything else answers the current summary."""
    if body.state not in ("RUNNING", "STOPPED", "PAUSED"):
        return await get_procedure(procedure_id, request, client, caller)
    v1 = UpdateProcedureRequest.model_validate(body.model_dump(mode="json", exclude_unset=True))
    answer = await procedures.update_procedure(procedure_id, v1, request, client, settings, caller)
    return answer.get("procedure", answer)


@router.get(
    "/procedures/{procedure_id}/request", response_model=InputRequest | None, tags=["procedures"]
)
async def get_request(procedure_id: int, client: ClientDep, caller: Viewer) -> Any:
    """The question the procedure's script waits on, or null."""
    return (await procedures.get_request(procedure_id, client, caller))["request"]


@router.post("/procedures/{procedure_id}/request", response_model=InputRequest, tags=["procedures"])
async def post_answer(
    procedure_id: int, body: AnswerRequest, client: ClientDep, caller: Operator
) -> Any:
    """Answer the script's pending question (409 when it is no longer pending)."""
    return (await procedures.post_answer(procedure_id, body, client, caller))["request"]


@router.post(
    "/procedures/{procedure_id}/switch", response_model=SwitchResponse, tags=["procedures"]
)
async def switch_procedure(
    procedure_id: int,
    body: SwitchRequest,
    request: Request,
    client: ClientDep,
    settings: SettingsDep,
    caller: Operator,
) -> Any:
    """Target-of-opportunity switch in one call: stop whatever runs on the subarray of this
    READY procedure (``abort``: then run the abort script) and start it; ``force`` kills the
    running script at once instead of waiting out its stop grace. Answers once it runs, with
    ``{"stopped": [summaries], "started": summary}`` (409 when it is not READY)."""
    return await procedures.switch(procedure_id, body, request, client, settings, caller.user)


@router.get("/activities/", response_model=list[ActivitySummary], tags=["activities"])
async def list_activities(request: Request, client: ClientDep, caller: Viewer) -> Any:
    """Every activity of every subarray, oldest first."""
    return (await activities.list_activities(request, client, caller))["activities"]


@router.post("/activities/", status_code=201, response_model=ActivitySummary, tags=["activities"])
async def create_activity(
    body: CreateActivityRequest, request: Request, client: ClientDep, caller: Operator
) -> Any:
    """Run an activity of a stored SBD."""
    return (await activities.create_activity(body, request, client, caller))["activity"]


@router.get("/activities/{activity_id}", response_model=ActivitySummary, tags=["activities"])
async def get_activity(
    activity_id: int, request: Request, client: ClientDep, caller: Viewer
) -> Any:
    """One activity, wherever it runs."""
    return (await activities.get_activity(activity_id, request, client, caller))["activity"]


def _frame(event: HubEvent) -> str:
    raw = event.raw
    if "\n" in raw or "\r" in raw:
        raw = "\ndata:".join(raw.splitlines())
    return f"data:{raw}\nid:{event.seq}\n\n"


@router.get("/stream", response_class=stream.EventStreamResponse, tags=["events"])
async def stream_events(
    client: ClientDep,
    settings: SettingsDep,
    _: Viewer,
    last_event_id: Annotated[str | None, Header()] = None,
    resume_after: Annotated[str | None, Query(alias="last_event_id")] = None,
) -> stream.EventStreamResponse:
    """Every subarray's events (``text/event-stream``) until the client disconnects."""
    after = stream._parse_event_id(last_event_id if last_event_id is not None else resume_after)
    messages = stream._messages(
        client.hub, after, settings.sse_retry_ms, settings.keepalive_seconds, frame=_frame
    )
    return stream.EventStreamResponse(
        messages,
        media_type="text/event-stream; charset=utf-8",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def create_v7_app(settings: RestSettings, authenticator: Authenticator) -> FastAPI:
    """The v7 API as an app to mount at ``settings.v7_path`` (its client is set in the main
    app's lifespan: the same routing client as v1.0's)."""
    app = FastAPI(
        title="OET REST API v7",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url="/ui",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.authenticator = authenticator
    _install_detail_errors(app)
    app.include_router(router)
    return app


def _detail(status: int, message: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status, headers=headers)


def _install_detail_errors(app: FastAPI) -> None:
    """v7's error bodies: ``{"detail": ...}`` (validation errors keep FastAPI's 422 list)."""

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        return _detail(exc.status, exc.message)

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        return _detail(exc.status, exc.message, exc.headers)

    @app.exception_handler(OidcUnavailable)
    async def _oidc_unavailable(_: Request, exc: OidcUnavailable) -> JSONResponse:
        return _detail(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _detail(HTTPStatus.UNPROCESSABLE_ENTITY, jsonable_encoder(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _detail(exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        LOGGER.exception("unexpected error while handling a v7 request")
        return _detail(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")
