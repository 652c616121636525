"""The SKA long-running-command (LRC) protocol, versions 1 and 2, without Tango.

:class:`LrcTracker` keeps the life of each command id (STAGING -> IN_PROGRESS -> COMPLETED,
FAILED, ABORTED or REJECTED) and, after every change, hands the device the new values of the
LRC attributes to push, in the order SKA clients rely on:

* v1 (``longRunningCommandStatus/Progress/Result``, ``...IDsInQueue``, ``...sInQueue``,
  ``...InProgress``): flat spectra of ``(id, value)`` pairs. The result comes before the final
  status, because a v1 client stops listening when it sees the final status.
* v2 (``_lrcEvent``): one change event per update, ``[id, json.dumps({"status": int,
  "progress": int, "result": [ResultCode, message], ...timestamps})]``.
* ``lrcQueue``, ``lrcExecuting``, ``lrcFinished``: one JSON object per command, ``{"uid",
  "name", "submitted_time", "started_time", "finished_time", "status": "COMPLETED",
  "result": [0, "..."], "progress"}`` (keys present as they apply; times ISO-8601 UTC).

Finished commands stay in the v1 spectra for ``removal_time`` seconds (10 by default, as in
ska-tango-base) and in ``lrcFinished`` among the newest :data:`LRC_FINISHED_MAX_LENGTH`.
The tracker is not thread-safe by design: the device calls it from its one event thread.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .ska import ResultCode, TaskStatus

#: Longest ``lrcFinished`` (as in ska-tango-base).
LRC_FINISHED_MAX_LENGTH = 100
#: Most commands listed by the v1 spectra; the oldest finished ones are dropped first.
STATUS_QUEUE_SIZE = 64
#: Most commands listed as executing at once (OET runs many Prepares side by side).
MAX_EXECUTING = 32
REMOVAL_TIME = 10.0
PROTOCOL_VERSIONS = (1, 2)
#: ``expires_at`` of a finished command no longer shown by the v1 spectra
_HIDDEN = float("inf")

#: Attribute name -> max_dim_x of the spectrum attributes this module feeds.
SPECTRUM_SIZES = {
    "longRunningCommandsInQueue": STATUS_QUEUE_SIZE,
    "longRunningCommandIDsInQueue": STATUS_QUEUE_SIZE,
    "longRunningCommandStatus": STATUS_QUEUE_SIZE * 2,
    "longRunningCommandInProgress": MAX_EXECUTING,
    "longRunningCommandProgress": MAX_EXECUTING * 2,
    "longRunningCommandResult": 2,
    "lrcQueue": STATUS_QUEUE_SIZE,
    "lrcExecuting": MAX_EXECUTING,
    "lrcFinished": LRC_FINISHED_MAX_LENGTH,
    "_lrcEvent": 2,
}

Update = tuple[str, Any]
Publisher = Callable[[list[Update]], None]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class _Command:
    name: str
    status: TaskStatus
    submitted_time: str
    started_time: str | None = None
    finished_time: str | None = None
    progress: int | None = None
    result: tuple[int, str] | None = None
    #: monotonic time after which a finished command leaves the v1 spectra
    expires_at: float | None = None
    #: the command's ``lrcFinished`` entry, encoded once when it finishes (it never changes)
    finished_info: str | None = None

    def info(self, uid: str, keys: tuple[str, ...]) -> str:
        data: dict[str, Any] = {"uid": uid, "name": self.name}
        for key in keys:
            value = getattr(self, key)
            if value is None:
                continue
            data[key] = value.name if isinstance(value, TaskStatus) else value
        return json.dumps(data)


_QUEUE_KEYS = ("submitted_time",)
_EXECUTING_KEYS = ("submitted_time", "started_time", "progress")
_FINISHED_KEYS = ("submitted_time", "started_time", "finished_time", "status", "result")


class LrcTracker:
    """Tracks long-running commands and computes the LRC attribute values.

    :param publish: called with the ordered ``[(attribute, value), ...]`` to push after each
        change; the device pushes change (and archive) events for them in that order.
    :param clock: monotonic clock, replaceable in tests.
    """

    def __init__(
        self,
        publish: Publisher,
        removal_time: float = REMOVAL_TIME,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._publish = publish
        self._removal_time = removal_time
        self._clock = clock
        self._commands: dict[str, _Command] = {}
        #: The commands not finished yet (in submission order): the device keeps up to
        #: LRC_FINISHED_MAX_LENGTH finished ones, and every update of a new command used to
        #: walk them all several times (milliseconds of the event thread per command).
        self._active: dict[str, _Command] = {}
        self._finished_order: list[str] = []
        #: (expires_at, id) of finished commands, in the order they expire
        self._expiries: deque[tuple[float, str]] = deque()
        self.last_result: tuple[str, str] = ("", "")
        #: v2 list values last pushed: an unchanged list is not pushed again
        self._pushed_v2: dict[str, list[str]] = {}

    # ----- commands -------------------------------------------------------------------------
    def new_command(self, command_id: str, name: str) -> None:
        """Record a new command in STAGING."""
        command = _Command(name=name, status=TaskStatus.STAGING, submitted_time=_now_iso())
        self._commands[command_id] = command
        self._active[command_id] = command
        event = {
            "name": name,
            "status": int(TaskStatus.STAGING),
            "submitted_time": command.submitted_time,
        }
        listed = self._listed()
        self._publish(
            [
                *self._v1_queue_updates(listed),
                ("longRunningCommandStatus", _statuses(listed)),
                ("_lrcEvent", [command_id, json.dumps(event)]),
            ]
        )

    def update(
        self,
        command_id: str,
        status: TaskStatus | None = None,
        progress: int | None = None,
        result: tuple[ResultCode | int, str] | None = None,
    ) -> None:
        """Apply one update (any of status, progress, result) and publish the new values."""
        command = self._commands.get(command_id)
        if command is None or command.status.is_final:
            return
        updates: list[Update] = []
        event: dict[str, Any] = {}
        if status is not None:
            event["status"] = int(status)
            if status == TaskStatus.IN_PROGRESS and command.started_time is None:
                command.started_time = event["started_time"] = _now_iso()
            elif status.is_final:
                command.finished_time = event["finished_time"] = _now_iso()
                command.progress = None
                command.expires_at = self._clock() + self._removal_time
                self._expiries.append((command.expires_at, command_id))
                self._finished_order.append(command_id)
                self._active.pop(command_id, None)
            command.status = status
        if result is not None:
            command.result = (int(result[0]), str(result[1]))
            event["result"] = list(command.result)
            self.last_result = (command_id, json.dumps(list(command.result)))
            updates.append(("longRunningCommandResult", self.last_result))
        if progress is not None:
            command.progress = event["progress"] = int(progress)
            updates.append(("longRunningCommandProgress", self.progresses))
        if status is not None:
            updates.append(("longRunningCommandStatus", _statuses(self._listed())))
            updates.append(("longRunningCommandInProgress", self.in_progress))
            if status.is_final:
                self._prune()
                updates.extend(self._v1_queue_updates())
        finished = status is not None and status.is_final
        if finished:
            command.finished_info = command.info(command_id, _FINISHED_KEYS)
        updates.append(("_lrcEvent", [command_id, json.dumps(event)]))
        updates.extend(self._v2_updates(finished))
        self._publish(updates)

    def status_of(self, command_id: str) -> TaskStatus:
        """Current status (``NOT_FOUND`` for ids never seen or long forgotten)."""
        command = self._commands.get(command_id)
        return command.status if command is not None else TaskStatus.NOT_FOUND

    def expire(self) -> None:
        """Drop finished commands older than the removal time from the v1 spectra."""
        now = self._clock()
        expired = False
        # Finished commands expire in the order they finished (one removal time each), so
        # only the due ones are looked at: this runs every time the event thread goes idle.
        while self._expiries and self._expiries[0][0] <= now:
            at, cid = self._expiries.popleft()
            command = self._commands.get(cid)
            if command is not None and command.expires_at == at:  # not hidden or forgotten
                command.expires_at = _HIDDEN  # hidden from v1, kept for lrcFinished
                expired = True
        if not expired:
            return
        listed = self._listed()
        self._publish(
            [*self._v1_queue_updates(listed), ("longRunningCommandStatus", _statuses(listed))]
        )

    @property
    def next_expiry(self) -> float | None:
        times = [
            c.expires_at for c in self._commands.values() if c.expires_at not in (None, _HIDDEN)
        ]
        return min(times) if times else None

    # ----- attribute values -----------------------------------------------------------------
    def _listed(self) -> list[tuple[str, _Command]]:
        """Commands shown by the v1 spectra: finished first (oldest first), then the others."""
        commands = self._commands
        finished = [
            (cid, commands[cid])
            for cid in self._finished_order
            if commands[cid].expires_at != _HIDDEN
        ]
        return (finished + list(self._active.items()))[-STATUS_QUEUE_SIZE:]

    @property
    def ids_in_queue(self) -> list[str]:
        return [cid for cid, _ in self._listed()]

    @property
    def names_in_queue(self) -> list[str]:
        return [c.name for _, c in self._listed()]

    @property
    def statuses(self) -> list[str]:
        return _statuses(self._listed())

    @property
    def progresses(self) -> list[str]:
        executing = self._executing()[:MAX_EXECUTING]
        return [
            item
            for cid, c in executing
            if c.progress is not None
            for item in (cid, str(c.progress))
        ]

    @property
    def in_progress(self) -> list[str]:
        return [c.name for _, c in self._executing()[:MAX_EXECUTING]]

    def _executing(self) -> list[tuple[str, _Command]]:
        return [(cid, c) for cid, c in self._active.items() if c.status == TaskStatus.IN_PROGRESS]

    @property
    def lrc_queue(self) -> list[str]:
        return [
            c.info(cid, _QUEUE_KEYS)
            for cid, c in self._active.items()
            if c.status in (TaskStatus.STAGING, TaskStatus.QUEUED)
        ][:STATUS_QUEUE_SIZE]

    @property
    def lrc_executing(self) -> list[str]:
        return [c.info(cid, _EXECUTING_KEYS) for cid, c in self._executing()[:MAX_EXECUTING]]

    @property
    def lrc_finished(self) -> list[str]:
        return [
            self._commands[cid].finished_info or self._commands[cid].info(cid, _FINISHED_KEYS)
            for cid in self._finished_order[-LRC_FINISHED_MAX_LENGTH:]
        ]

    def _v1_queue_updates(self, listed: list[tuple[str, _Command]] | None = None) -> list[Update]:
        listed = self._listed() if listed is None else listed
        return [
            ("longRunningCommandsInQueue", [c.name for _, c in listed]),
            ("longRunningCommandIDsInQueue", [cid for cid, _ in listed]),
        ]

    def _v2_updates(self, finished_changed: bool) -> list[Update]:
        """The v2 lists that changed. ``lrcFinished`` (up to 100 entries holding procedure
        summaries) is only rebuilt when a command has just finished: re-sending it on every
        status update cost milliseconds on each command's path."""
        values = {"lrcQueue": self.lrc_queue, "lrcExecuting": self.lrc_executing}
        if finished_changed:
            values["lrcFinished"] = self.lrc_finished
        updates: list[Update] = []
        for name, value in values.items():
            if self._pushed_v2.get(name) != value:
                self._pushed_v2[name] = value
                updates.append((name, value))
        return updates

    def _prune(self) -> None:
        """Keep the v1 spectra and ``lrcFinished`` within their sizes: forget the oldest
        finished commands first (active ones are never dropped)."""
        shown = [cid for cid in self._finished_order if self._commands[cid].expires_at != _HIDDEN]
        active = len(self._active)
        for cid in shown[: max(0, len(shown) + active - STATUS_QUEUE_SIZE)]:
            self._commands[cid].expires_at = _HIDDEN
        while len(self._finished_order) > LRC_FINISHED_MAX_LENGTH:
            forgotten = self._finished_order.pop(0)
            self._commands.pop(forgotten, None)


def _statuses(listed: list[tuple[str, _Command]]) -> list[str]:
    """``longRunningCommandStatus``: id, status name pairs of the listed commands."""
    return [item for cid, c in listed for item in (cid, c.status.name)]
