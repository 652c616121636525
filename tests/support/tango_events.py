"""Event tracing for Tango tests: subscribe, then wait for an event matching a predicate.

    with EventTracer(proxy, "lastEvent") as tracer:
        proxy.Prepare(body)
        event = tracer.wait_for(lambda value: json.loads(value)["topic"] == "...", timeout=20)

Values are collected by a Tango callback thread into a list guarded by a condition variable;
``wait_for`` blocks on that condition (no sleeps) and reports what it saw when it times out.

Subscriptions are shared and kept: every (proxy, attribute) is subscribed once through a
:class:`SubscriptionHub` and tracers only add and remove listeners. Two Tango client effects
make this necessary on a loaded machine: unsubscribing and at once subscribing again to the
same event loses the first events of the new subscription now and then (cppTango removes the
old ZMQ filter late; measured: 7 commands in 200 under CPU load), and a new subscription's
ZMQ filter reaches the server asynchronously, so events pushed right after subscribing can be
missed. A hub therefore subscribes up front and proves the channel live (:meth:`warm_up`)
before tests act. Call :func:`close_hubs` when a module's server goes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import tango

DEFAULT_TIMEOUT = 30.0
#: Attributes a hub subscribes to when it is created, before its warm-up. A subscription made
#: later can miss the events pushed right after it (its ZMQ filter reaches the server
#: asynchronously); made before the warm-up, the warm-up's round trip proves it is live.
SUBSCRIBED_UP_FRONT = (
    "lastEvent",
    "_lrcEvent",
    "longRunningCommandStatus",
    "longRunningCommandProgress",
    "longRunningCommandResult",
    "State",
    "Status",
    "adminMode",
    "healthState",
    "procedures",
    "procedureIds",
    "procedureStates",
    "runningProcedureId",
    "scriptMessage",
    "lrcFinished",
)
Listener = Callable[[tango.EventData], None]


def attribute_of(event: tango.EventData) -> str:
    """Lower-case attribute name of an event (its name may carry a TRL and ``#dbase=no``)."""
    return event.attr_name.split("#", 1)[0].rsplit("/", 1)[-1].lower()


class SubscriptionHub:
    """One change-event subscription per attribute of one proxy, fanned out to listeners."""

    def __init__(self, proxy: tango.DeviceProxy):
        self.proxy = proxy
        self._lock = threading.RLock()  # the first event arrives inside subscribe_event
        self._listeners: dict[str, list[Listener]] = {}
        self._ids: list[int] = []

    def add(self, attribute: str, listener: Listener) -> None:
        key = attribute.lower()
        with self._lock:
            first = key not in self._listeners
            self._listeners.setdefault(key, []).append(listener)
            if first:
                self._ids.append(
                    self.proxy.subscribe_event(
                        attribute, tango.EventType.CHANGE_EVENT, self._dispatch
                    )
                )

    def subscribe_all(self, attributes: Iterable[str]) -> None:
        """Subscribe now, without listeners, so that later listeners join live subscriptions."""
        for attribute in attributes:
            with self._lock:
                if attribute.lower() in self._listeners:
                    continue
                self._listeners[attribute.lower()] = []
                self._ids.append(
                    self.proxy.subscribe_event(
                        attribute, tango.EventType.CHANGE_EVENT, self._dispatch
                    )
                )

    def remove(self, attribute: str, listener: Listener) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.get(attribute.lower(), []).remove(listener)

    def _dispatch(self, event: tango.EventData) -> None:
        # No lock here: a subscribe_event holding it (in add) waits for Tango's subscription
        # monitor, which the thread delivering another attribute's event holds while it runs
        # this callback. Copying the list is atomic enough for listeners added and removed.
        listeners = list(self._listeners.get(attribute_of(event)) or ())
        for listener in listeners:
            listener(event)

    def warm_up(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until events from the device reach this process.

        Tango connects a client's event socket asynchronously, so events pushed right after the
        first subscription to a server can be missed. Subscribe to ``loggingLevel``, then write
        its current value (the device pushes it) until the pushed event arrives.
        """
        arrived = threading.Event()

        def listener(event: tango.EventData) -> None:
            if not event.err:
                arrived.set()

        self.add("loggingLevel", listener)
        try:
            deadline = time.monotonic() + timeout
            arrived.clear()  # the first event is read synchronously by subscribe_event
            while True:
                self.proxy.loggingLevel = self.proxy.loggingLevel
                if arrived.wait(0.5):
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"events of {self.proxy.dev_name()} never arrived")
        finally:
            self.remove("loggingLevel", listener)

    def close(self) -> None:
        with self._lock:
            ids, self._ids = self._ids, []
            self._listeners.clear()
        for event_id in ids:
            with contextlib.suppress(tango.DevFailed):
                self.proxy.unsubscribe_event(event_id)


_hubs: dict[int, SubscriptionHub] = {}
_hubs_lock = threading.Lock()


def hub_for(proxy: tango.DeviceProxy) -> SubscriptionHub:
    """The hub of ``proxy`` (it keeps the proxy alive, and so its subscriptions)."""
    with _hubs_lock:
        hub = _hubs.get(id(proxy))
        if hub is not None and hub.proxy is proxy:
            return hub
        hub = _hubs[id(proxy)] = SubscriptionHub(proxy)
    hub.subscribe_all(SUBSCRIBED_UP_FRONT)
    hub.warm_up()
    return hub


def close_hubs(proxies: Iterable[tango.DeviceProxy] | None = None) -> None:
    """Unsubscribe (all, or those of ``proxies``) before their server stops: a dead event
    channel left behind would delay a later subscription to the restarted device until
    Tango's keep-alive thread reconnects it (about 10 s)."""
    with _hubs_lock:
        keys = list(_hubs) if proxies is None else [id(p) for p in proxies if id(p) in _hubs]
        hubs = [_hubs.pop(key) for key in keys]
    for hub in hubs:
        hub.close()


class EventTracer:
    """Collects the change events of one or more attributes of a device."""

    def __init__(
        self,
        proxy: tango.DeviceProxy,
        attributes: str | Iterable[str],
    ):
        self.proxy = proxy
        self.attributes = [attributes] if isinstance(attributes, str) else list(attributes)
        #: (attribute name lower-case, value) in arrival order; errors are kept apart
        self.events: list[tuple[str, Any]] = []
        self.errors: list[tuple[str, str]] = []
        #: arrival time (time.perf_counter) of each entry of ``events``
        self.arrivals: list[float] = []
        self._changed = threading.Condition()

    def __enter__(self) -> EventTracer:
        hub = hub_for(self.proxy)
        for name in self.attributes:
            hub.add(name, self._on_event)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        hub = hub_for(self.proxy)
        for name in self.attributes:
            hub.remove(name, self._on_event)

    def _on_event(self, event: tango.EventData) -> None:
        name = attribute_of(event)
        with self._changed:
            if event.err:
                self.errors.append((name, event.errors[0].reason))
            else:
                self.events.append((name, event.attr_value.value))
                self.arrivals.append(time.perf_counter())
            self._changed.notify_all()

    def values(self, attribute: str | None = None) -> list[Any]:
        with self._changed:
            return [v for n, v in self.events if attribute is None or n == attribute.lower()]

    def wait_for(
        self,
        predicate: Callable[[Any], bool],
        attribute: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        start: int = 0,
    ) -> Any:
        """The first value (of ``attribute``, from the ``start``-th event on) matching
        ``predicate``; raises AssertionError after ``timeout`` seconds."""
        found: list[Any] = []
        position = [start]  # events before this index were already checked

        def match() -> bool:
            while position[0] < len(self.events):
                name, value = self.events[position[0]]
                position[0] += 1
                if attribute is not None and name != attribute.lower():
                    continue
                try:
                    if predicate(value):
                        found.append(value)
                        return True
                except (ValueError, KeyError, TypeError, IndexError):
                    continue
            return False

        with self._changed:
            if not self._changed.wait_for(match, timeout):
                seen = [v for n, v in self.events if attribute is None or n == attribute.lower()]
                raise AssertionError(
                    f"no matching event on {attribute or self.attributes} within {timeout} s; "
                    f"last values: {seen[-5:]!r}; errors: {self.errors[-3:]}"
                )
            return found[0]

    def wait_count(self, count: int, attribute: str, timeout: float = DEFAULT_TIMEOUT) -> list[Any]:
        """Wait until at least ``count`` events of ``attribute`` arrived; return them all."""
        with self._changed:
            ok = self._changed.wait_for(
                lambda: len(self.values_unlocked(attribute)) >= count, timeout
            )
            values = self.values_unlocked(attribute)
        if not ok:
            raise AssertionError(f"{len(values)} of {count} {attribute} events within {timeout} s")
        return values

    def timed(self, attribute: str) -> list[tuple[float, Any]]:
        """(arrival time, value) of each event of ``attribute``."""
        with self._changed:
            return [
                (t, v)
                for (n, v), t in zip(self.events, self.arrivals, strict=True)
                if n == attribute.lower()
            ]

    def values_unlocked(self, attribute: str) -> list[Any]:
        return [v for n, v in self.events if n == attribute.lower()]
