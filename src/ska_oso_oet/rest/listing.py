"""The gateway's copy of one device's ``procedures`` list, kept current by events.

``GET /procedures`` is the hottest call of the gateway and its answer changes only when a
procedure does. :class:`ProcedureListing` holds the list as the device's ``procedures``
change events last gave it, so that a GET costs no Tango read, and says when that copy must
not be trusted:

* the device pushes ``lastEvent`` first and its ``procedures`` change right after it, on the
  same event channel, so the two reach the gateway in that order. A ``statechange`` or
  ``created`` event therefore makes the copy *pending* until the next ``procedures`` value
  arrives: a client that saw a state change on ``/stream`` and then asks for the list gets
  the list that shows it (the GET waits for that value, briefly; after ``pending_wait`` it
  reads the device as before);
* a procedure created through the gateway is *expected*: the copy is pending until a value
  lists it;
* other lifecycle events (``stacktrace``, ``complete``...) and every write made through the
  gateway make it *stale*: the next GET reads the device once and keeps what it read,
  unless something newer arrived meanwhile;
* an error event (device down, event channel lost) or a failed call to the device drops the
  copy until a value arrives again (Tango re-sends the current value when it re-subscribes),
  and a copy older than ``max_age`` seconds is read again anyway: a device server that dies
  without a word is noticed within ``max_age`` (Tango's own heartbeat takes ~10 s), at the
  cost of one read per ``max_age`` while the list is polled.

Everything runs on the event loop thread; ``version`` changes whenever the content does, so
callers can key encoded answers on it. The summaries served are shared: never modify them.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..vocabulary import FINAL_STATES
from .hub import HubEvent

#: The device writes ``seq`` then ``topic`` first: the topic is read without decoding.
_TOPIC_AT_START = re.compile(r'\{"seq":\d+,"topic":"([^"\\]*)"')
_LIFECYCLE = "procedure.lifecycle."
#: Topics after which the device's next ``procedures`` value shows the change.
_PENDING_TOPICS = frozenset({f"{_LIFECYCLE}statechange", f"{_LIFECYCLE}created"})


def _topic(event: HubEvent) -> Any:
    """The event's topic, read from the start of its text (decoded only in another layout)."""
    match = _TOPIC_AT_START.match(event.raw)
    return match.group(1) if match else event.data.get("topic")


@dataclass(frozen=True)
class Snapshot:
    """Summaries as of ``version`` (None: read from the device, not to be cached)."""

    version: Any
    summaries: list[dict[str, Any]]


