"""``/procedures``: create, list, inspect, start and stop procedures.

Each handler is a translation: validate the body, call the device, add the ``uri``. Two waits
keep older clients working now that the device answers at once: ``PUT state=RUNNING`` on a
procedure that is still being prepared waits for READY (older servers answered the POST only at
READY, so clients PUT straight after it), and ``PUT state=STOPPED`` answers once the procedure
has really stopped, as the original server did.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import TypeAdapter

from ...vocabulary import FINAL_STATES, PREPARING_STATES, ProcedureState
from .. import errors
from ..auth import Operator, Viewer
from ..deps import ClientDep, SettingsDep
from ..errors import GatewayError
from ..listing import Kept, Snapshot
from ..schemas import (
    AnswerRequest,
    CreateProcedureRequest,
    InputRequestResponse,
    ProcedureListResponse,
    ProcedureResponse,
    StopResponse,
    SwitchRequest,
    SwitchResponse,
    UpdateProcedureRequest,
    error_responses,
)

router = APIRouter(prefix="/procedures", tags=["procedures"])

#: What FastAPI would do with ``response_model=ProcedureListResponse``, done once per list.
LIST_ANSWER = TypeAdapter(ProcedureListResponse)
#: And with ``response_model=ProcedureResponse`` (the fast path's ``GET /procedures/{id}``).
ONE_ANSWER = TypeAdapter(ProcedureResponse)
#: Encoded answers kept per app (the newest few: one list per base URL and version).
_ANSWERS_KEPT = 16
#: Encoded answers kept per copy of one procedure (one per base URL).
_BODIES_KEPT = 8


def public_summary(request: Request, summary: dict[str, Any]) -> dict[str, Any]:
    """The device's summary plus ``uri``, built from the URL the client used (host, any root
    path of a proxy and the ``/subarray/<n>`` mount of an extra device)."""
    return {"uri": f"{_procedure_base(request)}{summary['id']}", **summary}


def _procedure_base(request: Request) -> str:
    """``uri`` of a procedure without its id. The route's path is looked up once per app (a
    walk over every route, the larger part of building a list's URIs) and the origin once per
    request."""
    scope = request.scope
    cached = scope.get("oet.procedure_base")
    if cached is None:
        state = request.app.state
        path = getattr(state, "procedure_path", None)
        if path is None:
            path = request.app.url_path_for("get_procedure", procedure_id="0")[:-1]
            state.procedure_path = path
        cached = f"{origin(request)}{scope.get('root_path', '')}{path}"
        scope["oet.procedure_base"] = cached
    return cached


#: Origins by (scheme, Host header, server address): built once, not per request.
_ORIGINS: dict[tuple[Any, ...], str] = {}
_ORIGINS_KEPT = 256


def origin(request: Request) -> str:
    """``scheme://host[:port]`` as Starlette's ``request.url`` gives it (from the Host
    header, else the server's address), without parsing a URL per request."""
    scope = request.scope
    host = next((v for k, v in scope["headers"] if k == b"host"), None)
    server = scope.get("server")  # a tuple from uvicorn, a list from some test clients
    key = (scope.get("scheme", "http"), host, tuple(server) if server else None)
    found = _ORIGINS.get(key)
    if found is None:
        url = request.url
        found = f"{url.scheme}://{url.netloc}"
        if len(_ORIGINS) >= _ORIGINS_KEPT:
            _ORIGINS.clear()
        _ORIGINS[key] = found
    return found


@router.get("", response_model=ProcedureListResponse, responses=error_responses(503))
async def list_procedures(request: Request, client: ClientDep, _: Viewer) -> Response:
    """List the procedures in the device's history window, oldest first."""
    return await procedure_list_answer(request, client, LIST_ANSWER, _wrapped)


def _wrapped(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"procedures": summaries}


async def procedure_list_answer(
    request: Request,
    client: ClientDep,
    adapter: TypeAdapter[Any],
    frame: Callable[[list[dict[str, Any]]], Any],
) -> Response:
    """``GET /procedures`` of every API version: the list framed by ``frame`` and encoded as
    FastAPI encodes ``adapter``'s response model (validated, then ``dump_json``), but once per
    version of the device lists and base URL instead of on every request."""
    snapshot = await client.procedures_snapshot()
    return Response(_list_body(request, snapshot, adapter, frame), media_type="application/json")


def encoded_one(request: Request, kept: Kept) -> bytes:
    """The body of v1.0's ``GET /procedures/{id}`` for ``kept`` (the fast path's), encoded
    once per copy of the summary and base URL while the gateway keeps that copy."""
    bodies = kept.bodies
    if bodies is None:
        return _encode_one(request, kept.summary)
    base = _procedure_base(request)
    body = bodies.get(base)
    if body is None:
        if len(bodies) >= _BODIES_KEPT:  # many Host headers for one procedure: start afresh
            bodies.clear()
        body = bodies[base] = _encode_one(request, kept.summary)
    return body


