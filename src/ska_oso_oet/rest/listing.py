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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .hub import HubEvent

#: The device writes ``seq`` then ``topic`` first: the topic is read without decoding.
_LIFECYCLE_AT_START = re.compile(r'\{"seq":\d+,"topic":"procedure\.lifecycle\.(\w+)"')
#: Topics after which the device's next ``procedures`` value shows the change.
_PENDING_TOPICS = frozenset({"statechange", "created"})


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
            match = _LIFECYCLE_AT_START.match(event.raw)
            if match is None:
                continue
            if match.group(1) in _PENDING_TOPICS:
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
