"""Fan-out of the device's event stream to any number of SSE clients.

One Tango subscription feeds :class:`EventHub`; every HTTP client gets its own bounded queue
(:class:`HubSubscription`). All bookkeeping runs on the event loop thread, so publishing,
subscribing and replaying need no locks and a subscriber sees a contiguous run of events:
replay first, then live events, never a duplicate or a hole. Delivery to one client never waits
for another: a client whose queue is full is dropped (its stream ends) and can resume with
``Last-Event-ID`` from the bounded replay buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubEvent:
    """One device event: its sequence number, its decoded JSON and the JSON text as received."""

    seq: int
    data: dict[str, Any]
    raw: str


class HubSubscription:
    """One consumer's view of the hub: a bounded queue, closed when the consumer is too slow."""

    def __init__(self, hub: EventHub, max_size: int, accept: Callable[[HubEvent], bool] | None):
        self._hub = hub
        self._items: deque[HubEvent] = deque()
        self._max_size = max_size
        self._accept = accept
        self._wakeup = asyncio.Event()
        #: True once the hub dropped this subscriber for not keeping up.
        self.overflowed = False
        self.closed = False

    def _offer(self, event: HubEvent) -> None:
        if self.closed or (self._accept is not None and not self._accept(event)):
            return
        if len(self._items) >= self._max_size:
            LOGGER.warning("dropping a slow event-stream client at seq %d", event.seq)
            self.overflowed = True
            self._hub._remove(self)
        else:
            self._items.append(event)
        self._wakeup.set()

    async def next(self, timeout: float | None = None) -> HubEvent | None:
        """The next event; None on timeout or once the subscription is closed and drained."""
        while not self._items:
            if self.closed:
                return None
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return None
        return self._items.popleft()

    def close(self) -> None:
        self._hub._remove(self)

    def __enter__(self) -> HubSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    """Bounded replay buffer plus per-client queues, fed from any thread."""

    def __init__(self, replay_size: int = 2000, queue_size: int = 1000):
        self._replay: deque[HubEvent] = deque(maxlen=replay_size)
        self._queue_size = queue_size
        self._subscriptions: list[HubSubscription] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.last_seq = 0
        #: True once :meth:`close_all` ran (shutdown): new subscriptions start closed.
        self.closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the loop that owns the hub; ``feed_threadsafe`` posts to it."""
        self._loop = loop

    def feed_threadsafe(self, raw: str) -> None:
        """Hand over one event's JSON from a foreign thread (e.g. a Tango event callback)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # RuntimeError: the loop closed between the check and the call (shutting down)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self.publish_raw, raw)

    def publish_raw(self, raw: str) -> HubEvent | None:
        """Decode and publish one event (loop thread). Repeats and undecodable values are
        ignored: Tango re-sends the current value on every (re)subscription."""
        if not raw:
            return None
        try:
            data = json.loads(raw)
            seq = int(data["seq"])
        except (ValueError, TypeError, KeyError):
            LOGGER.warning("ignoring an event without JSON or seq: %.200s", raw)
            return None
        if not isinstance(data, dict) or seq <= self.last_seq:
            LOGGER.debug("ignoring event %s (already at %s)", seq, self.last_seq)
            return None
        event = HubEvent(seq, data, raw)
        self.last_seq = seq
        self._replay.append(event)
        for subscription in tuple(self._subscriptions):
            subscription._offer(event)
        return event

    def subscribe(
        self,
        last_event_id: int | None = None,
        accept: Callable[[HubEvent], bool] | None = None,
        queue_size: int | None = None,
    ) -> HubSubscription:
        """A new subscription (loop thread). With ``last_event_id``, the buffered events after it
        are queued first; without, only events published from now on are delivered."""
        subscription = HubSubscription(self, queue_size or self._queue_size, accept)
        subscription.closed = self.closed
        if last_event_id is not None:
            for event in self._replay:
                if event.seq > last_event_id:
                    subscription._offer(event)
        if not subscription.closed:
            self._subscriptions.append(subscription)
        return subscription

    @property
    def oldest_seq(self) -> int | None:
        """Sequence number of the oldest buffered event (None when the buffer is empty)."""
        return self._replay[0].seq if self._replay else None

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def _remove(self, subscription: HubSubscription) -> None:
        subscription.closed = True
        subscription._wakeup.set()
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def close_all(self) -> None:
        """End every subscription (shutdown): their streams finish after draining."""
        self.closed = True
        for subscription in tuple(self._subscriptions):
            self._remove(subscription)
