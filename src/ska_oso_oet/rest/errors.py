"""Error vocabulary of the gateway and its mapping to HTTP.

Every failure reaches the client as the documented JSON body
``{"error": "404 Not Found", "type": "ResourceNotFound", "Message": "..."}`` with a fitting
status. Device failures arrive as ``tango.DevFailed``; :func:`error_from_dev_failed` turns them
into :class:`GatewayError` by their stable ``OET_*`` reason, so nothing here imports tango.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .auth import AuthError, OidcUnavailable

LOGGER = logging.getLogger(__name__)

INVALID_REQUEST = "OET_INVALID_REQUEST"
NOT_FOUND = "OET_NOT_FOUND"
STATE_CONFLICT = "OET_STATE_CONFLICT"
DEVICE_OFFLINE = "OET_DEVICE_OFFLINE"
ENGINE_UNAVAILABLE = "OET_ENGINE_UNAVAILABLE"
#: A configured engine limit would be passed (e.g. MaxPrepared).
LIMIT = "OET_LIMIT"
#: Gateway-side codes (no device reason carries them).
DEVICE_UNREACHABLE = "OET_DEVICE_UNREACHABLE"
DEVICE_TIMEOUT = "OET_DEVICE_TIMEOUT"
DEVICE_ERROR = "OET_DEVICE_ERROR"
NOT_IMPLEMENTED = "OET_NOT_IMPLEMENTED"

#: code -> (HTTP status, error type shown to clients)
_HTTP: dict[str, tuple[HTTPStatus, str]] = {
    INVALID_REQUEST: (HTTPStatus.BAD_REQUEST, "Malformed Request"),
    NOT_FOUND: (HTTPStatus.NOT_FOUND, "ResourceNotFound"),
    STATE_CONFLICT: (HTTPStatus.CONFLICT, "StateConflict"),
    DEVICE_OFFLINE: (HTTPStatus.SERVICE_UNAVAILABLE, "DeviceOffline"),
    ENGINE_UNAVAILABLE: (HTTPStatus.SERVICE_UNAVAILABLE, "EngineUnavailable"),
    LIMIT: (HTTPStatus.CONFLICT, "LimitExceeded"),
    DEVICE_UNREACHABLE: (HTTPStatus.SERVICE_UNAVAILABLE, "DeviceUnavailable"),
    DEVICE_TIMEOUT: (HTTPStatus.GATEWAY_TIMEOUT, "DeviceTimeout"),
    DEVICE_ERROR: (HTTPStatus.INTERNAL_SERVER_ERROR, "DeviceError"),
    NOT_IMPLEMENTED: (HTTPStatus.NOT_IMPLEMENTED, "NotImplemented"),
}


class GatewayError(Exception):
    """An expected failure with a stable code; the HTTP status follows from the code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> HTTPStatus:
        return _HTTP.get(self.code, _HTTP[DEVICE_ERROR])[0]

    @property
    def error_type(self) -> str:
        return _HTTP.get(self.code, _HTTP[DEVICE_ERROR])[1]


#: Longest message sent in an error body: errors must not echo a large input back.
MAX_MESSAGE_CHARS = 2000


def error_body(status: int, error_type: str, message: str) -> dict[str, str]:
    """The documented error JSON (the message cut to :data:`MAX_MESSAGE_CHARS`)."""
    phrase = HTTPStatus(status).phrase
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + f"... ({len(message)} characters)"
    return {"error": f"{status} {phrase}", "type": error_type, "Message": message}


def error_from_dev_failed(exc: Exception) -> GatewayError:
    """Translate a ``tango.DevFailed`` (duck-typed: ``args`` holds DevError records).

    An ``OET_*`` reason anywhere in the error stack wins (the device raises those on purpose);
    a timeout becomes 504; any other ``API_*``/``DB_*`` reason means the device (or its server,
    or the database) cannot be reached, which is 503.
    """
    errors = [e for e in getattr(exc, "args", ()) if hasattr(e, "reason")]
    for err in errors:
        if str(err.reason).startswith("OET_"):
            return GatewayError(str(err.reason), str(err.desc).strip())
    if not errors:
        return GatewayError(DEVICE_ERROR, str(exc))
    first = errors[0]
    reasons = {str(e.reason) for e in errors}
    desc = str(first.desc).strip()
    if reasons & {"API_CommandNotFound", "API_AttrNotFound"}:
        return GatewayError(
            NOT_IMPLEMENTED, f"The OET device does not offer this (an older version?): {desc}"
        )
    if "API_DeviceTimedOut" in reasons:
        return GatewayError(DEVICE_TIMEOUT, f"The OET device did not answer in time: {desc}")
    if any(r.startswith(("API_", "DB_")) for r in reasons):
        return GatewayError(DEVICE_UNREACHABLE, f"The OET device cannot be reached: {desc}")
    return GatewayError(DEVICE_ERROR, f"{first.reason}: {desc}")


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        where = ".".join(str(p)[:60] for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "Malformed request"


def _allowed_methods(request: Request) -> str:
    """Every method the requested path serves: Starlette answers 405 with the methods of the
    first route matching the path only, while GET and POST of one path are separate routes."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    methods.discard("HEAD")  # implied by GET, and not an operation of the OpenAPI document
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    """Make every error, including framework ones, use the documented body."""

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse(error_body(exc.status, exc.error_type, exc.message), exc.status)

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.status, exc.error_type, exc.message), exc.status, headers=exc.headers
        )

    @app.exception_handler(OidcUnavailable)
    async def _oidc_unavailable(_: Request, exc: OidcUnavailable) -> JSONResponse:
        LOGGER.warning("OIDC provider unavailable: %s", exc)
        status = HTTPStatus.SERVICE_UNAVAILABLE
        return JSONResponse(error_body(status, "IdentityProviderUnavailable", str(exc)), status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        status = HTTPStatus.BAD_REQUEST
        body = error_body(status, "Malformed Request", _validation_message(exc))
        return JSONResponse(body, status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail: Any = exc.detail
        error_type = HTTPStatus(exc.status_code).phrase.replace(" ", "")
        if exc.status_code == HTTPStatus.NOT_FOUND:
            error_type = "ResourceNotFound"
        body = error_body(exc.status_code, error_type, str(detail))
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
            headers["Allow"] = _allowed_methods(request)
        return JSONResponse(body, exc.status_code, headers=headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        LOGGER.exception("unexpected error while handling a request")
        status = HTTPStatus.INTERNAL_SERVER_ERROR
        return JSONResponse(error_body(status, type(exc).__name__, str(exc)), status)
