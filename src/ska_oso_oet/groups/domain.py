"""Linked observation groups: what a group is, its states and its history (plain data).

A group links procedures of several subarrays: when one member ends badly (FAILED, STOPPED by
somebody else than the group, UNKNOWN, or its device cannot be reached any more), every other
member that has not finished is halted (stopped; with its subarray's abort script when the
group's policy says ``abort``; killed at once with ``force``). A member that ends COMPLETE
ended normally; when every member did, the group is COMPLETE.

States::

    ACTIVE --member ended badly--> HALTING --every other member finished--> HALTED
       |  \\--every member COMPLETE--> COMPLETE
       \\--Disband--> DISBANDED (the members are left alone)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from ..vocabulary import ProcedureState


class GroupState(enum.StrEnum):
    ACTIVE = "ACTIVE"
    HALTING = "HALTING"
    HALTED = "HALTED"
    COMPLETE = "COMPLETE"
    DISBANDED = "DISBANDED"

    @property
    def is_final(self) -> bool:
        return self in (GroupState.HALTED, GroupState.COMPLETE, GroupState.DISBANDED)

    @property
    def watching(self) -> bool:
        """The group still follows its members (ACTIVE or HALTING)."""
        return not self.is_final


#: Member states that end a member normally / badly. UNKNOWN is what a device reports for a
#: procedure whose fate it lost (e.g. active when its server crashed), and what the group
#: records for a member whose device cannot be reached.
NORMAL_END = frozenset({ProcedureState.COMPLETE})
BAD_END = frozenset({ProcedureState.FAILED, ProcedureState.STOPPED, ProcedureState.UNKNOWN})
ENDED = NORMAL_END | BAD_END


@dataclass(frozen=True)
class HaltPolicy:
    """How the other members are halted: ``abort`` runs their subarray's abort script after
    the stop, ``force`` kills the script at once instead of giving it the stop grace."""

    abort: bool = False
    force: bool = False

    def to_dict(self) -> dict[str, bool]:
        return {"abort": self.abort, "force": self.force}


@dataclass
class Member:
    """One procedure of a group, as the group last saw it."""

    procedure_id: int
    device: str
    state: str
    activity_id: int | None = None
    #: Epoch seconds at which the group asked its device to stop it (None: never asked).
    halt_requested: float | None = None
    #: How its halt ended, in words ("STOPPED in 12 ms", "lost: device unreachable").
    halt_outcome: str | None = None

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    @property
    def settled(self) -> bool:
        """Nothing more to wait for: it ended, or its halt has an outcome (lost, refused)."""
        return self.ended or self.halt_outcome is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "procedure_id": self.procedure_id,
            "activity_id": self.activity_id,
            "device": self.device,
            "state": self.state,
            "halted": self.halt_requested is not None,
            "halt_outcome": self.halt_outcome,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Member:
        return cls(
            procedure_id=int(data["procedure_id"]),
            device=str(data["device"]),
            state=str(data["state"]),
            activity_id=data.get("activity_id"),
            halt_requested=data.get("halt_requested"),
            halt_outcome=data.get("halt_outcome"),
        )


@dataclass
class Group:
    id: int
    name: str
    members: list[Member]
    policy: HaltPolicy
    created_by: str
    #: ``{"timestamp", "state", "reason"}`` entries, oldest first; the first one is creation.
    history: list[dict[str, Any]] = field(default_factory=list)
    #: Epoch seconds of the start of halting (None until then).
    halting_since: float | None = None

    @property
    def state(self) -> GroupState:
        return GroupState(self.history[-1]["state"])

    def member(self, procedure_id: int) -> Member | None:
        return next((m for m in self.members if m.procedure_id == procedure_id), None)

    def record(self, timestamp: float, reason: str, state: GroupState | None = None) -> None:
        self.history.append(
            {"timestamp": timestamp, "state": str(state or self.state), "reason": reason}
        )

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "state": str(self.state),
            "policy": self.policy.to_dict(),
            "members": [m.to_dict() for m in self.members],
            "created_by": self.created_by,
            "history": [dict(entry) for entry in self.history],
        }

    def to_record(self) -> dict[str, Any]:
        """The summary plus what only the store needs (halt request times)."""
        record = self.summary()
        record["halting_since"] = self.halting_since
        for stored, member in zip(record["members"], self.members, strict=True):
            stored["halt_requested"] = member.halt_requested
        return record

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Group:
        policy = data.get("policy") or {}
        group = cls(
            id=int(data["id"]),
            name=str(data.get("name") or ""),
            members=[Member.from_dict(m) for m in data["members"]],
            policy=HaltPolicy(bool(policy.get("abort")), bool(policy.get("force"))),
            created_by=str(data.get("created_by") or ""),
            history=[dict(entry) for entry in data["history"]],
            halting_since=data.get("halting_since"),
        )
        GroupState(group.history[-1]["state"])  # a record with an unknown state is refused
        return group


@dataclass(frozen=True)
class MemberSpec:
    """A procedure to link, as the device found it: its device and its current state."""

    procedure_id: int
    device: str
    state: str
    activity_id: int | None = None


@dataclass(frozen=True)
class HaltOrder:
    """Stop ``procedure_id`` on ``device`` on behalf of group ``group_id``."""

    group_id: int
    procedure_id: int
    device: str
    policy: HaltPolicy
    requested_by: str
