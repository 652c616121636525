"""The gateway's view of one OETDevice.

:class:`DeviceClient` is what the routes use (and what tests replace with a fake).
:class:`TangoDeviceClient` implements it over ``tango.DeviceProxy``:

* blocking Tango calls run on a small thread pool of their own, so a slow device never stalls
  the event loop or Starlette's thread pool;
* the proxy is created in the app's lifespan, in the background: the gateway starts (and answers
  503) even while the device or the Tango database is down, and connects when they come up;
* ONE ``lastEvent`` change-event subscription feeds the :class:`~.hub.EventHub`. It is
  stateless, so Tango re-subscribes by itself after a device server restart; the hub drops the
  repeated current value Tango sends on each (re)subscription by its sequence number;
* the ``procedures`` change events keep a :class:`~.listing.ProcedureListing`, so that listing
  procedures costs no Tango read; the ``lastEvent`` values keep the summaries last read with
  ``GetProcedure`` (:class:`~.listing.ProcedureCopies`), read again only when their procedure
  changed; the ``longRunningCommandResult`` events end the waits for commands whose answer is
  their LRC result (``Switch``), without polling.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from ..vocabulary import ACCEPTED_RESULT_CODES, REFUSED_RESULT_CODES, ResultCode, label_of
from . import errors
from .errors import GatewayError
from .hub import EventHub, HubEvent
from .listing import Kept, ProcedureCopies, ProcedureListing, Snapshot

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

#: Devices are connected one at a time (see ``TangoDeviceClient._connect``).
_CONNECT_LOCK = threading.Lock()
#: Longest wait for the first event after subscribing (see ``_confirm_event_channel``).
EVENT_CHANNEL_TIMEOUT = 15.0


#: How long after it starts trying a client retries every 0.1 s to reach its device.
_EAGER_CONNECT_SECONDS = 20.0
#: LRC results kept for waits that begin after their result arrived.
_LRC_RESULTS_KEPT = 256
#: How often a wait for an LRC result asks the device, in case its event was lost.
_LRC_CHECK_SECONDS = 2.0


class DeviceClient(abc.ABC):
    """Asynchronous access to one OETDevice; every failure is a :class:`GatewayError`."""

    def __init__(self, hub: EventHub):
        self.hub = hub

    async def start(self) -> None:
        """Called once from the app's lifespan, on the event loop."""
        self.hub.bind(asyncio.get_running_loop())

    async def close(self) -> None:
        """Called once when the app shuts down."""
        self.hub.close_all()

    @property
    def connected(self) -> bool:
        """True once requests can reach the device (``/health`` reports it)."""
        return True

    @property
    def subarray_id(self) -> int | None:
        """The subarray the device serves (its ``subarrayId``), None until known."""
        return None

    @abc.abstractmethod
    async def prepare(
        self, request: dict[str, Any], requested_by: str | None = None
    ) -> dict[str, Any]:
        """Create a procedure; returns its summary at once (state CREATING or later).

        ``requested_by`` (here and below) is the user the device records in the audit trail.
        """

    @abc.abstractmethod
    async def start_procedure(
        self,
        procedure_id: int,
        script_args: dict[str, Any] | None,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        """Start a READY procedure; returns its summary (RUNNING or later)."""

    @abc.abstractmethod
    async def stop_procedure(
        self, procedure_id: int, run_abort: bool, requested_by: str | None = None
    ) -> None:
        """Ask the device to stop a running procedure (STOPPED follows as events)."""

    async def switch(
        self,
        procedure_id: int,
        run_abort: bool,
        force: bool,
        script_args: dict[str, Any] | None = None,
        requested_by: str | None = None,
        timeout: float = 90.0,
    ) -> dict[str, Any]:
        """TOO switch: stop what runs on the procedure's device, then start it (READY).

        Returns once it runs (at most ``timeout`` s): ``{"stopped": [summaries], "started":
        summary}``, the device's ``Switch`` result."""
        raise GatewayError(errors.NOT_IMPLEMENTED, "this device client offers no switch")

    async def procedures_snapshot(self) -> Snapshot:
        """:meth:`list_procedures` with a version to key cached answers on (None: do not)."""
        return Snapshot(None, await self.list_procedures())

    def cached_procedures(self) -> Snapshot | None:
        """The list when it is at hand without waiting (a current copy), else None."""
        return None

    async def procedure_copy(self, procedure_id: int) -> Kept:
        """:meth:`get_procedure` with a place to keep its encoded answers (``bodies``: None
        when they are not to be kept)."""
        return Kept(await self.get_procedure(procedure_id), None)

    def cached_procedure(self, procedure_id: int) -> Kept | None:
        """One procedure when it is at hand without waiting (a current copy), else None."""
        return None

    @abc.abstractmethod
    async def pause_procedure(
        self, procedure_id: int, immediate: bool, requested_by: str | None = None
    ) -> None:
        """Ask the device to pause a running procedure (PAUSED follows at its next checkpoint;
        at once with ``immediate``)."""

    @abc.abstractmethod
    async def resume_procedure(self, procedure_id: int, requested_by: str | None = None) -> None:
        """Ask the device to resume a PAUSED procedure (RUNNING follows as an event)."""

    @abc.abstractmethod
    async def answer_request(
        self, procedure_id: int, request_id: str, value: Any, requested_by: str | None = None
    ) -> dict[str, Any]:
        """Answer the question a script asks; returns the closed request as recorded."""

    @abc.abstractmethod
    async def get_procedure(self, procedure_id: int) -> dict[str, Any]:
        """One summary; ``OET_NOT_FOUND`` when the id is unknown."""

    @abc.abstractmethod
    async def list_procedures(self) -> list[dict[str, Any]]:
        """Summaries in the device's history window, oldest first."""

    @abc.abstractmethod
    async def run_activity(
        self, request: dict[str, Any], requested_by: str | None = None
    ) -> dict[str, Any]:
        """Run an activity of a stored SBD; returns its summary at once (REQUESTED)."""

    @abc.abstractmethod
    async def get_activity(self, activity_id: int) -> dict[str, Any]:
        """One activity summary; ``OET_NOT_FOUND`` when the id is unknown."""

    @abc.abstractmethod
    async def list_activities(self) -> list[dict[str, Any]]:
        """Activity summaries in the device's history window, oldest first."""

    @abc.abstractmethod
    async def add_sbd(self, sbd: dict[str, Any]) -> dict[str, Any]:
        """Store (or replace) a scheduling block definition; returns it as stored."""

    @abc.abstractmethod
    async def get_sbd(self, sbd_id: str) -> dict[str, Any]:
        """One stored SBD; ``OET_NOT_FOUND`` when unknown."""

    async def wait_for_state(
        self, procedure_id: int, states: Collection[str], timeout: float
    ) -> dict[str, Any]:
        """The procedure's summary once its state is in ``states`` or after ``timeout``.

        Driven by the event stream; the device is re-read when an event says the procedure
        changed, and every few seconds in case events are interrupted (device restart).
        """

        def concerns_procedure(event: HubEvent) -> bool:
            return event.data.get("procedure_id") == procedure_id and str(
                event.data.get("topic", "")
            ).startswith("procedure.lifecycle.")

        deadline = time.monotonic() + timeout
        subscription = self.hub.subscribe(accept=concerns_procedure)
        try:
            summary = await self.get_procedure(procedure_id)
            while summary["state"] not in states and not self.hub.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if subscription.closed:  # overflowed (a chatty script): events are only hints
                    subscription = self.hub.subscribe(accept=concerns_procedure)
                else:
                    event = await subscription.next(timeout=min(remaining, 2.0))
                    new_state = event.data.get("new_state") if event is not None else None
                    if new_state is not None and new_state not in states:
                        continue  # an intermediate state: no need to ask the device
                summary = await self.get_procedure(procedure_id)
        finally:
            subscription.close()
        return summary


def _loads(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise GatewayError(
            errors.DEVICE_ERROR, f"the device sent malformed JSON for {what}"
        ) from exc


class TangoDeviceClient(DeviceClient):
    """:class:`DeviceClient` over a real ``tango.DeviceProxy``."""

    def __init__(
        self,
        device: str,
        hub: EventHub,
        *,
        timeout_ms: int = 3000,
        threads: int = 8,
        reconnect_seconds: float = 2.0,
    ):
        super().__init__(hub)
        self.device = device
        self._timeout_ms = timeout_ms
        self._reconnect_seconds = reconnect_seconds
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="tango-call")
        self._proxy: Any = None
        self._event_id: int | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._connect_error = "not connected yet"
        self._subarray_id: int | None = None
        self._event_ids: list[int] = []
        #: why the lastEvent subscription of the connect under way failed (Tango thread)
        self._subscription_error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.listing = ProcedureListing()
        hub.add_observer(self.listing.on_events)
        self.copies = ProcedureCopies()
        hub.add_observer(self.copies.on_events)
        #: command id -> (ResultCode, message) of recent LRC results (loop thread)
        self._lrc_results: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self._lrc_waiters: dict[str, asyncio.Future[tuple[int, str]]] = {}

    async def start(self) -> None:
        await super().start()
        self._loop = asyncio.get_running_loop()
        self._connect_task = asyncio.create_task(self._connect_loop(), name="tango-connect")

    async def close(self) -> None:
        if self._connect_task is not None:
            self._connect_task.cancel()
        proxy, event_ids = self._proxy, list(self._event_ids)
        if proxy is not None and event_ids:
            loop = asyncio.get_running_loop()

            def unsubscribe() -> None:
                for event_id in event_ids:
                    with contextlib.suppress(Exception):
                        proxy.unsubscribe_event(event_id)

            try:
                await asyncio.wait_for(loop.run_in_executor(self._executor, unsubscribe), 5)
            except Exception:
                LOGGER.debug("unsubscribe at shutdown failed", exc_info=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
        await super().close()

    @property
    def connected(self) -> bool:
        return self._proxy is not None

    @property
    def subarray_id(self) -> int | None:
        return self._subarray_id

    async def _connect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_warning = -math.inf
        # Retry every 0.1 s for a while first (oet-stack starts the gateway while the device
        # server is still coming up: a doubling pause would overshoot its readiness by up to
        # half the wait), then every reconnect_seconds.
        eager_until = time.monotonic() + _EAGER_CONNECT_SECONDS
        while self._proxy is None:
            try:
                await loop.run_in_executor(self._executor, self._connect)
                LOGGER.info("connected to %s", self.device)
            except Exception as exc:  # keep trying; requests answer 503 meanwhile
                self._connect_error = str(error_from_any(exc))
                quiet = time.monotonic() - last_warning < 30
                LOGGER.log(
                    logging.DEBUG if quiet else logging.WARNING,
                    "cannot connect to %s yet (retrying): %s",
                    self.device,
                    self._connect_error,
                )
                last_warning = last_warning if quiet else time.monotonic()
                eager = time.monotonic() < eager_until
                await asyncio.sleep(
                    min(0.1, self._reconnect_seconds) if eager else self._reconnect_seconds
                )

    def _connect(self) -> None:
        with _CONNECT_LOCK:  # concurrent first subscriptions to one server lose its events
            self._connect_unlocked()

    def _connect_unlocked(self) -> None:
        import tango  # the only module of the gateway that needs tango

        proxy = tango.DeviceProxy(self.device)
        proxy.set_timeout_millis(self._timeout_ms)
        # Subscribe once the device answers: a subscription made while it is down only starts
        # delivering at Tango's next keep-alive round (~10 s), retrying here is quicker.
        proxy.ping()
        with contextlib.suppress(Exception):  # an older device without it: named by its name
            self._subarray_id = int(proxy.read_attribute("subarrayId").value) or None
        # Stateless: Tango re-subscribes by itself after a device server restart.
        self._subscription_error = None
        self._event_id = proxy.subscribe_event(
            "lastEvent", tango.EventType.CHANGE_EVENT, self._on_event, stateless=True
        )
        self._event_ids = [self._event_id]
        if self._subscription_error is not None:
            # A stateless subscription that failed (the server's admin device not exported
            # yet, say) is only retried by Tango's keep-alive thread, ~10 s later: every event
            # until then would be lost, though the device answers. Try again in a moment.
            with contextlib.suppress(Exception):
                proxy.unsubscribe_event(self._event_id)
            self._event_ids = []
            raise RuntimeError(f"lastEvent subscription failed: {self._subscription_error}")
        for attribute, callback in (
            ("procedures", self._on_procedures),
            ("longRunningCommandResult", self._on_lrc_result),
        ):
            try:
                self._event_ids.append(
                    proxy.subscribe_event(
                        attribute, tango.EventType.CHANGE_EVENT, callback, stateless=True
                    )
                )
            except Exception:  # an older device: lists are read, LRC results asked for
                LOGGER.warning("no %s events from %s", attribute, self.device, exc_info=True)
        self._confirm_event_channel(proxy, tango)
        self._proxy = proxy

    def _confirm_event_channel(self, proxy: Any, tango: Any) -> None:
        """Return once events from the device reach this process (or after a timeout).

        Tango connects the client's event socket asynchronously: events pushed in the first
        moments after subscribing can be lost, and a client acting at once (``oet-stack``
        followed by ``oet start``) would miss its run. The device echoes a token given to
        ``ProbeEvents`` as a change event of ``eventProbe`` (and changes nothing else), so
        probing until the token comes back proves the channel (lastEvent's subscription went
        first on the same connection). Nothing on the device is written.
        """
        arrived = threading.Event()
        token = f"gateway-{os.getpid()}-{id(self)}-{time.monotonic_ns()}"

        def on_probe(event: Any) -> None:
            if not event.err and getattr(event.attr_value, "value", None) == token:
                arrived.set()

        deadline = time.monotonic() + EVENT_CHANNEL_TIMEOUT
        try:
            probe_id = proxy.subscribe_event("eventProbe", tango.EventType.CHANGE_EVENT, on_probe)
        except Exception:  # an older device without eventProbe: nothing to confirm with
            LOGGER.warning("cannot confirm the event channel of %s", self.device, exc_info=True)
            return
        try:
            while time.monotonic() < deadline:
                proxy.command_inout("ProbeEvents", token)
                if arrived.wait(0.25):
                    return
            LOGGER.warning(
                "events of %s not confirmed within %s s", self.device, EVENT_CHANNEL_TIMEOUT
            )
        except Exception:  # e.g. refused: carry on without the confirmation
            LOGGER.warning("cannot confirm the event channel of %s", self.device, exc_info=True)
        finally:
            with contextlib.suppress(Exception):
                proxy.unsubscribe_event(probe_id)

    def _on_event(self, event: Any) -> None:
        """Tango event thread: hand the JSON to the loop, nothing else."""
        if event.err:
            LOGGER.debug("lastEvent of %s: error event %s", self.device, event.errors)
            if self._proxy is None:  # during the connect: its subscription failed
                reasons = event.errors or ()
                self._subscription_error = (
                    str(getattr(reasons[0], "desc", reasons[0])) if reasons else "an error event"
                )
            self._to_loop(self.copies.drop_all)  # changes may be missed: read summaries again
            return
        value = getattr(event.attr_value, "value", None)
        if isinstance(value, str):
            self.hub.feed_threadsafe(value)

    def _to_loop(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile (shutting down)
                loop.call_soon_threadsafe(callback, *args)

    def _on_procedures(self, event: Any) -> None:
        """Tango event thread: the device's list, or an error (channel or device gone)."""
        value = None if event.err else getattr(event.attr_value, "value", None)
        if isinstance(value, str):
            self._to_loop(self.listing.on_value, value)
        else:
            self._to_loop(self.listing.on_error)
            self._to_loop(self.copies.drop_all)

    def _on_lrc_result(self, event: Any) -> None:
        """Tango event thread: ``(command_id, json [ResultCode, message])``."""
        value = None if event.err else getattr(event.attr_value, "value", None)
        if value is not None and len(value) == 2 and value[0]:
            try:
                code, message = json.loads(value[1])
                self._to_loop(self._lrc_result_arrived, str(value[0]), int(code), str(message))
            except (ValueError, TypeError):
                LOGGER.warning("%s sent a malformed LRC result: %.200r", self.device, value)

    def _lrc_result_arrived(self, command_id: str, code: int, message: str) -> None:
        self._lrc_results[command_id] = (code, message)
        while len(self._lrc_results) > _LRC_RESULTS_KEPT:
            self._lrc_results.popitem(last=False)
        waiter = self._lrc_waiters.pop(command_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result((code, message))

    async def _lrc_outcome(self, command_id: str, timeout: float) -> tuple[int, str]:
        """The LRC result of ``command_id``: from its change event, or from ``lrcFinished``
        when no event came for a while (events interrupted by a device restart)."""
        known = self._lrc_results.get(command_id)
        if known is not None:
            return known
        waiter = self._lrc_waiters.setdefault(
            command_id, asyncio.get_running_loop().create_future()
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                try:
                    return await asyncio.wait_for(
                        asyncio.shield(waiter), max(0.0, min(remaining, _LRC_CHECK_SECONDS))
                    )
                except TimeoutError:
                    finished = await self._finished_result(command_id)
                    if finished is not None:
                        return finished
                    if remaining <= _LRC_CHECK_SECONDS:
                        raise GatewayError(
                            errors.DEVICE_TIMEOUT,
                            f"{command_id} did not finish within {timeout:g} s",
                        ) from None
        finally:
            if self._lrc_waiters.get(command_id) is waiter:
                del self._lrc_waiters[command_id]

    async def _finished_result(self, command_id: str) -> tuple[int, str] | None:
        def read(proxy: Any) -> Any:
            return proxy.read_attribute("lrcFinished").value

        for text in await self._call(read) or ():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                entry = json.loads(text)
                if entry.get("uid") == command_id and "result" in entry:
                    code, message = entry["result"]
                    return int(code), str(message)
        return None

    def _connected_proxy(self) -> Any:
        """The device's proxy; the 503 of every request while it is not connected."""
        proxy = self._proxy
        if proxy is None:
            raise GatewayError(
                errors.DEVICE_UNREACHABLE,
                f"The OET device {self.device} cannot be reached: {self._connect_error}",
            )
        return proxy

    async def _call(self, func: Callable[..., T], *args: Any) -> T:
        proxy = self._connected_proxy()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, partial(func, proxy, *args))
        except Exception as exc:
            error = error_from_any(exc)
            if error.code in (errors.DEVICE_UNREACHABLE, errors.DEVICE_TIMEOUT):
                self.listing.on_error()  # the copies are not to be served now
                self.copies.drop_all()
            if error is exc:
                raise
            raise error from exc

    async def _command(self, name: str, argument: Any = None) -> Any:
        def run(proxy: Any, *args: Any) -> Any:
            return proxy.command_inout(name, *args)

        return await self._call(run, *(() if argument is None else (argument,)))

    async def _lrc(self, name: str, body: dict[str, Any]) -> str:
        """Run a long-running command; returns its command id once the device accepted it."""
        try:
            codes, messages = await self._command(name, json.dumps(body))
        finally:  # whatever it changed is read from the device, not the copies
            self.listing.invalidate()
            self.copies.drop_all()
        code = int(codes[0])
        message = str(messages[0]) if len(messages) else ""
        if code not in ACCEPTED_RESULT_CODES:
            # The device rejects what it cannot accept now as "<OET reason>: <text>"
            # (ska-tango-base's REJECTED convention); the reason keeps its HTTP status.
            reason, _, text = message.partition(": ")
            if code == ResultCode.REJECTED and reason.startswith("OET_") and text:
                raise GatewayError(reason, text)
            label = label_of(ResultCode, code)
            error_code = (
                errors.STATE_CONFLICT if code in REFUSED_RESULT_CODES else errors.DEVICE_ERROR
            )
            raise GatewayError(error_code, f"{name} was {label}: {message}")
        return message

    async def prepare(
        self, request: dict[str, Any], requested_by: str | None = None
    ) -> dict[str, Any]:
        command_id = await self._lrc("Prepare", _audited(request, requested_by))
        # The procedure exists (CREATING) once Prepare returns and carries the command id.
        summary = _loads(await self._command("GetProcedure", command_id), "GetProcedure")
        if isinstance(summary, dict) and isinstance(summary.get("id"), int):
            self.listing.expect(summary["id"])  # lists show it from now on
        return summary

    async def start_procedure(
        self,
        procedure_id: int,
        script_args: dict[str, Any] | None,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"procedure_id": procedure_id}
        if script_args:
            body["script_args"] = script_args
        await self._lrc("Start", _audited(body, requested_by))
        return await self.get_procedure(procedure_id)

    async def stop_procedure(
        self, procedure_id: int, run_abort: bool, requested_by: str | None = None
    ) -> None:
        body = {"procedure_id": procedure_id, "run_abort": run_abort}
        await self._lrc("Stop", _audited(body, requested_by))

    async def pause_procedure(
        self, procedure_id: int, immediate: bool, requested_by: str | None = None
    ) -> None:
        body = {"procedure_id": procedure_id, "immediate": immediate}
        await self._lrc("Pause", _audited(body, requested_by))

    async def resume_procedure(self, procedure_id: int, requested_by: str | None = None) -> None:
        await self._lrc("Resume", _audited({"procedure_id": procedure_id}, requested_by))

    async def answer_request(
        self, procedure_id: int, request_id: str, value: Any, requested_by: str | None = None
    ) -> dict[str, Any]:
        body = {"procedure_id": procedure_id, "request_id": request_id, "value": value}
        try:
            answer = await self._command("Answer", json.dumps(_audited(body, requested_by)))
        finally:  # the audit trail notes the answer with no event of its own
            self.copies.drop(procedure_id)
        return _loads(answer, "Answer")

    async def switch(
        self,
        procedure_id: int,
        run_abort: bool,
        force: bool,
        script_args: dict[str, Any] | None = None,
        requested_by: str | None = None,
        timeout: float = 90.0,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "procedure_id": procedure_id,
            "run_abort": run_abort,
            "force": force,
        }
        if script_args:
            body["script_args"] = script_args
        command_id = await self._lrc("Switch", _audited(body, requested_by))
        code, message = await self._lrc_outcome(command_id, timeout)
        if code != ResultCode.OK:
            raise GatewayError(errors.DEVICE_ERROR, message)
        result = _loads(message, "the Switch result")
        if not isinstance(result, dict) or not isinstance(result.get("started"), dict):
            raise GatewayError(errors.DEVICE_ERROR, "the device sent a malformed Switch result")
        return result

    async def get_procedure(self, procedure_id: int) -> dict[str, Any]:
        return (await self.procedure_copy(procedure_id)).summary

    async def procedure_copy(self, procedure_id: int) -> Kept:
        return await self.copies.get(procedure_id, partial(self._read_procedure, procedure_id))

    def cached_procedure(self, procedure_id: int) -> Kept | None:
        return self.copies.current(procedure_id)

    async def _read_procedure(self, procedure_id: int) -> dict[str, Any]:
        return _loads(await self._command("GetProcedure", str(procedure_id)), "GetProcedure")

    async def list_procedures(self) -> list[dict[str, Any]]:
        return (await self.procedures_snapshot()).summaries

    def cached_procedures(self) -> Snapshot | None:
        # Not before the connect has ended: the list's subscription delivers a value while
        # the connect still confirms the event channel, and a 200 for the list then would
        # claim a device that every other request still answers 503 for.
        return self.listing.current() if self._proxy is not None else None

    async def procedures_snapshot(self) -> Snapshot:
        self._connected_proxy()  # the list's copy is not served before the connect ends
        listing = self.listing
        current = listing.current()
        if current is None and listing.pending:
            await listing.settle()  # the value that shows the change is on its way
            current = listing.current()
        if current is not None:
            return current
        version = listing.version

        def read(proxy: Any) -> str:
            return proxy.read_attribute("procedures").value

        text = await self._call(read)
        try:
            return listing.adopt(version, text or "[]")
        except ValueError as exc:
            raise GatewayError(
                errors.DEVICE_ERROR, "the device sent malformed JSON for procedures"
            ) from exc

    async def run_activity(
        self, request: dict[str, Any], requested_by: str | None = None
    ) -> dict[str, Any]:
        command_id = await self._lrc("RunActivity", _audited(request, requested_by))
        # The activity exists (REQUESTED, with its procedure) once RunActivity returns.
        return _loads(await self._command("GetActivity", command_id), "GetActivity")

    async def get_activity(self, activity_id: int) -> dict[str, Any]:
        return _loads(await self._command("GetActivity", str(activity_id)), "GetActivity")

    async def list_activities(self) -> list[dict[str, Any]]:
        return await self._read_json_list("activities")

    async def add_sbd(self, sbd: dict[str, Any]) -> dict[str, Any]:
        return _loads(await self._command("AddSbd", json.dumps(sbd)), "AddSbd")

    async def get_sbd(self, sbd_id: str) -> dict[str, Any]:
        return _loads(await self._command("GetSbd", sbd_id), "GetSbd")

    async def _read_json_list(self, attribute: str) -> list[dict[str, Any]]:
        def read(proxy: Any) -> str:
            return proxy.read_attribute(attribute).value

        return _loads(await self._call(read) or "[]", attribute)


def _audited(body: dict[str, Any], requested_by: str | None) -> dict[str, Any]:
    """``body`` with the optional ``requested_by`` key of the device commands (the audit
    trail's user; the device records the Tango client itself when it is missing)."""
    return {**body, "requested_by": requested_by} if requested_by else body


def error_from_any(exc: Exception) -> GatewayError:
    """DevFailed (and anything else a Tango call may raise) as a GatewayError."""
    if isinstance(exc, GatewayError):
        return exc
    if any(cls.__name__ == "DevFailed" for cls in type(exc).__mro__):
        return errors.error_from_dev_failed(exc)
    if isinstance(exc, TimeoutError):
        return GatewayError(errors.DEVICE_TIMEOUT, "The OET device did not answer in time")
    return GatewayError(errors.DEVICE_ERROR, f"{type(exc).__name__}: {exc}")
