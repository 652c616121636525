"""``/stream``: the device's events as Server-Sent Events.

Each event is one SSE message: ``data:`` is the event JSON exactly as the device published it
(with ``topic``), ``id:`` its sequence number. The first message has no data: its ``retry:``
tells browsers how soon to reconnect, its ``id:`` is the current position in the stream (so a
client that reconnects before any event arrived resumes from there), and its arrival tells any
client that the subscription is in place (open the stream, wait for it, then act). A
``Last-Event-ID`` header (or ``?last_event_id=``) resumes after that event from the replay
buffer. Silence is broken by keep-alive comments. A client that falls too far behind is
disconnected rather than slowing anyone else; it resumes with ``Last-Event-ID``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from ..deps import ClientDep, SettingsDep

router = APIRouter(tags=["events"])


def _parse_event_id(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None  # an id we never issued: stream live events only


@router.get("/stream", response_class=EventSourceResponse)
async def stream_events(
    client: ClientDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header()] = None,
    resume_after: Annotated[str | None, Query(alias="last_event_id")] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Stream OET events (``text/event-stream``) until the client disconnects."""
    after = _parse_event_id(last_event_id if last_event_id is not None else resume_after)
    with client.hub.subscribe(last_event_id=after) as subscription:
        # The current position as id: a client that reconnects before seeing any event still
        # resumes from here, rather than missing what happened while it was away.
        position = after if after is not None else client.hub.last_seq
        yield ServerSentEvent(retry=settings.sse_retry_ms, id=str(position) if position else None)
        while True:
            event = await subscription.next(timeout=settings.keepalive_seconds)
            if event is not None:
                yield ServerSentEvent(raw_data=event.raw, id=str(event.seq))
            elif subscription.closed:
                return  # dropped as too slow, or shutting down: the client resumes by id
            else:
                yield ServerSentEvent(comment="keep-alive")
