"""OETGroups: linked observation groups across subarrays, as a Tango device.

"Failure on one subarray halts observing on the subarray observations that depend on it."
A group links procedures of several OETDevices; when one member ends badly (FAILED, STOPPED by
somebody else, UNKNOWN) or its device cannot be reached, this device stops every other member
that has not finished, in parallel (with its subarray's abort script when the group asks for
it; at once, without the stop grace, with ``force``). Independent procedures are never
touched. The rules live in :mod:`ska_oso_oet.groups`; this device watches and acts:

* it subscribes to ``lastEvent`` of every device with a member (its state changes), and
* it pings those devices every ``PingPeriodMs`` (20 ms), so that a member whose device server
  dies (its port refuses at once) is noticed in milliseconds, where Tango's own heartbeat
  takes about ten seconds;
* every ``ReconcileSeconds`` it reads its members' states again, in case events were lost.

Commands (JSON in, JSON out, synchronous; a bad request is a ``DevFailed`` naming what is
wrong, with reason ``OET_INVALID_REQUEST``, ``OET_NOT_FOUND``, ``OET_STATE_CONFLICT`` or
``OET_DEVICE_UNREACHABLE``):

* ``CreateGroup({"procedures": [ids], "activities": [ids], "name": str, "abort": bool,
  "force": bool})`` -> the group;
* ``AddMember({"group_id", "procedure_id" | "activity_id"})`` -> the group;
* ``Disband({"group_id"})`` -> the group (DISBANDED: its members carry on independently);
* ``GetGroup(id)`` -> the group.

Attributes: ``groups`` (JSON list), ``lastEvent`` (one change event per group change:
``group.lifecycle.created|statechange|member``), ``watchedDevices``, ``unreachableDevices``
and the SKA attributes of :class:`~.base.SkaDevice`. Groups persist in ``StateDatabase``; a
restarted device reloads them and halts at once what a member's end during the outage calls
for.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import tango
from tango import DevState, EventType
from tango.server import attribute, command, device_property

from ..events import Event, dumps
from ..groups import (
    GroupCoordinator,
    GroupStore,
    HaltOrder,
    HaltPolicy,
    MemberSpec,
)
from ..jsonlimits import shown
from ..procedure.errors import OetError
from .base import SkaDevice
from .requests import JsonRequests
from .ska import COMMAND_ACCEPTING_ADMIN_MODES, HealthState, ResultCode

#: Reasons of a DevFailed meaning "it did not answer in time" (any other failure of a ping
#: means the device is gone: its server refuses the connection, or is not exported).
_TIMEOUT_REASONS = {"API_DeviceTimedOut"}
_STATECHANGE = '"procedure.lifecycle.statechange"'
INITIAL_EVENT_TOPIC = "oet.groups.started"


_OMNI = threading.local()


def _enter_omni_thread() -> None:
    """Make a pool thread an omniORB thread for good (Tango calls from plain Python threads
    otherwise each set one up and tear it down)."""
    _OMNI.guard = tango.EnsureOmniThread()
    _OMNI.guard.__enter__()


def _server_starting() -> bool:
    try:
        return bool(tango.Util.instance().is_svr_starting())
    except Exception:  # no Util (a device run outside a server): nothing to wait for
        return False


class _Refusal(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _reasons(exc: BaseException) -> list[str]:
    return [str(e.reason) for e in getattr(exc, "args", ()) if hasattr(e, "reason")]


def _desc(exc: BaseException) -> str:
    errors = [e for e in getattr(exc, "args", ()) if hasattr(e, "desc")]
    return str(errors[0].desc).strip().splitlines()[0] if errors else str(exc)


class OETGroups(JsonRequests, SkaDevice):
    """Linked observation groups: when one member procedure of a group fails, is stopped or
    loses its device, every other member of the group is stopped (with its subarray's abort
    script when the group asks for it)."""

    #: Largest command argument (a group's JSON is small).
    max_argument_chars = 64 * 1024

    OETDevices = device_property(
        dtype="DevVarStringArray",
        default_value=[],
        doc="OET devices whose procedures may be linked. Empty: <domain>/<family>/<subarray> "
        "of this device's own name (oso/oet/groups -> oso/oet/<n>), the subarray being "
        "procedure id % IdStride.",
    )
    IdStride = device_property(
        dtype="uint16", default_value=100, doc="The OET devices' id stride (OET_ID_STRIDE)."
    )
    StateDatabase = device_property(
        dtype="str",
        default_value="",
        doc="sqlite file keeping the groups across restarts (empty: $OET_GROUPS_DATABASE, "
        "else in memory only).",
    )
    HistorySize = device_property(
        dtype="uint32", default_value=50, doc="Finished groups kept (active ones always are)."
    )
    PingPeriodMs = device_property(
        dtype="uint16",
        default_value=20,
        doc="How often a device with an unfinished member is pinged (milliseconds).",
    )
    PingTimeoutMs = device_property(
        dtype="uint32", default_value=1000, doc="Client timeout of one ping (milliseconds)."
    )
    UnresponsiveSeconds = device_property(
        dtype="double",
        default_value=3.0,
        doc="A device whose pings time out for this long counts as unreachable (a refused "
        "connection counts at once).",
    )
    ReconcileSeconds = device_property(
        dtype="double",
        default_value=2.0,
        doc="How often members' states are read again (in case events were lost).",
    )
    HaltTimeoutSeconds = device_property(
        dtype="double",
        default_value=90.0,
        doc="How long a halting group waits for its halted members to confirm STOPPED.",
    )
    CallTimeoutMs = device_property(
        dtype="uint32", default_value=3000, doc="Client timeout of calls to OET devices."
    )

    # ----- life cycle -----------------------------------------------------------------------
    def init_device(self) -> None:
        super().init_device()
        self._last_event = Event(
            INITIAL_EVENT_TOPIC, self.get_name(), time.time(), 0, {"device": self.get_name()}
        ).to_json()
        self._groups_json = "[]"
        self._closing_groups = threading.Event()
        self._proxies: dict[str, tango.DeviceProxy] = {}
        self._subscriptions: dict[str, tuple[tango.DeviceProxy, int]] = {}
        self._pingers: dict[str, threading.Thread] = {}
        self._unreachable: dict[str, str] = {}
        self._pushed_devices: tuple[list[str], list[str]] | None = None
        #: Devices whose server was lost since they were subscribed to.
        self._stale: set[str] = set()
        self._lock = threading.RLock()
        self._halts = ThreadPoolExecutor(
            16, thread_name_prefix="group-halt", initializer=_enter_omni_thread
        )
        self._error = ""
        self.coordinator: GroupCoordinator | None = None
        for name in ("groups", "lastEvent", "watchedDevices", "unreachableDevices"):
            self.set_change_event(name, True, False)
            self.set_archive_event(name, True, False)
        path = self.StateDatabase or os.environ.get("OET_GROUPS_DATABASE", "")
        try:
            store = GroupStore(os.path.expanduser(path) if path else None, self.get_name())
            self.coordinator = GroupCoordinator(
                store,
                self._order_halt,
                name=self.get_name(),
                history_size=self.HistorySize,
                halt_timeout=self.HaltTimeoutSeconds,
            )
        except Exception as exc:
            self._error = f"the groups store cannot be opened: {exc}"
            self.logger.exception("cannot start the group coordinator")
            self.submit(self.refresh_condition)
            return
        self._events_subscription = self.coordinator.events.subscribe(self._on_group_event)
        self._groups_json = dumps(self.coordinator.summaries())
        self._reconciler = threading.Thread(
            target=self._reconcile_loop, name="group-reconcile", daemon=True
        )
        self._reconciler.start()
        self.submit(self.refresh_condition)
        self.logger.info("OETGroups %s ready", self.get_name())

    def delete_device(self) -> None:
        self._closing_groups.set()
        for proxy, event_id in list(getattr(self, "_subscriptions", {}).values()):
            try:
                proxy.unsubscribe_event(event_id)
            except Exception:
                self.logger.debug("unsubscribe failed", exc_info=True)
        halts = getattr(self, "_halts", None)
        if halts is not None:
            halts.shutdown(wait=False, cancel_futures=True)
        super().delete_device()
        coordinator = getattr(self, "coordinator", None)
        if coordinator is not None:
            self.coordinator = None
            coordinator.close()

    def condition(self) -> tuple[DevState, str, HealthState]:
        state, status, health = super().condition()
        if state != DevState.ON:
            return state, status, health
        if self.coordinator is None:
            return DevState.FAULT, self._error or "no group coordinator", HealthState.FAILED
        active = sum(1 for g in self.coordinator.summaries() if g["state"] in ("ACTIVE", "HALTING"))
        unreachable = self._unreachable_names()
        if unreachable:
            names = ", ".join(unreachable)
            return (
                DevState.ON,
                f"{active} active group(s); unreachable: {names}",
                HealthState.DEGRADED,
            )
        return DevState.ON, f"The device is ON: {active} active group(s).", HealthState.OK

    # ----- group events (any thread: hand over to the event thread) -------------------------
    def _on_group_event(self, event: Event) -> None:
        self.submit(self._publish_group_event, event)

    def _publish_group_event(self, event: Event) -> None:
        self._last_event = event.to_json()
        self.push("lastEvent", self._last_event)
        if self.coordinator is not None:
            self._groups_json = dumps(self.coordinator.summaries())
            self.push("groups", self._groups_json)
        self.refresh_condition()

    # ----- member devices ---------------------------------------------------------------------
    def _device_for(self, procedure_id: int) -> list[str]:
        """Devices to ask about an id, the one its subarray names first."""
        subarray = procedure_id % self.IdStride if self.IdStride > 1 else None
        listed = [d for d in (self.OETDevices or []) if d.strip()]
        if not listed:
            prefix = self.get_name().rsplit("/", 1)[0]
            return [f"{prefix}/{subarray}"] if subarray else []
        likely = [d for d in listed if subarray and re.search(rf"(?<!\d){subarray}$", d)]
        return likely + [d for d in listed if d not in likely]

    def _proxy(self, device: str) -> tango.DeviceProxy:
        with self._lock:
            proxy = self._proxies.get(device)
            if proxy is None:
                proxy = tango.DeviceProxy(device)
                proxy.set_timeout_millis(self.CallTimeoutMs)
                self._proxies[device] = proxy
            return proxy

    def _get_json(self, device: str, command_name: str, arg: str) -> dict[str, Any]:
        return json.loads(self._proxy(device).command_inout(command_name, arg))

    def _find(self, kind: str, record_id: int) -> tuple[str, dict[str, Any]]:
        """(device, summary) of a procedure or activity; _Refusal when nobody knows it."""
        command_name = "GetProcedure" if kind == "procedure" else "GetActivity"
        unreachable = []
        candidates = self._device_for(record_id)
        for device in candidates:
            try:
                return device, self._get_json(device, command_name, str(record_id))
            except tango.DevFailed as exc:
                reasons = _reasons(exc)
                if "OET_NOT_FOUND" in reasons:
                    continue
                if any(r.startswith("OET_") for r in reasons):
                    raise _Refusal(reasons[0], f"{device}: {_desc(exc)}") from None
                unreachable.append(f"{device} ({_desc(exc)})")
        if unreachable:
            raise _Refusal(
                "OET_DEVICE_UNREACHABLE",
                f"cannot check {kind} {record_id}: {'; '.join(unreachable)} cannot be reached",
            )
        asked = ", ".join(candidates) or "none"
        raise _Refusal(
            "OET_NOT_FOUND", f"{kind} {record_id} is not known to any OET device (asked {asked})"
        )

    def _member_spec(self, kind: str, record_id: int) -> MemberSpec:
        device, summary = self._find(kind, record_id)
        if kind == "procedure":
            return MemberSpec(record_id, device, str(summary.get("state")))
        pid = summary.get("procedure_id")
        if not isinstance(pid, int):
            raise _Refusal(
                "OET_STATE_CONFLICT", f"activity {record_id} has no procedure yet: link it later"
            )
        procedure = self._get_json(device, "GetProcedure", str(pid))
        return MemberSpec(pid, device, str(procedure.get("state")), activity_id=record_id)

    def _watch(self, device: str, ping: bool = True) -> None:
        """Subscribe to the device's lastEvent (once it answers) and ping it while it has
        unfinished members."""
        with self._lock:
            current = self._subscriptions.get(device)
            if current is None or device in self._stale:
                # A subscription made while the device is down, or broken by its server's
                # death, would only resume at Tango's next keep-alive round (~10 s): a new one
                # is made as soon as the device answers.
                proxy = tango.DeviceProxy(device)  # its own proxy: events only
                proxy.ping()
                if current is not None:
                    with contextlib.suppress(tango.DevFailed):
                        current[0].unsubscribe_event(current[1])
                    del self._subscriptions[device]
                self._stale.discard(device)
                event_id = proxy.subscribe_event(
                    "lastEvent",
                    EventType.CHANGE_EVENT,
                    functools.partial(self._on_member_event, device),
                    stateless=True,
                )
                self._subscriptions[device] = (proxy, event_id)
            pinger = self._pingers.get(device)
            if ping and (pinger is None or not pinger.is_alive()):
                pinger = threading.Thread(
                    target=self._ping_loop, args=(device,), name=f"ping {device}", daemon=True
                )
                self._pingers[device] = pinger
                pinger.start()

    def _on_member_event(self, device: str, event: Any) -> None:
        """Tango event thread: a member device's event; only state changes matter."""
        if event.err:
            self._stale.add(device)  # re-subscribed once it answers (see _watch)
            return
        if self.coordinator is None:
            return
        raw = getattr(event.attr_value, "value", None)
        if not isinstance(raw, str) or _STATECHANGE not in raw:
            return
        try:
            data = json.loads(raw)
            pid, state = data["procedure_id"], data["new_state"]
        except (ValueError, KeyError, TypeError):
            return
        if isinstance(pid, int) and isinstance(state, str):
            self.coordinator.observe(pid, state, data.get("timestamp"))

    def _subscribe_listed(self) -> None:
        """Subscribe to the listed OETDevices up front: a subscription made when a group is
        created can miss the first events (its filter reaches the server asynchronously)."""
        for device in [d for d in (self.OETDevices or []) if d.strip()]:
            if device in self._subscriptions and device not in self._stale:
                continue
            try:
                self._watch(device, ping=False)
            except tango.DevFailed as exc:
                self.logger.debug("cannot subscribe to %s yet: %s", device, _desc(exc))

    def _ping_loop(self, device: str) -> None:
        period = max(1, self.PingPeriodMs) / 1000
        closing = self._closing_groups  # this device's life (Init makes a new one)
        coordinator = self.coordinator
        with tango.EnsureOmniThread():
            proxy = tango.DeviceProxy(device)
            proxy.set_timeout_millis(self.PingTimeoutMs)
            silent_since: float | None = None
            while not closing.is_set():
                if coordinator is None or device not in coordinator.watched().values():
                    break
                failure = self._ping(proxy)
                if failure is not None and failure[0] != "timeout":
                    failure = self._ping(proxy)  # once more at once: one lost packet is not death
                if failure is None:
                    silent_since = None
                    if device in self._unreachable:
                        self._mark_reachable(device)
                elif failure[0] == "timeout":
                    silent_since = silent_since or time.monotonic()
                    if time.monotonic() - silent_since >= self.UnresponsiveSeconds:
                        self._lost(device, f"no answer for {self.UnresponsiveSeconds:g} s")
                else:
                    self._lost(device, failure[1])
                closing.wait(period)
            with self._lock:
                if self._pingers.get(device) is threading.current_thread():
                    del self._pingers[device]
            with self._lock:
                gone = self._unreachable.pop(device, None) is not None
            if gone:  # no member left to worry about
                self.submit(self._push_devices)

    @staticmethod
    def _ping(proxy: tango.DeviceProxy) -> tuple[str, str] | None:
        try:
            proxy.ping()
            return None
        except tango.DevFailed as exc:
            kind = "timeout" if _TIMEOUT_REASONS & set(_reasons(exc)) else "failed"
            return kind, _desc(exc)

    def _lost(self, device: str, detail: str) -> None:
        self._stale.add(device)
        with self._lock:
            first = device not in self._unreachable
            self._unreachable[device] = detail
        if first:
            self.logger.warning("%s is unreachable: %s", device, detail)
            self.submit(self._push_devices)
        if self.coordinator is not None:
            self.coordinator.device_unreachable(device, detail)

    def _mark_reachable(self, device: str) -> None:
        with self._lock:
            self._unreachable.pop(device, None)
        self.logger.info("%s answers again", device)
        self.submit(self._push_devices)

    def _push_devices(self) -> None:
        """Push watchedDevices and unreachableDevices when they changed (event thread)."""
        values = (self._watched_devices(), self._unreachable_names())
        if values != self._pushed_devices:
            self._pushed_devices = values
            self.push("watchedDevices", values[0])
            self.push("unreachableDevices", values[1])
        self.refresh_condition()

    def _unreachable_names(self) -> list[str]:
        with self._lock:  # ping threads change it
            return sorted(self._unreachable)

    def _watched_devices(self) -> list[str]:
        coordinator = self.coordinator
        return sorted(set(coordinator.watched().values())) if coordinator else []

    # ----- halting ------------------------------------------------------------------------------
    def _order_halt(self, order: HaltOrder) -> None:
        """Called by the coordinator under its lock: hand over, never wait."""
        with contextlib.suppress(RuntimeError):  # RuntimeError: shutting down
            self._halts.submit(self._halt, order)

    def _halt(self, order: HaltOrder) -> None:
        body: dict[str, Any] = {
            "procedure_id": order.procedure_id,
            "run_abort": order.policy.abort,
            "requested_by": order.requested_by,
        }
        if order.policy.force:
            body["grace"] = 0
        coordinator = self.coordinator
        if coordinator is None:
            return
        try:
            codes, messages = self._send_stop(order.device, body)
            if int(codes[0]) not in (ResultCode.OK, ResultCode.STARTED, ResultCode.QUEUED):
                coordinator.halt_refused(order.group_id, order.procedure_id, str(messages[0]))
                self._refresh_member(order.procedure_id, order.device)
        except tango.DevFailed as exc:
            reasons = _reasons(exc)
            if order.policy.abort and "OET_INVALID_REQUEST" in reasons and "abort" in _desc(exc):
                # No AbortScript on that device: a stop without it still halts the member.
                coordinator.halt_refused(
                    order.group_id, order.procedure_id, f"{_desc(exc)}; stopped without it"
                )
                self._halt(HaltOrder(order.group_id, order.procedure_id, order.device,
                                     HaltPolicy(False, order.policy.force), order.requested_by))  # fmt: skip
                return
            if any(r.startswith("OET_") for r in reasons):
                coordinator.halt_refused(order.group_id, order.procedure_id, _desc(exc))
                self._refresh_member(order.procedure_id, order.device)
            else:
                self._lost(order.device, _desc(exc))

    def _send_stop(self, device: str, body: dict[str, Any]) -> tuple[Any, Any]:
        codes, messages = self._proxy(device).command_inout("Stop", json.dumps(body))
        return codes, messages

    def _refresh_member(self, procedure_id: int, device: str) -> None:
        coordinator = self.coordinator
        if coordinator is None:
            return
        try:
            summary = self._get_json(device, "GetProcedure", str(procedure_id))
        except tango.DevFailed as exc:
            if "OET_NOT_FOUND" in _reasons(exc):
                coordinator.member_missing(procedure_id)
            return  # unreachable: the ping watch decides
        coordinator.observe(procedure_id, str(summary.get("state")))

    def _reconcile_loop(self) -> None:
        """Re-read members' states now and then; resume halts owed after a restart."""
        closing = self._closing_groups  # this device's life (Init makes a new one)
        coordinator = self.coordinator
        with tango.EnsureOmniThread():
            # No client call before the server has started: subscribing to devices of this
            # very process while it starts breaks its event channel for other clients
            # (API_ZmqFailed at their subscription).
            while _server_starting() and not closing.wait(0.05):
                pass
            first = True
            while not closing.is_set() and coordinator is not None:
                try:
                    watched = coordinator.watched()
                    for device in set(watched.values()):
                        with contextlib.suppress(tango.DevFailed):  # the ping watch decides
                            self._watch(device)
                    if first:
                        coordinator.reconcile()
                        first = False
                    self._subscribe_listed()
                    for pid, device in watched.items():
                        if device not in self._unreachable:
                            self._refresh_member(pid, device)
                    coordinator.check_deadlines()
                    self.submit(self._push_devices)
                except Exception:
                    self.logger.exception("reconciling groups failed")
                closing.wait(max(0.1, self.ReconcileSeconds))

    # ----- commands -----------------------------------------------------------------------------
    def _ready(self, origin: str) -> GroupCoordinator:
        if self._admin_mode not in COMMAND_ACCEPTING_ADMIN_MODES:
            self._fail(
                "OET_DEVICE_OFFLINE",
                f"{self.get_name()} is {self._admin_mode.name} (adminMode)",
                origin,
            )
        if self.coordinator is None:
            self._fail("OET_ENGINE_UNAVAILABLE", self._error or "no group coordinator", origin)
        return self.coordinator

    def _ids(self, body: dict[str, Any], key: str, origin: str) -> list[int]:
        value = body.get(key, [])
        if not isinstance(value, list) or any(
            isinstance(i, bool) or not isinstance(i, int) or i < 1 for i in value
        ):
            self._fail("OET_INVALID_REQUEST", f"{key} must be a list of positive integer ids", origin)  # fmt: skip
        return value

    def _flag(self, body: dict[str, Any], key: str, origin: str) -> bool:
        value = body.get(key, False)
        if not isinstance(value, bool):
            self._fail("OET_INVALID_REQUEST", f"{key} must be true or false", origin)
        return value

    def _group_id(self, body: dict[str, Any], origin: str) -> int:
        gid = body.get("group_id")
        if isinstance(gid, bool) or not isinstance(gid, int) or gid < 1:
            self._fail("OET_INVALID_REQUEST", "group_id must be a positive integer", origin)
        return gid

    def _resolve(self, kind: str, record_id: int, origin: str) -> MemberSpec:
        try:
            return self._member_spec(kind, record_id)
        except _Refusal as exc:
            self._fail(exc.reason, str(exc), origin)

    def _engine_call(self, origin: str, fn: Any, *args: Any) -> dict[str, Any]:
        try:
            return fn(*args)
        except OetError as exc:
            self._fail(exc.code, str(exc), origin)

    def _follow(self, specs: list[MemberSpec], origin: str) -> None:
        """Subscribe to the members' devices before linking (the pings start once the group
        exists: a ping loop ends when its device has no unfinished member)."""
        try:
            for device in {s.device for s in specs}:
                self._watch(device, ping=False)
        except tango.DevFailed as exc:
            self._fail("OET_DEVICE_UNREACHABLE", f"cannot watch its devices: {_desc(exc)}", origin)

    def _recheck(self, specs: list[MemberSpec]) -> None:
        """Read the members once more after linking: an end between the first read and the
        subscription would otherwise only be seen at the next reconciliation."""
        for device in {s.device for s in specs}:
            with contextlib.suppress(tango.DevFailed):  # subscribed already: pings only
                self._watch(device)
        for spec in specs:
            self._halts.submit(self._refresh_member, spec.procedure_id, spec.device)
        self.submit(self._push_devices)

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='{"procedures": [procedure ids], "activities": [activity ids], "name": str, '
        '"abort": false (halt with the abort script), "force": false (kill at once), '
        '"requested_by": user}',
        doc_out="The new group (JSON).",
    )
    def CreateGroup(self, argin: str) -> str:
        """Link procedures (or activities' procedures) of several subarrays into a group."""
        origin = "CreateGroup"
        body = self._decode(argin, origin, {"procedures", "activities", "name", "abort", "force"})
        coordinator = self._ready(origin)
        user = self._requester(body, origin)
        policy = HaltPolicy(self._flag(body, "abort", origin), self._flag(body, "force", origin))
        name = body.get("name", "")
        if not isinstance(name, str):
            self._fail("OET_INVALID_REQUEST", "name must be a string", origin)
        requested = [("procedure", i) for i in self._ids(body, "procedures", origin)]
        requested += [("activity", i) for i in self._ids(body, "activities", origin)]
        if len(requested) < 2:
            self._fail(
                "OET_INVALID_REQUEST",
                f"a group links at least 2 procedures or activities, {len(requested)} given",
                origin,
            )
        specs = [self._resolve(kind, record_id, origin) for kind, record_id in requested]
        self._follow(specs, origin)
        group = self._engine_call(origin, coordinator.create, specs, policy, name, user)
        self._recheck(specs)
        return dumps(group)

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='{"group_id": int, "procedure_id": int | "activity_id": int}',
        doc_out="The group (JSON).",
    )
    def AddMember(self, argin: str) -> str:
        """Link one more procedure (or activity) into an ACTIVE group."""
        origin = "AddMember"
        body = self._decode(argin, origin, {"group_id", "procedure_id", "activity_id"})
        coordinator = self._ready(origin)
        user = self._requester(body, origin)
        gid = self._group_id(body, origin)
        keys = [k for k in ("procedure_id", "activity_id") if k in body]
        if len(keys) != 1:
            self._fail("OET_INVALID_REQUEST", "give one of procedure_id, activity_id", origin)
        record_id = body[keys[0]]
        if isinstance(record_id, bool) or not isinstance(record_id, int) or record_id < 1:
            self._fail("OET_INVALID_REQUEST", f"{keys[0]} must be a positive integer", origin)
        self._engine_call(origin, coordinator.get, gid)  # an unknown group first
        spec = self._resolve(keys[0].removesuffix("_id"), record_id, origin)
        self._follow([spec], origin)
        group = self._engine_call(origin, coordinator.add_member, gid, spec, user)
        self._recheck([spec])
        return dumps(group)

    @command(dtype_in=str, dtype_out=str, doc_in='{"group_id": int}', doc_out="The group (JSON).")
    def Disband(self, argin: str) -> str:
        """Unlink a group's members: they carry on independently (nothing is stopped)."""
        origin = "Disband"
        body = self._decode(argin, origin, {"group_id"})
        coordinator = self._ready(origin)
        user = self._requester(body, origin)
        group = self._engine_call(origin, coordinator.disband, self._group_id(body, origin), user)
        self.submit(self._push_devices)
        return dumps(group)

    @command(dtype_in=str, dtype_out=str, doc_in="group id", doc_out="The group (JSON).")
    def GetGroup(self, argin: str) -> str:
        """One group with its members and history."""
        coordinator = self._ready("GetGroup")
        try:
            gid = int(str(argin).strip())
        except ValueError:
            self._fail("OET_INVALID_REQUEST", f"group id must be an integer, got {shown(argin)}", "GetGroup")  # fmt: skip
        return dumps(self._engine_call("GetGroup", coordinator.get, gid))

    # ----- attributes ---------------------------------------------------------------------------
    @attribute(dtype=str, doc="Every group kept (active ones and the newest finished), JSON.")
    def groups(self) -> str:
        return self._groups_json

    @attribute(
        dtype=str,
        doc="The latest group event (JSON envelope with topic group.lifecycle.*); one change "
        "event per group change, in order.",
    )
    def lastEvent(self) -> str:
        return self._last_event

    @attribute(dtype=("str",), max_dim_x=256, doc="Devices with unfinished members being watched.")
    def watchedDevices(self) -> list[str]:
        return self._watched_devices()

    @attribute(dtype=("str",), max_dim_x=256, doc="Watched devices that cannot be reached.")
    def unreachableDevices(self) -> list[str]:
        return self._unreachable_names()
