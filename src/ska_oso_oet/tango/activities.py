"""What the device publishes about activities, and when ``RunActivity`` is done.

:class:`ActivityView` lives on the device's event thread, like
:class:`~.procedures.ProcedureView`. It keeps the activity summaries carried by the
``activity.lifecycle.*`` events the device has published, so the ``activities`` attribute
never runs ahead of ``lastEvent``, and it completes ``RunActivity`` commands:

* at PREPARED when the activity was requested with ``prepare_only``;
* otherwise at the end of the activity's script: COMPLETE -> [OK, summary],
  FAILED -> [FAILED, reason with the procedure's stack trace], STOPPED -> [ABORTED, summary].

An activity that reaches a final state before PREPARED (a failed preparation) completes a
``prepare_only`` command in the same way.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..activity.domain import ActivityState
from ..events import ACTIVITY_PREFIX, Event, dumps
from .ska import ResultCode, TaskStatus

Lookup = Callable[[int], dict[str, Any] | None]
Completion = tuple[str, TaskStatus, ResultCode, str]
_MAX_REMEMBERED_COMMANDS = 1000


class ActivityView:
    """The ``activities`` attribute and ``RunActivity`` completion of one device."""

    def __init__(self) -> None:
        self.activities_json = "[]"
        self._cache: dict[int, dict[str, Any]] = {}
        self._seeded = False
        #: command id -> latest published summary of the activity it created
        self._by_command: OrderedDict[str, dict[str, Any]] = OrderedDict()
        #: RunActivity command id -> prepare_only
        self._tracked: dict[str, bool] = {}

    # ----- attribute ------------------------------------------------------------------------
    def update(self, summaries: list[dict[str, Any]]) -> str | None:
        """The new ``activities`` value if it changed, else None.

        ``summaries`` (the service's, now) decide which activities are listed (the history
        window drops old ones); their content is what the published events said.
        """
        current_ids = {s["id"] for s in summaries}
        if not self._seeded:  # history recovered before this device listened
            self._cache = {s["id"]: s for s in summaries}
            self._seeded = True
        for activity_id in [a for a in self._cache if a not in current_ids]:
            del self._cache[activity_id]
        value = dumps([self._cache[a] for a in sorted(self._cache)])
        if value == self.activities_json:
            return None
        self.activities_json = value
        return value

    # ----- events and commands --------------------------------------------------------------
    def observe(self, event: Event) -> bool:
        """Note an ``activity.lifecycle.*`` event; True if it was one."""
        if not event.topic.startswith(ACTIVITY_PREFIX):
            return False
        summary = event.payload.get("result")
        if not isinstance(summary, dict) or not isinstance(summary.get("id"), int):
            return True
        self._cache[summary["id"]] = summary
        command_id = summary.get("command_id")
        if isinstance(command_id, str):
            self._by_command[command_id] = summary
            self._by_command.move_to_end(command_id)
            while len(self._by_command) > _MAX_REMEMBERED_COMMANDS:
                self._by_command.popitem(last=False)
        return True

    def track(self, command_id: str, prepare_only: bool) -> None:
        """Follow a RunActivity command until its activity gets where the request leads."""
        self._tracked[command_id] = prepare_only

    def activity_of(self, command_id: str) -> int | None:
        summary = self._by_command.get(command_id)
        return summary["id"] if summary else None

    def completions(self, procedure_lookup: Lookup) -> list[Completion]:
        """The RunActivity commands finished now, with their final status and result."""
        done: list[Completion] = []
        for command_id, prepare_only in list(self._tracked.items()):
            summary = self._by_command.get(command_id)
            if summary is None:
                continue
            outcome = _outcome(summary, prepare_only, procedure_lookup)
            if outcome is not None:
                del self._tracked[command_id]
                done.append((command_id, *outcome))
        return done


def _outcome(
    summary: dict[str, Any], prepare_only: bool, procedure_lookup: Lookup
) -> tuple[TaskStatus, ResultCode, str] | None:
    state = summary["state"]
    if state == ActivityState.COMPLETE or (prepare_only and state == ActivityState.PREPARED):
        return TaskStatus.COMPLETED, ResultCode.OK, dumps(summary)
    if state == ActivityState.FAILED:
        return TaskStatus.FAILED, ResultCode.FAILED, failure_reason(summary, procedure_lookup)
    if state == ActivityState.STOPPED:
        return TaskStatus.ABORTED, ResultCode.ABORTED, dumps(summary)
    return None


def failure_reason(summary: dict[str, Any], procedure_lookup: Lookup) -> str:
    """A readable reason for a failed activity: its procedure's stack trace when known."""
    pid = summary.get("procedure_id")
    procedure = procedure_lookup(pid) if isinstance(pid, int) else None
    stacktrace = ((procedure or {}).get("history") or {}).get("stacktrace")
    return (
        f"activity {summary['id']} ({summary['activity_name']} of {summary['sbd_id']}) failed: "
        f"procedure {pid} failed:\n{stacktrace or 'no stack trace recorded'}"
    )
