"""The gateway's HTTP/1.1 protocol: uvicorn's httptools parser with a ceiling on the head.

httptools (llhttp, C) parses a request several times faster than h11, but unlike h11 it has no
limit on how large a request line and header block may grow: a client could make the gateway
buffer megabytes before :class:`~.limits.RequestLimits` sees the headers. This protocol counts
the bytes of a request's head as they arrive and answers 400 and closes the connection once
they exceed :data:`MAX_HEAD_BYTES` (the ceiling h11 was given before), so that memory per
connection stays bounded and everything up to the ceiling gets the documented 431.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: Largest request line + header block the parser buffers; above ``max_header_bytes``
#: (``OET_REST_MAX_HEADER_BYTES``) so that the documented 431 answers everything below it.
MAX_HEAD_BYTES = 64 * 1024


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` that refuses a request head larger than MAX_HEAD_BYTES."""

    _in_head = True
    _head_bytes = 0

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Checked after parsing: a chunk that completes the head may carry body bytes too,
        # which must not count against it. Until the head completes, every byte is head.
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self._in_head = False  # answer once
            message = f"request head larger than {MAX_HEAD_BYTES} bytes"
            self.logger.warning("Refused a request: %s", message)
            self.send_400_response(message)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # what arrives next is the head of the next request