def _encode_one(request: Request, summary: dict[str, Any]) -> bytes:
    return ONE_ANSWER.dump_json(
        ONE_ANSWER.validate_python({"procedure": public_summary(request, summary)})
    )


def encoded_list(request: Request, snapshot: Snapshot) -> bytes:
    """The body of v1.0's ``GET /procedures`` for ``snapshot`` (the fast path's)."""
    return _list_body(request, snapshot, LIST_ANSWER, _wrapped)


def _list_body(
    request: Request,
    snapshot: Snapshot,
    adapter: TypeAdapter[Any],
    frame: Callable[[list[dict[str, Any]]], Any],
) -> bytes:
    def encode() -> bytes:
        content = frame([public_summary(request, s) for s in snapshot.summaries])
        return adapter.dump_json(adapter.validate_python(content))

    if snapshot.version is None:
        return encode()
    return _encoded(request, (id(adapter), _procedure_base(request), snapshot.version), encode)


def _encoded(request: Request, key: Hashable, encode: Callable[[], bytes]) -> bytes:
    state = request.app.state
    answers: OrderedDict[Hashable, bytes] | None = getattr(state, "encoded_answers", None)
    if answers is None:
        answers = state.encoded_answers = OrderedDict()
    body = answers.get(key)
    if body is None:
        body = answers[key] = encode()
        while len(answers) > _ANSWERS_KEPT:
            answers.popitem(last=False)
    return body


@router.post(
    "",
    status_code=201,
    response_model=ProcedureResponse,
    responses=error_responses(400, 503),
)
async def create_procedure(
    body: CreateProcedureRequest, request: Request, client: ClientDep, caller: Operator
) -> dict[str, Any]:
    """Prepare a new procedure: load the script and call its ``init``.

    Answers at once (201) with the procedure in its first state; follow its progress to READY
    with ``GET /procedures/{id}`` or the event stream.
    """
    request_body = body.model_dump(mode="json", exclude_unset=True)
    script_args = request_body.get("script_args") or {}
    for name in ("main", "run"):  # older clients send an empty "run" along with "init"
        if name in script_args and not any(script_args[name].values()):
            del script_args[name]
    summary = await client.prepare(request_body, requested_by=caller.user)
    return {"procedure": public_summary(request, summary)}


@router.get(
    "/{procedure_id}", response_model=ProcedureResponse, responses=error_responses(400, 404, 503)
)
async def get_procedure(
    procedure_id: int, request: Request, client: ClientDep, _: Viewer
) -> dict[str, Any]:
    """Return one procedure."""
    return {"procedure": public_summary(request, await client.get_procedure(procedure_id))}


@router.put(
    "/{procedure_id}",
    response_model=ProcedureResponse | StopResponse,
    responses=error_responses(400, 404, 409, 503),
)
async def update_procedure(
    procedure_id: int,
    body: UpdateProcedureRequest,
    request: Request,
    client: ClientDep,
    settings: SettingsDep,
    caller: Operator,
) -> dict[str, Any]:
    """Start (``"state": "RUNNING"``, with ``script_args.main``), stop (``"state": "STOPPED"``,
    ``"abort": true`` to run the abort script afterwards), pause (``"state": "PAUSED"``: at the
    script's next checkpoint, or at once with ``"immediate": true``) or resume (``"state":
    "RUNNING"`` of a PAUSED procedure) a procedure. Pause and resume answer once the state is
    reached, or after ``pause_wait_seconds`` with the state then (a pause still pending)."""
    summary = await client.get_procedure(procedure_id)
    if body.state == "STOPPED":
        wait = settings.stop_wait_seconds
        return {"abort_message": await _stop(client, wait, summary, body, caller.user)}
    if body.state == "PAUSED" or (body.state == "RUNNING" and summary["state"] == "PAUSED"):
        summary = await pause_or_resume(client, settings, summary, body, caller.user)
        return {"procedure": public_summary(request, summary)}
    if body.state == summary["state"]:
        return {"procedure": public_summary(request, summary)}
    if body.state != "RUNNING":
        # Any state is a valid body (older clients PUT the whole procedure back), so asking
        # for one the procedure cannot be moved to is a conflict with its state, not a 400.
        raise GatewayError(
            errors.STATE_CONFLICT,
            f"Cannot set state {body.state} on procedure {procedure_id} ({summary['state']}): "
            "only RUNNING, PAUSED and STOPPED can be requested",
        )
    if summary["state"] in PREPARING_STATES:
        await client.wait_for_state(
            procedure_id, {ProcedureState.READY, *FINAL_STATES}, settings.start_wait_seconds
        )
    script_args = body.model_dump(mode="json", exclude_unset=True).get("script_args")
    summary = await client.start_procedure(procedure_id, script_args, requested_by=caller.user)
    return {"procedure": public_summary(request, summary)}


