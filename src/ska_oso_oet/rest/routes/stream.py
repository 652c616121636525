"""``/stream``: the device's events as Server-Sent Events.

Each event is one SSE message: ``data:`` is the event JSON exactly as the device published it
(with ``topic``), ``id:`` its sequence number. The first message has no data: its ``retry:``
tells browsers how soon to reconnect, its ``id:`` is the current position in the stream (so a
client that reconnects before any event arrived resumes from there), and its arrival tells any
client that the subscription is in place (open the stream, wait for it, then act). A
``Last-Event-ID`` header (or ``?last_event_id=``) resumes after that event from the replay
buffer. Silence is broken by keep-alive comments. A client that falls too far behind is
disconnected rather than slowing anyone else; it resumes with ``Last-Event-ID``.

Whatever has queued up since the last write goes out as one chunk: a burst of thousands of
events costs a few writes, not one write (and one task switch) per event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from ..auth import Viewer
from ..deps import ClientDep, SettingsDep
from ..hub import EventHub, HubEvent
from ..schemas import error_responses

router = APIRouter(tags=["events"])

KEEP_ALIVE = b": keep-alive\n\n"


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response (so OpenAPI documents the route as SSE)."""

    media_type = "text/event-stream"


def _parse_event_id(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None  # an id we never issued: stream live events only


def _frame(event: HubEvent) -> str:
    raw = event.raw
    if "\n" in raw or "\r" in raw:  # never for the device's compact JSON, but stay valid SSE
        raw = "\ndata: ".join(raw.splitlines())
    return f"id: {event.seq}\ndata: {raw}\n\n"


async def _messages(
    hub: EventHub,
    after: int | None,
    retry_ms: int,
    keepalive_seconds: float,
    frame: Callable[[HubEvent], str] = _frame,
) -> AsyncIterator[bytes]:
    with hub.subscribe(last_event_id=after) as subscription:
        # The current position as id: a client that reconnects before seeing any event still
        # resumes from here, rather than missing what happened while it was away.
        position = after if after is not None else hub.last_seq
        yield (f"retry: {retry_ms}\n" + (f"id: {position}\n" if position else "") + "\n").encode()
        while True:
            events = await subscription.next_batch(timeout=keepalive_seconds)
            if events:
                yield "".join(map(frame, events)).encode()
            elif subscription.closed:
                return  # dropped as too slow, or shutting down: the client resumes by id
            else:
                yield KEEP_ALIVE


@router.get("/stream", response_class=EventStreamResponse, responses=error_responses())
async def stream_events(
    client: ClientDep,
    settings: SettingsDep,
    _: Viewer,
    last_event_id: Annotated[str | None, Header()] = None,
    resume_after: Annotated[str | None, Query(alias="last_event_id")] = None,
) -> EventStreamResponse:
    """Stream OET events (``text/event-stream``) until the client disconnects."""
    after = _parse_event_id(last_event_id if last_event_id is not None else resume_after)
    return EventStreamResponse(
        _messages(client.hub, after, settings.sse_retry_ms, settings.keepalive_seconds),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
