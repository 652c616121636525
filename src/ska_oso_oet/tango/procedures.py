"""What the device publishes about procedures, and when its commands are done.

:class:`ProcedureView` lives on the device's event thread. It turns the engine's summaries
into attribute values, remembers which states each procedure has been seen in (from the
events, in order), and decides when a long-running command is finished:

* ``Prepare`` when its procedure has been READY (FAILED -> FAILED, STOPPED -> ABORTED);
* ``Start`` when ``main`` has returned (COMPLETE; FAILED -> FAILED, STOPPED -> ABORTED);
* ``Stop``/``Abort`` when the stopped procedure has finished, with the summaries of it and of
  the abort procedure;
* ``AbortScript`` (an ``Abort`` with nothing to stop) when the abort procedure has ended, like
  ``Start`` but with a JSON list, as every ``Abort`` result;
* ``StopAll`` (``Off``) when every procedure it stopped has finished.
* ``Pause`` when its procedure is PAUSED, ``Resume`` when it is RUNNING again (ABORTED when it
  ends first).

Completion is decided from events the device has already published, so a client always sees
the ``lastEvent`` that justifies a result before the result itself.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..events import Event, dumps
from ..vocabulary import FINAL_STATES, HOLDING_STATES, ProcedureState
from .ska import ResultCode, TaskStatus

Lookup = Callable[[int], dict[str, Any] | None]
Completion = tuple[str, TaskStatus, ResultCode, str]
_MAX_REMEMBERED_COMMANDS = 1000


@dataclass
class _Seen:
    states: set[str] = field(default_factory=set)
    summary: dict[str, Any] | None = None
    transitions: int = 0
    #: Every state seen, in order (Pause/Resume complete on a state reached after them).
    history: list[str] = field(default_factory=list)


@dataclass
class _Tracked:
    kind: str  # Prepare, Start, Stop, AbortScript, StopAll, Pause or Resume
    procedure_id: int
    extra: list[int]
    #: Index in _Seen.history from which Pause/Resume look for their goal (the state the
    #: procedure was in when the command was tracked counts).
    since: int = 0


def as_of(summary: dict[str, Any], transitions: int, state: str) -> dict[str, Any]:
    """``summary`` as it was after its ``transitions``-th state change (into ``state``).

    Every transition appends one ``process_states`` entry (after the first, CREATING) and
    publishes one statechange event, so the event count locates the entry exactly. Used when
    the engine is already further on than the event being published.
    """
    states = summary["history"]["process_states"]
    if len(states) - 1 <= transitions or states[transitions][0] != state:
        return summary  # not ahead, or a history this device did not see from the start
    rewound = copy.deepcopy(summary)
    rewound["history"]["process_states"] = states[: transitions + 1]
    rewound["state"] = state
    return rewound


class ProcedureView:
    """Procedure attributes and LRC completion rules of one device (event thread only)."""

    ATTRIBUTES = ("procedures", "runningProcedureId", "procedureIds", "procedureStates")
    MAX_LISTED = 1024

    def __init__(self) -> None:
        self.procedures_json = "[]"
        self.running_id = 0
        self.ids: list[int] = []
        self.states: list[str] = []
        self._seen: dict[int, _Seen] = {}
        self._tracked: dict[str, _Tracked] = {}
        self._procedure_of: OrderedDict[str, int] = OrderedDict()
        self._cache: dict[int, dict[str, Any]] = {}
        #: id -> (the cached summary, its JSON): see _encode
        self._encoded: dict[int, tuple[dict[str, Any], str]] = {}
        self._seeded = False

    # ----- attributes -----------------------------------------------------------------------
    @property
    def seeded(self) -> bool:
        """True once :meth:`update` has had the engine's summaries (after that, ids suffice)."""
        return self._seeded

    def update(self, summaries: list[dict[str, Any]]) -> list[tuple[str, Any]]:
        """New attribute values; returns the changed ones.

        ``summaries`` (the engine's, now) decide which procedures are listed: the history
        window may have dropped some. Their content comes from the events published so far,
        so the attributes never run ahead of ``lastEvent`` (a procedure READY and RUNNING a
        moment later still shows READY first).
        """
        if not self._seeded:  # history recovered by the engine before this device listened
            self._cache = {s["id"]: s for s in summaries}
            self._seeded = True
        return self.update_listed([s["id"] for s in summaries])

    def update_listed(self, procedure_ids: Iterable[int]) -> list[tuple[str, Any]]:
        """:meth:`update` once seeded: only the ids of the engine's procedures are needed
        (building every summary, as :meth:`update` needs, costs the event thread far more)."""
        current_ids = set(procedure_ids)
        for pid in [p for p in self._cache if p not in current_ids]:
            del self._cache[pid]
        ordered = [self._cache[pid] for pid in sorted(self._cache)]
        listed = ordered[-self.MAX_LISTED :]
        values = {
            "procedures": self._encode(ordered),
            # PAUSED holds the subarray as RUNNING does
            "runningProcedureId": next(
                (s["id"] for s in ordered if s["state"] in HOLDING_STATES), 0
            ),
            "procedureIds": [s["id"] for s in listed],
            "procedureStates": [s["state"] for s in listed],
        }
        current = {
            "procedures": self.procedures_json,
            "runningProcedureId": self.running_id,
            "procedureIds": self.ids,
            "procedureStates": self.states,
        }
        changed = [(name, value) for name, value in values.items() if current[name] != value]
        self.procedures_json = values["procedures"]
        self.running_id = values["runningProcedureId"]
        self.ids = values["procedureIds"]
        self.states = values["procedureStates"]
        known = current_ids | {t.procedure_id for t in self._tracked.values()}
        for pid in [p for p in self._seen if p not in known]:
            del self._seen[pid]
        return changed

    def _encode(self, ordered: list[dict[str, Any]]) -> str:
        """``dumps(ordered)``, re-encoding only the summaries that changed.

        A summary in the cache is replaced, never modified, when its procedure changes, so
        its identity says whether its encoding is still good; the compact encoding of a list
        is its items' encodings joined by commas. Encoding the whole list on every
        lifecycle event was a third of the event thread's work for a state change.
        """
        encoded: dict[int, tuple[dict[str, Any], str]] = {}
        parts = []
        for summary in ordered:
            known = self._encoded.get(summary["id"])
            text = known[1] if known is not None and known[0] is summary else dumps(summary)
            encoded[summary["id"]] = (summary, text)
            parts.append(text)
        self._encoded = encoded
        return f"[{','.join(parts)}]"

    # ----- events and commands --------------------------------------------------------------
    def observe(self, event: Event, lookup: Lookup) -> None:
        """Note what a procedure.lifecycle event says about its procedure."""
        pid = event.payload.get("procedure_id")
        if not isinstance(pid, int):
            return
        seen = self._seen.setdefault(pid, _Seen())
        if event.topic.endswith(".created"):
            seen.states.add("CREATING")
            seen.history.append("CREATING")
        new_state = event.payload.get("new_state")
        result = event.payload.get("result")
        if isinstance(new_state, str):
            seen.states.add(new_state)
            seen.history.append(new_state)
            seen.transitions += 1
            carried = event.payload.get("summary")
            if isinstance(carried, dict):  # the summary as of this very change
                self._cache[pid] = carried
            else:  # an engine that does not send it: rewind the current one
                summary = lookup(pid) or self._cache.get(pid)
                if summary is not None:
                    self._cache[pid] = as_of(summary, seen.transitions, new_state)
        elif isinstance(result, dict):
            self._cache[pid] = result
        elif event.topic.endswith(".stacktrace") and pid in self._cache:
            summary = copy.deepcopy(self._cache[pid])
            summary["history"]["stacktrace"] = event.payload.get("stacktrace")
            self._cache[pid] = summary
        if isinstance(result, dict):
            seen.summary = result
            command_id = result.get("command_id")
            if isinstance(command_id, str):
                self._remember(command_id, pid)

    def track(
        self, command_id: str, kind: str, procedure_id: int, extra: list[int], lookup: Lookup
    ) -> None:
        """Follow a command until its procedure gets where the command leads."""
        self._remember(command_id, procedure_id)
        if procedure_id not in self._seen:
            # not observed since this device started (e.g. recovered from the store)
            summary = lookup(procedure_id)
            seen = self._seen.setdefault(procedure_id, _Seen())
            if summary is not None:
                seen.summary = summary
                seen.history = [s for s, _ in summary["history"]["process_states"]]
                seen.states.update(seen.history)
        since = max(0, len(self._seen[procedure_id].history) - 1)
        self._tracked[command_id] = _Tracked(kind, procedure_id, list(extra), since)

    def command_of(self, procedure_id: int, kind: str) -> str | None:
        """The id of the tracked ``kind`` command of ``procedure_id`` (e.g. its Start)."""
        return next(
            (
                command_id
                for command_id, tracked in self._tracked.items()
                if tracked.procedure_id == procedure_id and tracked.kind == kind
            ),
            None,
        )

    def completions(self, lookup: Lookup) -> list[Completion]:
        """The commands that are finished now, with their final status and result."""
        done: list[Completion] = []
        for command_id, tracked in list(self._tracked.items()):
            outcome = self._outcome(tracked, lookup)
            if outcome is not None:
                del self._tracked[command_id]
                done.append((command_id, *outcome))
        return done

    def state_of(self, procedure_id: int) -> str | None:
        """The latest state this view has seen of ``procedure_id``."""
        seen = self._seen.get(procedure_id)
        return seen.history[-1] if seen and seen.history else None

    def untrack(self, command_id: str) -> None:
        self._tracked.pop(command_id, None)

    def procedure_of(self, command_id: str) -> int | None:
        return self._procedure_of.get(command_id)

    # ----- rules ----------------------------------------------------------------------------
    def _outcome(
        self, tracked: _Tracked, lookup: Lookup
    ) -> tuple[TaskStatus, ResultCode, str] | None:
        seen = self._seen.get(tracked.procedure_id, _Seen())
        states = seen.states
        if tracked.kind in ("Stop", "StopAll"):
            if not states & FINAL_STATES:
                return None
            if tracked.kind == "StopAll" and not all(
                self._seen.get(pid, _Seen()).states & FINAL_STATES for pid in tracked.extra
            ):
                return None
            summaries = [
                self._summary(pid, lookup) for pid in [tracked.procedure_id, *tracked.extra]
            ]
            return TaskStatus.COMPLETED, ResultCode.OK, dumps([s for s in summaries if s])
        if tracked.kind in ("Pause", "Resume"):
            want = "PAUSED" if tracked.kind == "Pause" else "RUNNING"
            after = seen.history[tracked.since :]
            if want in after:
                summary = self._summary(tracked.procedure_id, lookup)
                return TaskStatus.COMPLETED, ResultCode.OK, dumps(summary)
            if set(after) & FINAL_STATES:
                return (
                    TaskStatus.ABORTED,
                    ResultCode.ABORTED,
                    f"procedure {tracked.procedure_id} ended ({after[-1]}) before it was "
                    + ("paused" if tracked.kind == "Pause" else "resumed"),
                )
            return None
        goal = ProcedureState.READY if tracked.kind == "Prepare" else ProcedureState.COMPLETE
        if goal in states:
            summary = self._summary(tracked.procedure_id, lookup)
            listed = tracked.kind == "AbortScript"
            return TaskStatus.COMPLETED, ResultCode.OK, dumps([summary] if listed else summary)
        if ProcedureState.FAILED in states:
            summary = self._summary(tracked.procedure_id, lookup) or {}
            stacktrace = (summary.get("history") or {}).get(
                "stacktrace"
            ) or "no stack trace recorded"
            message = f"procedure {tracked.procedure_id} failed:\n{stacktrace}"
            return TaskStatus.FAILED, ResultCode.FAILED, message
        if ProcedureState.STOPPED in states:
            return (
                TaskStatus.ABORTED,
                ResultCode.ABORTED,
                dumps(self._summary(tracked.procedure_id, lookup)),
            )
        return None

    def _summary(self, procedure_id: int, lookup: Lookup) -> dict[str, Any] | None:
        summary = lookup(procedure_id)
        if summary is None:  # evicted from the history window already
            seen = self._seen.get(procedure_id)
            summary = seen.summary if seen else None
        return summary

    def _remember(self, command_id: str, procedure_id: int) -> None:
        self._procedure_of[command_id] = procedure_id
        self._procedure_of.move_to_end(command_id)
        while len(self._procedure_of) > _MAX_REMEMBERED_COMMANDS:
            self._procedure_of.popitem(last=False)