class ProcedureListing:
    """One device's procedure list as its change events give it (loop thread only)."""

    def __init__(
        self,
        *,
        max_age: float = 2.0,
        pending_wait: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_age = max_age
        self.pending_wait = pending_wait
        self._clock = clock
        self.version = 0
        self._text: str | None = None
        self._decoded: list[dict[str, Any]] | None = None
        self._since = 0.0
        self.pending = False
        self._stale = False
        #: ids created through the gateway that no value has listed yet
        self._expected: set[int] = set()
        self._arrived: asyncio.Event | None = None

    # -- what arrives --------------------------------------------------------------------------
    def on_value(self, text: str) -> None:
        """A ``procedures`` change event (the device's list, now)."""
        try:
            self._set(text)
        except ValueError:  # not a list: as good as no value
            self.on_error()
        if self._expected and self._decoded is not None:
            self._expected -= {s.get("id") for s in self._decoded if isinstance(s, dict)}
        self.pending = bool(self._expected)
        self._stale = False
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None

    def on_error(self) -> None:
        """An error event: the channel (or the device) is gone; trust nothing until a value."""
        self.version += 1
        self._text = self._decoded = None

    def on_events(self, events: Sequence[HubEvent]) -> None:
        """The device's ``lastEvent`` values (a hub observer)."""
        for event in events:
            topic = _topic(event)
            if not isinstance(topic, str) or not topic.startswith(_LIFECYCLE):
                continue
            if topic in _PENDING_TOPICS:
                self.pending = True
            else:
                self._stale = True

    def expect(self, procedure_id: int) -> None:
        """A procedure was created through the gateway: the copy waits until it is listed."""
        if self._decoded is None or all(s.get("id") != procedure_id for s in self._decoded):
            self._expected.add(procedure_id)
            self.pending = True

    def invalidate(self) -> None:
        """Something was changed through the gateway: read the device once more."""
        self._stale = True

    # -- what is served ------------------------------------------------------------------------
    def current(self) -> Snapshot | None:
        """The list when the copy can be trusted, else None."""
        if self._text is None or self.pending or self._stale:
            return None
        if self._decoded is None or self._clock() - self._since > self.max_age:
            return None
        return Snapshot(self.version, self._decoded)

    async def settle(self) -> None:
        """Wait (at most ``pending_wait``) for the value that follows a pending event."""
        if not self.pending:
            return
        if self._arrived is None:
            self._arrived = asyncio.Event()
        try:
            await asyncio.wait_for(self._arrived.wait(), self.pending_wait)
        except TimeoutError:  # then the device is read, as before
            self._expected.clear()
            self.pending = False
            self._stale = True

    def adopt(self, version_before: int, text: str) -> Snapshot:
        """What a read of the attribute (started at ``version_before``) gave: kept when
        nothing arrived meanwhile and no change is pending, served either way (ValueError
        when it is not a JSON list)."""
        if version_before == self.version and not self.pending:
            self._set(text)
            self._stale = False
            return Snapshot(self.version, self._decoded or [])
        return Snapshot(None, _decode(text))

    def _set(self, text: str) -> None:
        self._since = self._clock()
        if text != self._text or self._decoded is None:
            self._decoded = _decode(text)
            self._text = text
            self.version += 1


def _decode(text: str) -> list[dict[str, Any]]:
    decoded = json.loads(text or "[]")
    if not isinstance(decoded, list):
        raise ValueError("the device's procedures are not a JSON list")
    return decoded


#: Topics after which a procedure's summary may differ (its state, ``progress``, ``request``,
#: stack trace, ``details`` of its checkout...); announcements, logs and output never change it.
_CHANGING_TOPICS = ("procedure.", "script.env")


@dataclass(frozen=True, eq=False)
class Kept:
    """One procedure's summary as the device gave it. ``bodies`` holds the answers encoded
    from it (by encoding and base URL) while it is the gateway's copy; None when it was read
    for one request only (a change arrived meanwhile): then nothing is to be kept."""

    summary: dict[str, Any]
    bodies: dict[Any, bytes] | None


@dataclass(eq=False)
class _Read:
    """A ``GetProcedure`` on its way; spoiled when a change of the procedure arrives meanwhile
    (its answer may predate the change: it is served to whoever asked before, never kept)."""

    task: asyncio.Future[dict[str, Any]]
    spoiled: bool = False


class ProcedureCopies:
    """The summaries of one device's procedures (``GetProcedure``) as last read, kept until
    the device says they changed (loop thread only).

    ``GET /procedures/{id}`` is polled as the list is, and a summary changes only with an event
    of its procedure: a state change, a ``procedure.progress`` report, a question opened or
    closed (``procedure.request.*``), a stack trace or a checkout (``script.env``). The device
    publishes each right after the change (``lastEvent``, which the gateway's hub receives),
    so a summary is read once per change rather than once per request:

    * an event of a changing topic drops the procedure's copy (and spoils a read of it in
      flight): the next GET reads the device; a client that saw the event on ``/stream`` asks
      after the hub handed it to this observer, so it never gets the summary from before it;
    * a gap in the device's event numbers (events lost), an error event, a failed call, any
      command sent through the gateway (a command may change what no event reports at once,
      e.g. the audit trail of a Stop) and a procedure's end (the device may drop its oldest
      finished procedures then, which no event names) drop every copy;
    * a copy older than ``max_age`` seconds is read again, so that a change made by another
      client that has no event of its own (the audit trail) shows within ``max_age`` and a
      dead device is a 503 within ``max_age`` of the last read;
    * concurrent GETs of one procedure share one read; unknown ids (404) and errors are not
      kept.

    The summaries served are shared: never modify them.
    """

    def __init__(
        self,
        *,
        max_age: float = 2.0,
        max_kept: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_age = max_age
        self.max_kept = max_kept
        self._clock = clock
        #: id -> (monotonic time of the read, the copy), oldest read first
        self._kept: OrderedDict[int, tuple[float, Kept]] = OrderedDict()
        self._reads: dict[int, _Read] = {}
        self._last_seq: int | None = None

    def __len__(self) -> int:
        return len(self._kept)

    # -- what arrives --------------------------------------------------------------------------
    def on_events(self, events: Sequence[HubEvent]) -> None:
        """The device's ``lastEvent`` values (a hub observer: before any SSE client sees them)."""
        for event in events:
            if self._last_seq is not None and event.seq != self._last_seq + 1:
                self.drop_all()  # events were lost (or the device restarted): trust nothing
            self._last_seq = event.seq
            topic = _topic(event)
            if not isinstance(topic, str) or not topic.startswith(_CHANGING_TOPICS):
                continue
            data = event.data
            procedure_id, new_state = data.get("procedure_id"), data.get("new_state")
            if isinstance(new_state, str) and new_state in FINAL_STATES:
                # the device may have dropped its oldest finished procedures from its history
                # (GetProcedure: 404 from now on), and no event names them
                self.drop_all()
            elif isinstance(procedure_id, int) and not isinstance(procedure_id, bool):
                self.drop(procedure_id)
            else:  # a procedure event that does not say which: any may have changed
                self.drop_all()

    def drop(self, procedure_id: int) -> None:
        """``procedure_id`` changed: read it again (a read in flight is not kept)."""
        self._kept.pop(procedure_id, None)
        read = self._reads.pop(procedure_id, None)
        if read is not None:
            read.spoiled = True

    def drop_all(self) -> None:
        """Anything may have changed (a command, an error, lost events): read every one again."""
        self._kept.clear()
        for read in self._reads.values():
            read.spoiled = True
        self._reads.clear()

    # -- what is served ------------------------------------------------------------------------
    def current(self, procedure_id: int) -> Kept | None:
        """The copy of ``procedure_id`` when it can be served as it is, else None."""
        found = self._kept.get(procedure_id)
        if found is None or self._clock() - found[0] > self.max_age:
            return None
        return found[1]

    async def get(self, procedure_id: int, read: Callable[[], Awaitable[dict[str, Any]]]) -> Kept:
        """The copy of ``procedure_id``, or what ``read()`` (the device's ``GetProcedure``)
        gives, shared by every caller that asks while it runs; its errors are the callers'."""
        kept = self.current(procedure_id)
        if kept is not None:
            return kept
        pending = self._reads.get(procedure_id)
        if pending is None:
            pending = _Read(asyncio.ensure_future(read()))
            self._reads[procedure_id] = pending
            pending.task.add_done_callback(partial(self._read_done, procedure_id, pending))
        # shielded: a caller that goes away (client disconnected) does not cancel the others'
        summary = await asyncio.shield(pending.task)
        kept = self.current(procedure_id)  # kept by _read_done, unless spoiled meanwhile
        return kept if kept is not None and kept.summary is summary else Kept(summary, None)

    def _read_done(self, procedure_id: int, read: _Read, task: asyncio.Future[Any]) -> None:
        if self._reads.get(procedure_id) is read:
            del self._reads[procedure_id]
        if read.spoiled or task.cancelled() or task.exception() is not None:
            return
        summary = task.result()
        if not isinstance(summary, dict):
            return
        self._kept.pop(procedure_id, None)
        self._kept[procedure_id] = (self._clock(), Kept(summary, {}))
        while len(self._kept) > self.max_kept:
            self._kept.popitem(last=False)
