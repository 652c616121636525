"""Fan-out of the device's event stream to any number of SSE clients.

One Tango subscription feeds :class:`EventHub`; every HTTP client gets its own bounded queue
(:class:`HubSubscription`). All bookkeeping runs on the event loop thread, so publishing,
subscribing and replaying need no locks and a subscriber sees a contiguous run of events:
replay first, then live events, never a duplicate or a hole. Delivery to one client never waits
for another: a client whose queue is full is dropped (its stream ends) and can resume with
``Last-Event-ID`` from the bounded replay buffer.

Events from the Tango thread are handed over in batches (one loop wake-up for whatever arrived
meanwhile) and consumers take everything queued at once, so a burst costs a few wake-ups and
writes rather than one of each per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

LOGGER = logging.getLogger(__name__)


#: The device writes ``seq`` first (:meth:`ska_oso_oet.events.Event.to_dict`), so the hub reads
#: it from the text's start and decodes the rest only when somebody looks at it.
_SEQ_AT_START = re.compile(r'\{"seq":(\d+)[,}]')


class HubEvent:
    """One device event: its sequence number and its JSON text as received (``data``, the
    decoded object, is computed on first use)."""

    __slots__ = ("_data", "raw", "seq")

    def __init__(self, seq: int, raw: str, data: dict[str, Any] | None = None):
        self.seq = seq
        self.raw = raw
        self._data = data

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            try:
                decoded = json.loads(self.raw)
            except ValueError:
                decoded = None
            self._data = decoded if isinstance(decoded, dict) else {}
        return self._data

    @classmethod
    def parse(cls, raw: str) -> HubEvent | None:
        """The event in ``raw``, or None when it is not a JSON object with an integer seq."""
        match = _SEQ_AT_START.match(raw)
        if match:
            return cls(int(match.group(1)), raw)
        try:
            data = json.loads(raw)
            return cls(int(data["seq"]), raw, data) if isinstance(data, dict) else None
        except (ValueError, TypeError, KeyError):
            return None


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
        return self._items.popleft() if await self._wait(timeout) else None

    async def next_batch(self, timeout: float | None = None) -> list[HubEvent]:
        """Every queued event, waiting for one if none is; empty on timeout or once the
        subscription is closed and drained."""
        if not await self._wait(timeout):
            return []
        batch = list(self._items)
        self._items.clear()
        return batch

    async def _wait(self, timeout: float | None) -> bool:
        while not self._items:
            if self.closed:
                return False
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return False
        return True

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
        self._observers: list[Callable[[Sequence[HubEvent]], None]] = []
        #: values fed from other threads, not yet published (guarded by ``_inbox_lock``)
        self._inbox: list[str] = []
        self._inbox_lock = threading.Lock()
        self.last_seq = 0
        #: True once :meth:`close_all` ran (shutdown): new subscriptions start closed.
        self.closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the loop that owns the hub; ``feed_threadsafe`` posts to it."""
        self._loop = loop

    def feed_threadsafe(self, raw: str) -> None:
        """Hand over one event's JSON from a foreign thread (e.g. a Tango event callback).

        Only the first value of a batch wakes the loop; later ones join the waiting batch.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with self._inbox_lock:
            self._inbox.append(raw)
            if len(self._inbox) > 1:
                return  # a drain is already scheduled
        # RuntimeError: the loop closed between the check and the call (shutting down)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._drain_inbox)

    def _drain_inbox(self) -> None:
        with self._inbox_lock:
            batch, self._inbox = self._inbox, []
        self._publish(batch)

    def add_observer(self, observer: Callable[[Sequence[HubEvent]], None]) -> None:
        """Call ``observer`` (loop thread) with every batch of newly published events."""
        self._observers.append(observer)

    def publish_raw(self, raw: str) -> HubEvent | None:
        """Publish one event (loop thread); returns it, or None when it was ignored."""
        published = self._publish([raw])
        return published[0] if published else None

    def relay(self, events: Sequence[HubEvent]) -> None:
        """Publish other hubs' events (loop thread), renumbered in this hub's sequence: the
        merged stream of several devices. The ``seq`` at the text's start is rewritten so that
        ``data.seq`` and the SSE ``id:`` agree; the rest of the text is passed on untouched."""
        published = []
        for event in events:
            self.last_seq += 1
            match = _SEQ_AT_START.match(event.raw)
            if match:
                raw = f"{event.raw[: match.start(1)]}{self.last_seq}{event.raw[match.end(1) :]}"
                relayed = HubEvent(self.last_seq, raw)
            else:  # seq elsewhere (an older device): encoded again, with ours first
                data = {**event.data, "seq": self.last_seq}
                data = {"seq": data.pop("seq"), **data}
                relayed = HubEvent(self.last_seq, json.dumps(data, separators=(",", ":")), data)
            self._replay.append(relayed)
            for subscription in tuple(self._subscriptions):
                subscription._offer(relayed)
            published.append(relayed)
        if published:
            for observer in self._observers:
                observer(published)

    def _publish(self, values: list[str]) -> list[HubEvent]:
        """Publish events in order. Repeats and undecodable values are ignored: Tango re-sends
        the current value on every (re)subscription."""
        published = []
        for raw in values:
            event = HubEvent.parse(raw) if raw else None
            if event is None:
                LOGGER.warning("ignoring an event without JSON or seq: %.200s", raw)
                continue
            if event.seq <= self.last_seq:
                LOGGER.debug("ignoring event %s (already at %s)", event.seq, self.last_seq)
                continue
            self.last_seq = event.seq
            self._replay.append(event)
            for subscription in tuple(self._subscriptions):
                subscription._offer(event)
            published.append(event)
        if published:
            for observer in self._observers:
                observer(published)
        return published

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