async def pause_or_resume(
    client: ClientDep,
    settings: SettingsDep,
    summary: dict[str, Any],
    body: UpdateProcedureRequest,
    requested_by: str | None = None,
) -> dict[str, Any]:
    """PUT state=PAUSED / RUNNING-from-PAUSED, shared by every API version: ask the device,
    then wait (``pause_wait_seconds``) for the state; returns the summary as it is then."""
    procedure_id = summary["id"]
    if body.state == "PAUSED":
        if summary["state"] == "PAUSED" and not body.immediate:
            return summary
        if summary["state"] not in ("RUNNING", "PAUSED"):
            raise GatewayError(
                errors.STATE_CONFLICT,
                f"Cannot pause procedure {procedure_id}: it is {summary['state']}, not RUNNING",
            )
        await client.pause_procedure(procedure_id, body.immediate, requested_by)
        wanted = {ProcedureState.PAUSED, *FINAL_STATES}
    else:
        await client.resume_procedure(procedure_id, requested_by)
        wanted = {ProcedureState.RUNNING, *FINAL_STATES}
    return await client.wait_for_state(procedure_id, wanted, settings.pause_wait_seconds)


@router.get(
    "/{procedure_id}/request",
    response_model=InputRequestResponse,
    responses=error_responses(400, 404, 503),
)
async def get_request(procedure_id: int, client: ClientDep, _: Viewer) -> dict[str, Any]:
    """The question the procedure's script waits on (``ask``/``input``), or null."""
    return {"request": (await client.get_procedure(procedure_id)).get("request")}


@router.post(
    "/{procedure_id}/request",
    response_model=InputRequestResponse,
    responses=error_responses(400, 404, 409, 503),
)
async def post_answer(
    procedure_id: int, body: AnswerRequest, client: ClientDep, caller: Operator
) -> dict[str, Any]:
    """Answer the script's pending question (recorded with the caller's user). 400 when the
    value is not one of its choices; 409 when ``request_id`` is not pending any more
    (answered, timed out) or never was."""
    return {"request": await answer_request(client, procedure_id, body, caller.user)}


async def answer_request(
    client: ClientDep, procedure_id: int, body: AnswerRequest, requested_by: str | None = None
) -> dict[str, Any]:
    """POST /procedures/{id}/request, shared by every API version."""
    return await client.answer_request(procedure_id, body.request_id, body.value, requested_by)


@router.post(
    "/{procedure_id}/switch",
    response_model=SwitchResponse,
    responses=error_responses(400, 404, 409, 503, 504),
)
async def switch_procedure(
    procedure_id: int,
    body: SwitchRequest,
    request: Request,
    client: ClientDep,
    settings: SettingsDep,
    caller: Operator,
) -> dict[str, Any]:
    """Target-of-opportunity switch in one call: stop whatever runs on the subarray of this
    READY procedure (``abort``: then run the abort script), and start it. ``force`` kills the
    running script at once instead of waiting out its stop grace. Answers once the procedure
    is RUNNING (the device's ``Switch`` command)."""
    return await switch(procedure_id, body, request, client, settings, caller.user)


async def switch(
    procedure_id: int,
    body: SwitchRequest,
    request: Request,
    client: ClientDep,
    settings: SettingsDep,
    requested_by: str | None = None,
) -> dict[str, Any]:
    """POST /procedures/{id}/switch, shared by every API version: the answer is the device's
    ``Switch`` result (what it stopped, with the abort script, and the TOO as it started),
    which arrives as the command's LRC result once the TOO runs."""
    script_args = body.model_dump(mode="json", exclude_unset=True).get("script_args")
    wait = settings.stop_wait_seconds + settings.start_wait_seconds
    result = await client.switch(
        procedure_id, body.abort, body.force, script_args, requested_by, timeout=wait
    )
    return {
        "stopped": [public_summary(request, s) for s in result.get("stopped") or []],
        "started": public_summary(request, result["started"]),
    }


async def _stop(
    client: ClientDep,
    wait: float,
    summary: dict[str, Any],
    body: UpdateProcedureRequest,
    user: str,
) -> str:
    procedure_id = summary["id"]
    not_running = f"Cannot stop script with ID {procedure_id}: Script is not running"
    if summary["state"] in FINAL_STATES:
        return not_running
    try:
        await client.stop_procedure(procedure_id, body.abort, requested_by=user)
    except GatewayError as exc:
        if exc.code == errors.STATE_CONFLICT:  # it finished meanwhile
            return not_running
        raise
    summary = await client.wait_for_state(procedure_id, FINAL_STATES, wait)
    if summary["state"] not in FINAL_STATES:
        return f"Stop requested for script with ID {procedure_id}; it is still {summary['state']}"
    message = f"Successfully stopped script with ID {procedure_id}"
    return message + " and aborted subarray activity" if body.abort else message
