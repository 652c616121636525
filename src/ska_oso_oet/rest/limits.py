"""Request limits, enforced before any route (or JSON parser) sees the request.

An ASGI middleware, so that an oversized or pathological request costs a bounded amount of
memory and time and is answered with the documented error body:

* headers larger than ``max_header_bytes`` in total: 431 (the gateway's HTTP protocol itself
  refuses request heads beyond the larger :data:`~.protocol.MAX_HEAD_BYTES`, with a 400);
* a body larger than ``max_body_bytes``: 413, decided from ``Content-Length`` before reading
  anything, or while reading a chunked body (never more than the limit is buffered);
* a JSON body nested deeper than ``max_json_depth``: 400 (the JSON parser and pydantic recurse,
  so a 10,000-deep document would otherwise end in a ``RecursionError``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from ..jsonlimits import json_depth_exceeds
from .errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestLimits:
    """The limits middleware (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, max_json_depth: int, max_header_bytes: int
    ):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        header_bytes = sum(len(name) + len(value) + 4 for name, value in headers)
        if header_bytes > self.max_header_bytes:
            await _refuse(
                send,
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                "RequestHeaderFieldsTooLarge",
                f"request headers take {header_bytes} bytes; at most {self.max_header_bytes} "
                "are accepted",
            )
            return
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        length = _content_length(headers)
        if length is not None and length > self.max_body_bytes:
            await self._too_large(send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # disconnected: nobody to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if self.max_json_depth and json_depth_exceeds(body, self.max_json_depth):
            await _refuse(
                send,
                HTTPStatus.BAD_REQUEST,
                "Malformed Request",
                f"JSON nested deeper than {self.max_json_depth} levels is refused",
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        await _refuse(
            send,
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            "RequestTooLarge",
            f"request body larger than {self.max_body_bytes} bytes is refused "
            "(OET_REST_MAX_BODY_BYTES)",
        )


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Send, status: HTTPStatus, error_type: str, message: str) -> None:
    payload = json.dumps(error_body(status, error_type, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": int(status),
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
