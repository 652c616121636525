"""One OET for the telescope: every device of the gateway behind one :class:`DeviceClient`.

The default URL serves :class:`RoutedClient`: a create goes to the device of its ``init``
``subarray_id`` (1 when absent), a procedure or activity id leads to its device, lists cover
every device and the event stream merges every device's events. The per-subarray URLs
(``/subarray/<n>``) keep their device's own client.

Ids are unique across the deployment because the devices number them so (``n * stride +
subarray``, :attr:`ska_oso_oet.procedure.config.OetConfig.id_stride`): the last two digits name
the subarray. The gateway asks that device first and the others only when it does not know the
id (ids given before the scheme, or a device whose ``SubarrayId`` differs from its name).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from . import errors
from .client import DeviceClient
from .errors import GatewayError
from .hub import EventHub, HubEvent
from .listing import Kept, Snapshot

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

#: Ids whose device is remembered (a bounded cache: an id not in it costs one more call).
_OWNERS_KEPT = 10_000


def subarray_of_device(device: str) -> int | None:
    """The subarray a device serves by its name: ``oso/oet/3`` -> 3 (None without digits)."""
    match = re.search(r"(\d+)$", device)
    return int(match.group(1)) if match else None


class RoutedClient(DeviceClient):
    """Routes each call to the device it concerns; merges lists and events.

    :param devices: device name -> its client, the default device first
    :param id_stride: the devices' id stride (``id % id_stride`` is the subarray)
    """

    def __init__(
        self, devices: Mapping[str, DeviceClient], hub: EventHub | None, id_stride: int = 100
    ):
        if not devices:
            raise ValueError("a RoutedClient needs at least one device")
        self.devices = dict(devices)
        if len(self.devices) == 1 or hub is None:  # nothing to merge: the device's own stream
            super().__init__(next(iter(self.devices.values())).hub)
            self._stride = id_stride
            self._owners = OrderedDict()
            self._merged: Snapshot | None = None
            return
        super().__init__(hub)
        self._stride = id_stride
        self._merged = None
        #: (kind, id) -> device name, for ids seen in answers
        self._owners: OrderedDict[tuple[str, int], str] = OrderedDict()
        # The merged stream's ids start from the clock (in microseconds), so they keep growing
        # across gateway restarts: a client resuming with an id of the previous gateway gets
        # the live events, never ids it has seen already.
        hub.last_seq = max(hub.last_seq, time.time_ns() // 1000)
        for client in self.devices.values():
            client.hub.add_observer(self._relay)

    # -- the merged event stream ---------------------------------------------------------------
    def _relay(self, events: Sequence[HubEvent]) -> None:
        """Every device's events, renumbered in the order they reached the gateway (loop
        thread): ``id:`` and ``seq`` of the merged stream are the gateway's; each device's
        events keep their order (devices are not ordered among themselves)."""
        self.hub.relay(events)

    # -- where things are ----------------------------------------------------------------------
    def subarrays(self) -> dict[int, str]:
        """Subarray -> device name (the device's own ``subarrayId`` once connected)."""
        served: dict[int, str] = {}
        for name, client in self.devices.items():
            number = client.subarray_id or subarray_of_device(name)
            if number is not None:
                served.setdefault(number, name)
        return served

    def _device_for_subarray(self, subarray: Any, what: str) -> str:
        served = self.subarrays()
        if subarray is None:
            if len(self.devices) == 1:
                return next(iter(self.devices))  # one device: everything goes to it
            subarray = 1
        if isinstance(subarray, bool) or not isinstance(subarray, int | str):
            raise GatewayError(
                errors.INVALID_REQUEST, f"{what}: subarray_id must be an integer, not {subarray!r}"
            )
        try:
            number = int(subarray)
        except ValueError:
            raise GatewayError(
                errors.INVALID_REQUEST, f"{what}: subarray_id must be an integer, not {subarray!r}"
            ) from None
        if number not in served:
            listed = ", ".join(str(n) for n in sorted(served)) or "none"
            raise GatewayError(
                errors.INVALID_REQUEST,
                f"{what}: subarray {number} is not served by this OET gateway "
                f"(it serves subarrays {listed})",
            )
        return served[number]

    def _candidates(self, kind: str, record_id: int) -> list[str]:
        """Devices to ask for an id, most likely first."""
        known = self._owners.get((kind, record_id))
        likely = known or self.subarrays().get(record_id % self._stride)
        rest = [name for name in self.devices if name != likely]
        return [likely, *rest] if likely else rest

    def _remember(self, kind: str, record_id: Any, device: str) -> None:
        if isinstance(record_id, int):
            self._owners[(kind, record_id)] = device
            self._owners.move_to_end((kind, record_id))
            while len(self._owners) > _OWNERS_KEPT:
                self._owners.popitem(last=False)

    async def _find(
        self, kind: str, record_id: int, call: Callable[[DeviceClient], Awaitable[T]]
    ) -> tuple[str, T]:
        """Ask the likely device, then the others, for something about one id."""
        unreachable: GatewayError | None = None
        not_found: GatewayError | None = None
        for name in self._candidates(kind, record_id):
            try:
                answer = await call(self.devices[name])
            except GatewayError as exc:
                if exc.code == errors.NOT_FOUND:
                    not_found = not_found or exc
                    continue
                if exc.code in (errors.DEVICE_UNREACHABLE, errors.DEVICE_TIMEOUT):
                    unreachable = unreachable or exc
                    continue
                raise
            self._remember(kind, record_id, name)
            return name, answer
        if unreachable is not None:  # it may be on the device that does not answer
            raise GatewayError(
                unreachable.code, f"{kind} {record_id} was not found on the devices that answer; "
                f"{unreachable.message}",
            )  # fmt: skip
        raise not_found or GatewayError(errors.NOT_FOUND, f"No information available for {kind}")

    async def _gather(self, call: Callable[[DeviceClient], Awaitable[list[T]]]) -> list[T]:
        """One call on every device; devices that cannot be reached are left out (``/health``
        names them), unless none answers."""
        names = list(self.devices)
        results = await asyncio.gather(
            *(call(self.devices[n]) for n in names), return_exceptions=True
        )
        merged: list[T] = []
        failure: BaseException | None = None
        answered = 0
        for name, result in zip(names, results, strict=True):
            if isinstance(result, GatewayError):
                LOGGER.debug("%s left out of a merged answer: %s", name, result.message)
                failure = failure or result
                continue
            if isinstance(result, BaseException):
                raise result
            answered += 1
            merged.extend(result)
        if not answered and failure is not None:
            raise failure
        return merged

    # -- procedures ----------------------------------------------------------------------------
    async def prepare(
        self, request: dict[str, Any], requested_by: str | None = None
    ) -> dict[str, Any]:
        init = (request.get("script_args") or {}).get("init") or {}
        device = self._device_for_subarray((init.get("kwargs") or {}).get("subarray_id"), "create")
        summary = await self.devices[device].prepare(request, requested_by)
        self._remember("procedure", summary.get("id"), device)
        return summary

    async def start_procedure(
        self,
        procedure_id: int,
        script_args: dict[str, Any] | None,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        device = await self._owner("procedure", procedure_id)
        return await self.devices[device].start_procedure(procedure_id, script_args, requested_by)

    async def stop_procedure(
        self, procedure_id: int, run_abort: bool, requested_by: str | None = None
    ) -> None:
        device = await self._owner("procedure", procedure_id)
        await self.devices[device].stop_procedure(procedure_id, run_abort, requested_by)

    async def pause_procedure(
        self, procedure_id: int, immediate: bool, requested_by: str | None = None
    ) -> None:
        device = await self._owner("procedure", procedure_id)
        await self.devices[device].pause_procedure(procedure_id, immediate, requested_by)

    async def resume_procedure(self, procedure_id: int, requested_by: str | None = None) -> None:
        device = await self._owner("procedure", procedure_id)
        await self.devices[device].resume_procedure(procedure_id, requested_by)

    async def answer_request(
        self, procedure_id: int, request_id: str, value: Any, requested_by: str | None = None
    ) -> dict[str, Any]:
        device = await self._owner("procedure", procedure_id)
        return await self.devices[device].answer_request(
            procedure_id, request_id, value, requested_by
        )

    async def switch(
        self,
        procedure_id: int,
        run_abort: bool,
        force: bool,
        script_args: dict[str, Any] | None = None,
        requested_by: str | None = None,
        timeout: float = 90.0,
    ) -> dict[str, Any]:
        return await self._at_owner(
            "procedure",
            procedure_id,
            lambda c: c.switch(procedure_id, run_abort, force, script_args, requested_by, timeout),
        )

    async def _at_owner(
        self, kind: str, record_id: int, call: Callable[[DeviceClient], Awaitable[T]]
    ) -> T:
        """A command about one id, sent straight to the device its id names when the owner is
        not known yet (a lookup first would cost a Tango round trip): the others are searched
        only when that device does not know the id or cannot be reached (nothing was sent).
        A timeout is not retried elsewhere: the command may have run."""
        if (kind, record_id) not in self._owners:
            likely = self.subarrays().get(record_id % self._stride)
            if likely is not None:
                try:
                    answer = await call(self.devices[likely])
                except GatewayError as exc:
                    if exc.code not in (errors.NOT_FOUND, errors.DEVICE_UNREACHABLE):
                        raise
                else:
                    self._remember(kind, record_id, likely)
                    return answer
        device = await self._owner(kind, record_id)
        return await call(self.devices[device])

    async def get_procedure(self, procedure_id: int) -> dict[str, Any]:
        _, summary = await self._find(
            "procedure", procedure_id, lambda c: c.get_procedure(procedure_id)
        )
        return summary

    async def procedure_copy(self, procedure_id: int) -> Kept:
        _, kept = await self._find(
            "procedure", procedure_id, lambda c: c.procedure_copy(procedure_id)
        )
        return kept

    def cached_procedure(self, procedure_id: int) -> Kept | None:
        """The current copy of the device known to hold ``procedure_id``: no task, no await."""
        owner = self._owners.get(("procedure", procedure_id))
        return None if owner is None else self.devices[owner].cached_procedure(procedure_id)

    async def list_procedures(self) -> list[dict[str, Any]]:
        return (await self.procedures_snapshot()).summaries

    async def procedures_snapshot(self) -> Snapshot:
        """Every device's list, merged oldest first; versioned (and the merge kept) while
        every device's own list is."""
        cached = self.cached_procedures()
        if cached is not None:
            return cached
        names = list(self.devices)
        results = await asyncio.gather(
            *(self.devices[n].procedures_snapshot() for n in names), return_exceptions=True
        )
        return self._merge(names, results)

    def cached_procedures(self) -> Snapshot | None:
        """The merged list when every device's copy is current: no task, no await."""
        snapshots = []
        for client in self.devices.values():
            snapshot = client.cached_procedures()
            if snapshot is None:
                return None
            snapshots.append(snapshot)
        return self._merge(list(self.devices), snapshots)

    def _merge(self, names: list[str], results: Sequence[Any]) -> Snapshot:
        answered: list[tuple[str, Snapshot]] = []
        failure: BaseException | None = None
        for name, result in zip(names, results, strict=True):
            if isinstance(result, GatewayError):
                LOGGER.debug("%s left out of a merged answer: %s", name, result.message)
                failure = failure or result
            elif isinstance(result, BaseException):
                raise result
            else:
                answered.append((name, result))
        if not answered and failure is not None:
            raise failure
        versions = tuple((name, snapshot.version) for name, snapshot in answered)
        if any(snapshot.version is None for _, snapshot in answered):
            versions = None
        merged = self._merged
        if versions is None or merged is None or merged.version != versions:
            summaries = [s for _, snapshot in answered for s in snapshot.summaries]
            merged = Snapshot(versions, sorted(summaries, key=_created))
            self._merged = merged if versions is not None else None
        return merged

    async def device_of_procedure(self, procedure_id: int) -> str:
        """The name of the device running ``procedure_id``."""
        return await self._owner("procedure", procedure_id)

    async def _owner(self, kind: str, record_id: int) -> str:
        known = self._owners.get((kind, record_id))
        if known is not None:
            return known
        getter = "get_procedure" if kind == "procedure" else "get_activity"
        name, _ = await self._find(kind, record_id, lambda c: getattr(c, getter)(record_id))
        return name

    # -- activities and SBDs -------------------------------------------------------------------
    async def run_activity(
        self, request: dict[str, Any], requested_by: str | None = None
    ) -> dict[str, Any]:
        init = (request.get("script_args") or {}).get("init") or {}
        device = self._device_for_subarray(
            (init.get("kwargs") or {}).get("subarray_id"), "activity"
        )
        summary = await self.devices[device].run_activity(request, requested_by)
        self._remember("activity", summary.get("id"), device)
        self._remember("procedure", summary.get("procedure_id"), device)
        return summary

    async def get_activity(self, activity_id: int) -> dict[str, Any]:
        _, summary = await self._find(
            "activity", activity_id, lambda c: c.get_activity(activity_id)
        )
        return summary

    async def list_activities(self) -> list[dict[str, Any]]:
        return sorted(await self._gather(lambda c: c.list_activities()), key=_created)

    async def add_sbd(self, sbd: dict[str, Any]) -> dict[str, Any]:
        """Stored on every device that answers (devices may share one store: same content)."""
        stored = await self._gather(lambda c: _as_list(c.add_sbd(sbd)))
        return stored[0]

    async def get_sbd(self, sbd_id: str) -> dict[str, Any]:
        failure: GatewayError | None = None
        for client in self.devices.values():
            try:
                return await client.get_sbd(sbd_id)
            except GatewayError as exc:
                failure = failure if failure and failure.code != errors.NOT_FOUND else exc
        assert failure is not None
        raise failure


async def _as_list(awaitable: Awaitable[T]) -> list[T]:
    return [await awaitable]


def _created(summary: dict[str, Any]) -> tuple[float, int]:
    """Oldest first across devices: by the first recorded state's time, then id."""
    history = summary.get("history") or {}
    states = history.get("process_states") or summary.get("activity_states") or []
    try:
        first = float(states[0][1])
    except (IndexError, TypeError, ValueError):
        first = 0.0
    return first, int(summary.get("id") or 0)
