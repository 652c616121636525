"""GroupCoordinator: the rules of linked groups, without Tango.

The adapter (the OETGroups device) tells the coordinator what it sees -- a member's new state
(:meth:`~GroupCoordinator.observe`), a device that cannot be reached
(:meth:`~GroupCoordinator.device_unreachable`), the outcome of a stop it was asked to send
(:meth:`~GroupCoordinator.halt_refused`) -- and carries out the :class:`HaltOrder` s the
coordinator hands to its ``halt`` callback. Every change of a group is recorded in its history,
saved (sqlite) before anybody hears of it, and published on :attr:`GroupCoordinator.events`.

The ``halt`` callback is called under the coordinator's lock, so it must only hand the order
over (to a thread pool); halting starts at the moment the bad end is observed, before the
group is saved.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..events import EventBus
from ..procedure.errors import InvalidRequest, OetError, StateConflict
from ..procedure.store import JsonTable
from .domain import (
    BAD_END,
    ENDED,
    NORMAL_END,
    Group,
    GroupState,
    HaltOrder,
    HaltPolicy,
    Member,
    MemberSpec,
)

LOGGER = logging.getLogger(__name__)

GROUP_CREATED = "group.lifecycle.created"
GROUP_STATECHANGE = "group.lifecycle.statechange"
#: Something happened to one member (it ended, its halt was asked for or settled).
GROUP_MEMBER = "group.lifecycle.member"

#: Longest group name kept.
MAX_NAME_CHARS = 128
#: Most members of one group (there are at most 16 subarrays; room for queued procedures).
MAX_MEMBERS = 64


class GroupNotFound(OetError):
    code = "OET_NOT_FOUND"

    def __init__(self, group_id: object):
        super().__init__(f"No information available for group {group_id}")


class GroupStore:
    """Groups in sqlite (one JSON row each), used by one live coordinator at a time."""

    def __init__(self, path: Path | None, owner: str = "an OET groups device"):
        self._table = JsonTable(path, "groups", owner)

    def load(self) -> list[Group]:
        groups = []
        for record in self._table.load():
            try:
                groups.append(Group.from_record(record))
            except (KeyError, TypeError, ValueError) as exc:
                LOGGER.error("skipping malformed group record %s: %s", record.get("id"), exc)
        return groups

    def save(self, group: Group) -> None:
        self._table.save(group.id, group.to_record())

    def delete(self, group_ids: Iterable[int]) -> None:
        self._table.delete(group_ids)

    def close(self) -> None:
        self._table.close()


class GroupCoordinator:
    """Linked groups and their rules; thread-safe.

    :param store: where groups persist (None: in memory only)
    :param halt: carries out one :class:`HaltOrder` (called under the lock: hand it over)
    :param name: ``msg_src`` of the events
    :param history_size: finished groups kept (the active ones are always kept)
    :param halt_timeout: seconds a halting group waits for its halted members before it is
        HALTED anyway, naming the members that never confirmed
    """

    def __init__(
        self,
        store: GroupStore | None,
        halt: Callable[[HaltOrder], None],
        name: str = "oet-groups",
        history_size: int = 50,
        halt_timeout: float = 90.0,
        clock: Callable[[], float] = time.time,
    ):
        self._store = store
        self._halt = halt
        self._name = name
        self._history_size = max(1, history_size)
        self._halt_timeout = halt_timeout
        self._clock = clock
        self._lock = threading.RLock()
        self.events = EventBus()
        self._groups: dict[int, Group] = {}
        if store is not None:
            for group in store.load():
                self._groups[group.id] = group
        self._next_id = max(self._groups, default=0) + 1

    # -- queries --------------------------------------------------------------------------------
    def summaries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [g.summary() for g in sorted(self._groups.values(), key=lambda g: g.id)]

    def get(self, group_id: int) -> dict[str, Any]:
        with self._lock:
            return self._find(group_id).summary()

    def watched(self) -> dict[int, str]:
        """procedure id -> device of every unfinished member of a group that still watches."""
        with self._lock:
            return {
                m.procedure_id: m.device
                for g in self._groups.values()
                if g.state.watching
                for m in g.members
                if not m.settled
            }

    def group_of(self, procedure_id: int) -> int | None:
        """The watching group ``procedure_id`` belongs to (None: independent)."""
        with self._lock:
            return self._group_of(procedure_id)

    # -- requests -------------------------------------------------------------------------------
    def create(
        self,
        members: Sequence[MemberSpec],
        policy: HaltPolicy,
        name: str = "",
        requested_by: str = "unknown",
    ) -> dict[str, Any]:
        """Link ``members`` (as the device found them) into a new ACTIVE group."""
        if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
            raise InvalidRequest(f"name must be a string of at most {MAX_NAME_CHARS} characters")
        ids = [m.procedure_id for m in members]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise InvalidRequest(f"procedure {repeated[0]} is listed more than once")
        if len(members) < 2:
            raise InvalidRequest(
                f"a group links at least 2 procedures, {len(members)} given: a procedure "
                "alone is independent"
            )
        if len(members) > MAX_MEMBERS:
            raise InvalidRequest(f"a group has at most {MAX_MEMBERS} members")
        with self._lock:
            for spec in members:
                self._check_linkable(spec)
            now = self._clock()
            group = Group(
                id=self._next_id,
                name=name or f"group {self._next_id}",
                members=[Member(m.procedure_id, m.device, m.state, m.activity_id) for m in members],
                policy=policy,
                created_by=requested_by,
            )
            self._next_id += 1
            listed = ", ".join(f"{m.procedure_id} on {m.device}" for m in group.members)
            how = (
                "stop"
                + (" with abort" if policy.abort else "")
                + (", forced" if policy.force else "")
            )
            group.record(
                now, f"created by {requested_by}: {listed}; halting by {how}", GroupState.ACTIVE
            )
            self._groups[group.id] = group
            self._save(group)
            self._publish(GROUP_CREATED, group)
            self._evict()
            return group.summary()

    def add_member(
        self, group_id: int, spec: MemberSpec, requested_by: str = "unknown"
    ) -> dict[str, Any]:
        with self._lock:
            group = self._find(group_id)
            if group.state is not GroupState.ACTIVE:
                raise StateConflict(
                    f"group {group_id} is {group.state}: members join ACTIVE groups"
                )
            if group.member(spec.procedure_id) is not None:
                raise InvalidRequest(
                    f"procedure {spec.procedure_id} is already in group {group_id}"
                )
            if len(group.members) >= MAX_MEMBERS:
                raise InvalidRequest(f"a group has at most {MAX_MEMBERS} members")
            self._check_linkable(spec)
            group.members.append(
                Member(spec.procedure_id, spec.device, spec.state, spec.activity_id)
            )
            group.record(
                self._clock(), f"{requested_by} added {spec.procedure_id} on {spec.device}"
            )
            self._changed(group, GROUP_MEMBER, procedure_id=spec.procedure_id)
            return group.summary()

    def disband(self, group_id: int, requested_by: str = "unknown") -> dict[str, Any]:
        """Unlink the members (they carry on independently); a finished group is refused."""
        with self._lock:
            group = self._find(group_id)
            if group.state.is_final:
                raise StateConflict(f"group {group_id} is already {group.state}")
            self._transition(group, GroupState.DISBANDED, f"disbanded by {requested_by}")
            return group.summary()

    # -- observations -----------------------------------------------------------------------------
    def observe(self, procedure_id: int, state: str, when: float | None = None) -> None:
        """A member's procedure is now in ``state`` (from its device's event or a read)."""
        with self._lock:
            group_id = self._group_of(procedure_id)
            if group_id is None:
                return
            group = self._groups[group_id]
            member = group.member(procedure_id)
            if member is None or member.ended or member.state == state:
                return
            member.state = state
            if state not in ENDED:
                self._save(group)  # RUNNING, PAUSED...: shown, not an event of the group
                return
            when = when or self._clock()
            if member.halt_requested is not None:
                took = max(0.0, when - member.halt_requested) * 1000
                member.halt_outcome = f"{state} in {took:.0f} ms"
                group.record(
                    when, f"halted {procedure_id} on {member.device}: {member.halt_outcome}"
                )
                self._changed(group, GROUP_MEMBER, procedure_id=procedure_id)
                self._settle(group)
            elif state in BAD_END and group.state is GroupState.ACTIVE:
                self._start_halting(
                    group, f"member {procedure_id} on {member.device} {state}", when
                )
            elif state in NORMAL_END and all(m.state in NORMAL_END for m in group.members):
                group.record(when, f"member {procedure_id} on {member.device} {state}")
                self._transition(group, GroupState.COMPLETE, "every member COMPLETE")
            else:
                group.record(when, f"member {procedure_id} on {member.device} {state}")
                self._changed(group, GROUP_MEMBER, procedure_id=procedure_id)
                self._settle(group)

    def device_unreachable(self, device: str, detail: str = "") -> None:
        """``device`` cannot be reached: its unfinished members are lost (UNKNOWN)."""
        with self._lock:
            now = self._clock()
            for group in list(self._groups.values()):
                lost = [m for m in group.members if m.device == device and not m.settled]
                if not group.state.watching or not lost:
                    continue
                reason = f"device {device} unreachable" + (f" ({detail})" if detail else "")
                for member in lost:
                    member.state = "UNKNOWN"
                    if member.halt_requested is not None:
                        member.halt_outcome = "lost: device unreachable"
                if group.state is GroupState.ACTIVE:
                    ids = ", ".join(str(m.procedure_id) for m in lost)
                    self._start_halting(group, f"{reason}: member {ids} lost", now)
                else:
                    group.record(now, reason)
                    self._changed(group, GROUP_MEMBER)
                    self._settle(group)

    def halt_refused(self, group_id: int, procedure_id: int, message: str) -> None:
        """The stop of a halted member was refused or could not be sent (``message`` says
        why); the adapter reads the member's state next and reports it with :meth:`observe`."""
        with self._lock:
            group = self._groups.get(group_id)
            member = group.member(procedure_id) if group else None
            if group is None or member is None or member.settled:
                return
            group.record(self._clock(), f"stop of {procedure_id} on {member.device}: {message}")
            self._changed(group, GROUP_MEMBER, procedure_id=procedure_id)

    def member_missing(self, procedure_id: int) -> None:
        """A member's device no longer knows it (out of its history window): its end was not
        seen, so it counts as UNKNOWN."""
        self.observe(procedure_id, "UNKNOWN")

    def check_deadlines(self) -> None:
        """HALTED once a halting group has waited ``halt_timeout`` for its members."""
        with self._lock:
            now = self._clock()
            for group in list(self._groups.values()):
                if group.state is not GroupState.HALTING or group.halting_since is None:
                    continue
                if now - group.halting_since < self._halt_timeout:
                    continue
                pending = [m for m in group.members if not m.settled]
                for member in pending:
                    member.halt_outcome = f"not confirmed within {self._halt_timeout:.0f} s"
                ids = ", ".join(f"{m.procedure_id} ({m.state})" for m in pending)
                self._transition(
                    group, GroupState.HALTED, f"gave up waiting for {ids} after "
                    f"{self._halt_timeout:.0f} s",
                )  # fmt: skip

    def reconcile(self) -> list[HaltOrder]:
        """Halts a halting group still owes (after a restart: orders sent before the crash
        may not have arrived); the orders are handed to ``halt`` again and returned."""
        orders = []
        with self._lock:
            for group in self._groups.values():
                if group.state is GroupState.HALTING:
                    for member in group.members:
                        if member.halt_requested is not None and not member.settled:
                            orders.append(self._order(group, member))
                            self._halt(orders[-1])
                    self._settle(group)
        return orders

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    # -- internals (lock held) ------------------------------------------------------------------
    def _find(self, group_id: Any) -> Group:
        try:
            return self._groups[int(group_id)]
        except (KeyError, TypeError, ValueError):
            raise GroupNotFound(group_id) from None

    def _group_of(self, procedure_id: int) -> int | None:
        for group in self._groups.values():
            if group.state.watching and group.member(procedure_id) is not None:
                return group.id
        return None

    def _check_linkable(self, spec: MemberSpec) -> None:
        if spec.state in ENDED:
            raise StateConflict(
                f"procedure {spec.procedure_id} on {spec.device} has already finished "
                f"({spec.state}): only unfinished procedures can be linked"
            )
        other = self._group_of(spec.procedure_id)
        if other is not None:
            raise StateConflict(
                f"procedure {spec.procedure_id} is already in group {other} "
                f"({self._groups[other].state}); disband it first"
            )

    def _start_halting(self, group: Group, reason: str, when: float) -> None:
        group.halting_since = self._clock()
        group.record(when, reason, GroupState.HALTING)
        for member in group.members:
            if not member.settled:
                member.halt_requested = self._clock()
                self._halt(self._order(group, member))
        self._changed(group, GROUP_STATECHANGE, previous_state="ACTIVE", new_state="HALTING")
        self._settle(group)

    def _order(self, group: Group, member: Member) -> HaltOrder:
        return HaltOrder(group.id, member.procedure_id, member.device, group.policy,
                         f"group:{group.id}")  # fmt: skip

    def _settle(self, group: Group) -> None:
        if group.state is GroupState.HALTING and all(m.settled for m in group.members):
            halted = [m for m in group.members if m.halt_requested is not None]
            self._transition(
                group, GroupState.HALTED,
                f"halted {len(halted)} member{'s' if len(halted) != 1 else ''}",
            )  # fmt: skip

    def _transition(self, group: Group, state: GroupState, reason: str) -> None:
        previous = group.state
        group.record(self._clock(), reason, state)
        self._changed(group, GROUP_STATECHANGE, previous_state=str(previous), new_state=str(state))
        if state.is_final:
            self._evict()

    def _changed(self, group: Group, topic: str, **payload: Any) -> None:
        self._save(group)
        self._publish(topic, group, **payload)

    def _publish(self, topic: str, group: Group, **payload: Any) -> None:
        last = group.history[-1]
        self.events.publish(
            topic,
            self._name,
            {"group_id": group.id, "reason": last["reason"], **payload, "group": group.summary()},
            last["timestamp"],
        )

    def _save(self, group: Group) -> None:
        if self._store is not None:
            try:
                self._store.save(group)
            except Exception:  # a full disk must not stop the halting: it is logged
                LOGGER.exception("cannot save group %s", group.id)

    def _evict(self) -> None:
        finished = sorted(g.id for g in self._groups.values() if g.state.is_final)
        dropped = finished[: max(0, len(finished) - self._history_size)]
        for group_id in dropped:
            del self._groups[group_id]
        if dropped and self._store is not None:
            self._store.delete(dropped)


__all__ = [
    "GROUP_CREATED",
    "GROUP_MEMBER",
    "GROUP_STATECHANGE",
    "GroupCoordinator",
    "GroupNotFound",
    "GroupStore",
]
