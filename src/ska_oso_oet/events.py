"""Event envelope, topic names and in-process publish/subscribe (DESIGN §7).

Every event is plain JSON on the wire: ``{"seq", "topic", "msg_src", "timestamp", ...payload}``.
The sequence number increases by one per event of a bus and starts from the bus's creation time
in microseconds, so numbers keep increasing across a restart of the process that owns the bus
(SSE ``Last-Event-ID`` relies on that).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

LOGGER = logging.getLogger(__name__)

# Topic names kept from the original OET.
PROCEDURE_CREATED = "procedure.lifecycle.created"
PROCEDURE_STATECHANGE = "procedure.lifecycle.statechange"
PROCEDURE_STACKTRACE = "procedure.lifecycle.stacktrace"
PROCEDURE_STARTED = "procedure.lifecycle.started"
PROCEDURE_STOPPED = "procedure.lifecycle.stopped"
PROCEDURE_FAILED = "procedure.lifecycle.failed"
PROCEDURE_COMPLETE = "procedure.lifecycle.complete"
PROCEDURE_PAUSED = "procedure.lifecycle.paused"
PROCEDURE_RESUMED = "procedure.lifecycle.resumed"
#: A script asks the operator a question (``ska_oso_oet.script.ask``) / the question ended.
REQUEST_OPENED = "procedure.request.opened"
REQUEST_CLOSED = "procedure.request.closed"
#: A script reported progress (``ska_oso_oet.script.progress``).
PROCEDURE_PROGRESS = "procedure.progress"
USER_SCRIPT_ANNOUNCE = "user.script.announce"
SCRIPT_LOG = "script.log"
SCRIPT_STDOUT = "script.stdout"
#: Progress of a git script's preparation (checkout, environment build), with step times.
SCRIPT_ENV = "script.env"
ACTIVITY_PREFIX = "activity.lifecycle."


def _render_unjsonable(obj: Any) -> Any:
    """Readable, non-reversible rendering of what JSON cannot hold (never decoded back)."""
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    import jsonpickle  # here: rarely needed, and its import costs every process ~50 ms

    return json.loads(jsonpickle.encode(obj, unpicklable=False, make_refs=False, keys=True))


#: Built once: ``json.dumps`` with any option builds a new encoder on every call.
_ENCODER = json.JSONEncoder(default=_render_unjsonable, separators=(",", ":"))


def dumps(data: Any) -> str:
    """The one JSON encoder shared by engine, device, gateway and CLI."""
    return _ENCODER.encode(data)


@dataclass(frozen=True)
class Event:
    topic: str
    msg_src: str
    timestamp: float
    seq: int
    payload: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        # seq first: the gateway reads it from the start of the text without decoding the rest
        data = {
            "seq": self.seq,
            "topic": self.topic,
            "msg_src": self.msg_src,
            "timestamp": self.timestamp,
        }
        data.update((k, v) for k, v in self.payload.items() if k not in data)
        return data

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        payload = {
            k: v for k, v in data.items() if k not in ("topic", "msg_src", "timestamp", "seq")
        }
        return cls(data["topic"], data.get("msg_src", ""), data["timestamp"], data["seq"], payload)


Subscriber = Callable[[Event], None]


class Subscription:
    """Handle returned by :meth:`EventBus.subscribe`; ``close()`` ends delivery."""

    def __init__(self, bus: EventBus, callback: Subscriber):
        self._bus = bus
        self.callback = callback

    def close(self) -> None:
        self._bus._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Publish/subscribe with a total order.

    Publishing assigns the sequence number and calls every subscriber under one lock, so all
    subscribers see all events in the same order. Subscribers must therefore be quick (append
    to a queue, push one Tango event) and must not wait for other threads. A subscriber may
    itself publish: that event is delivered to everybody right after the current one, keeping
    one order for all. A subscriber that raises is logged and kept.
    """

    def __init__(self, first_seq: int | None = None):
        self._lock = threading.RLock()
        self._subscribers: tuple[Subscription, ...] = ()
        self._next_seq = first_seq if first_seq is not None else time.time_ns() // 1000
        self._pending: collections.deque[tuple[str, str, Mapping[str, Any], float]] = (
            collections.deque()
        )
        self._delivering = False

    def subscribe(self, callback: Subscriber) -> Subscription:
        subscription = Subscription(self, callback)
        with self._lock:
            self._subscribers = (*self._subscribers, subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers = tuple(s for s in self._subscribers if s is not subscription)

    def publish(
        self,
        topic: str,
        msg_src: str,
        payload: Mapping[str, Any] | None = None,
        timestamp: float | None = None,
    ) -> None:
        with self._lock:
            self._pending.append((topic, msg_src, payload or {}, timestamp or time.time()))
            if self._delivering:
                return  # published by a subscriber: the loop below delivers it next
            self._delivering = True
            try:
                while self._pending:
                    topic, msg_src, payload, timestamp = self._pending.popleft()
                    event = Event(topic, msg_src, timestamp, self._next_seq, payload)
                    self._next_seq += 1
                    for subscription in self._subscribers:
                        try:
                            subscription.callback(event)
                        except Exception:  # one bad subscriber must not stop the others
                            LOGGER.exception("event subscriber %r failed", subscription.callback)
            finally:
                self._delivering = False
