"""``GET /procedures`` and ``GET /procedures/{id}`` without FastAPI's per-request machinery.

These are what clients poll, and once the gateway holds a current copy of every device's list
(:mod:`.listing`) and its encoded answer, routing, dependency resolution and the endpoint call
are most of what a GET costs. :class:`ProcedureListFastPath` is a pure ASGI layer that answers
exactly ``GET <base>/procedures`` and ``GET <base>/procedures/<digits>`` (no query string)
itself when the caller is admitted as a viewer by the same :class:`~.auth.Authenticator` the
routes use (no ``Authorization`` header on an open gateway, or a valid bearer token with a
role) and, for the list, every device's copy is current
(:meth:`~.client.DeviceClient.cached_procedures`). One procedure comes from the gateway's copy
of it (:class:`~.listing.ProcedureCopies`: read from its device once per change of the
procedure); a device error is answered with the body the error handler gives it.

Bodies are encoded as the routes' response models encode them (the list from the same cache of
encoded answers, one procedure once per copy of it and base URL). Anything else (another path
or method, a missing, malformed or refused token, a list copy that is not current, an
unexpected error) goes on to FastAPI unchanged, so its status codes and error bodies stay the
routes' own. It sits inside
:class:`~.limits.RequestLimits`, so the request limits apply first.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import Role
from .errors import GatewayError, error_body
from .routes import procedures

#: Longest id taken by the fast path (longer ones go to the route, which says what is wrong).
_MAX_ID_DIGITS = 18

LOGGER = logging.getLogger(__name__)


class ProcedureListFastPath:
    """Answers ``GET <path>`` from the current copies; everything else goes to ``app``."""

    def __init__(self, app: ASGIApp, path: str):
        self.app = app
        self.path = path
        self._one_prefix = f"{path}/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "GET" or scope.get("query_string"):
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        procedure_id: int | None = None
        if path != self.path:
            digits = path[len(self._one_prefix) :] if path.startswith(self._one_prefix) else ""
            if not (digits.isascii() and digits.isdigit() and len(digits) <= _MAX_ID_DIGITS):
                await self.app(scope, receive, send)
                return
            procedure_id = int(digits)
        try:
            body = await self._answer(scope, procedure_id)
        except GatewayError as exc:  # the device's answer: as the error handler renders it
            response = JSONResponse(error_body(exc.status, exc.error_type, exc.message), exc.status)
            await response(scope, receive, send)
            return
        except Exception:  # the route will say what is wrong, in its own words
            LOGGER.debug("GET %s left to the route", path, exc_info=True)
            body = None
        if body is None:
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, procedure_id: int | None) -> bytes | None:
        app: Any = scope.get("app")
        state = getattr(app, "state", None)
        client = getattr(state, "client", None)
        authenticator = getattr(state, "authenticator", None)
        if client is None or authenticator is None:
            return None
        snapshot = client.cached_procedures() if procedure_id is None else None
        if procedure_id is None and (snapshot is None or snapshot.version is None):
            return None
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization":  # the first one, as the routes read it
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer" or not token:
                    return None
                break
        try:
            principal = await authenticator.authenticate(token)
        except Exception:  # refused (or the identity provider is down): the route answers
            return None
        if not principal.has(Role.VIEWER):
            return None
        if procedure_id is None:
            return procedures.encoded_list(Request(scope), snapshot)
        kept = client.cached_procedure(procedure_id)  # no task, no await when current
        if kept is None:  # read (once per change of the procedure, see listing.py)
            kept = await client.procedure_copy(procedure_id)
        return procedures.encoded_one(Request(scope), kept)


def _route_path(scope: Scope) -> str:
    """The path the routes match (without a proxy's ``root_path``, as Starlette does)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
