"""``GET /procedures`` without FastAPI's per-request machinery, when nothing needs it.

Listing procedures is what clients poll, and once the gateway holds a current copy of every
device's list (:mod:`.listing`) and its encoded answer, routing, dependency resolution and the
endpoint call are most of what a GET costs. :class:`ProcedureListFastPath` is a pure ASGI layer
that answers exactly ``GET <base>/procedures`` (no query string) itself when:

* the caller is admitted as a viewer by the same :class:`~.auth.Authenticator` the routes use
  (no ``Authorization`` header on an open gateway, or a valid bearer token with a role);
* every device's copy is current (:meth:`~.client.DeviceClient.cached_procedures`).

The body is the one the route would send, from the same cache of encoded answers. Anything
else (another path or method, a missing, malformed or refused token, a copy that is not
current, an unexpected error before the answer starts) goes on to FastAPI unchanged, so its
status codes and error bodies stay the routes' own. It sits inside :class:`~.limits.RequestLimits`,
so the request limits apply first.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import Role
from .routes import procedures

LOGGER = logging.getLogger(__name__)


class ProcedureListFastPath:
    """Answers ``GET <path>`` from the current copies; everything else goes to ``app``."""

    def __init__(self, app: ASGIApp, path: str):
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "GET"
            or _route_path(scope) != self.path
            or scope.get("query_string")
        ):
            await self.app(scope, receive, send)
            return
        try:
            body = await self._answer(scope)
        except Exception:  # the route will say what is wrong, in its own words
            LOGGER.debug("GET %s left to the route", self.path, exc_info=True)
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

    async def _answer(self, scope: Scope) -> bytes | None:
        app: Any = scope.get("app")
        state = getattr(app, "state", None)
        client = getattr(state, "client", None)
        authenticator = getattr(state, "authenticator", None)
        if client is None or authenticator is None:
            return None
        snapshot = client.cached_procedures()
        if snapshot is None or snapshot.version is None:
            return None
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization":  # the first one, as the routes read it
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer" or not token:
                    return None
                break
        principal = await authenticator.authenticate(token)  # refused: raises, route answers
        if not principal.has(Role.VIEWER):
            return None
        return procedures.encoded_list(Request(scope), snapshot)


def _route_path(scope: Scope) -> str:
    """The path the routes match (without a proxy's ``root_path``, as Starlette does)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
