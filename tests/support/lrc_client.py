"""A client of the SKA long-running-command protocol, written the way SKA clients use it.

It follows ska-tango-base's ``invoke_lrc``: subscribe first (v2: ``_lrcEvent``; v1:
``longRunningCommandStatus``, ``...Progress`` and ``...Result``), then call the command, keep
only events about the returned command id, and stop at a final status. Unlike ``invoke_lrc``
it keeps the Tango subscriptions between commands (see :mod:`.tango_events` for why). Tests use it to prove
an SKA client sees status, progress and the final ``[ResultCode, message]`` of OET commands.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import tango

from ska_oso_oet.tango.ska import ResultCode, TaskStatus

from .tango_events import attribute_of, hub_for

FINAL = {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.ABORTED, TaskStatus.REJECTED}
V1_ATTRIBUTES = (
    "longRunningCommandStatus",
    "longRunningCommandProgress",
    "longRunningCommandResult",
)


@dataclass
class LrcOutcome:
    command_id: str
    result_code: ResultCode
    statuses: list[TaskStatus] = field(default_factory=list)
    result: list[Any] | None = None
    progress: list[int] = field(default_factory=list)
    extra_keys: set[str] = field(default_factory=set)
    #: v1: the result arrived before the final status (a v1 client stops at the final status)
    result_before_final: bool = False


class LrcClient:
    """Invokes one long-running command and waits for its end."""

    def __init__(self, proxy: tango.DeviceProxy, protocol: int = 2):
        self.proxy = proxy
        self.protocol = protocol
        self._changed = threading.Condition()
        self._events: list[tuple[str, Any]] = []

    def _on_event(self, event: tango.EventData) -> None:
        if event.err or event.attr_value is None:
            return
        name = attribute_of(event)
        with self._changed:
            self._events.append((name, event.attr_value.value))
            self._changed.notify_all()

    def invoke(self, command: str, argument: Any = None, timeout: float = 30.0) -> LrcOutcome:
        """Call ``command`` and block until it reaches a final status (or raise)."""
        attributes = ("_lrcEvent",) if self.protocol == 2 else V1_ATTRIBUTES
        hub = hub_for(self.proxy)  # shared, long-lived subscriptions (see tango_events)
        for name in attributes:
            hub.add(name, self._on_event)
        try:
            args = () if argument is None else (argument,)
            (code,), (command_id,) = self.proxy.command_inout(command, *args)
            outcome = LrcOutcome(command_id, ResultCode(code))
            if outcome.result_code not in (ResultCode.QUEUED, ResultCode.STARTED):
                return outcome
            with self._changed:
                done = self._changed.wait_for(lambda: self._digest(outcome), timeout)
            if not done:
                raise AssertionError(
                    f"{command} {command_id} not finished in {timeout} s: {outcome}"
                )
            return outcome
        finally:
            for name in attributes:
                hub.remove(name, self._on_event)

    def _digest(self, outcome: LrcOutcome) -> bool:
        """Re-read what arrived about our id; True once a final status (and result) is in."""
        outcome.statuses, outcome.progress, outcome.result = [], [], None
        outcome.result_before_final = False
        for name, value in self._events:
            values = list(value or [])
            if outcome.command_id not in values:
                continue  # other commands' events, and the initial value at subscription
            item = values[values.index(outcome.command_id) + 1]
            if name == "_lrcevent":
                data = json.loads(item)
                outcome.extra_keys |= set(data) - {"status", "progress", "result"}
                if "status" in data:
                    outcome.statuses.append(TaskStatus(data["status"]))
                if "progress" in data:
                    outcome.progress.append(int(data["progress"]))
                if "result" in data:
                    outcome.result = data["result"]
            elif name == "longrunningcommandstatus":
                status = TaskStatus[item]
                if (
                    status in FINAL
                    and outcome.result is not None
                    and outcome.statuses[-1:] != [status]
                ):
                    outcome.result_before_final = True
                if not outcome.statuses or outcome.statuses[-1] != status:
                    outcome.statuses.append(status)
            elif name == "longrunningcommandprogress":
                outcome.progress.append(int(item))
            elif name == "longrunningcommandresult":
                outcome.result = json.loads(item)
        return (
            bool(outcome.statuses) and outcome.statuses[-1] in FINAL and outcome.result is not None
        )


def expect_rejected(proxy: tango.DeviceProxy, command: str, argument: Any = None) -> str:
    """Call a long-running command that must be REJECTED; returns its "<reason>: <text>"."""
    args = () if argument is None else (argument,)
    (code,), (message,) = proxy.command_inout(command, *args)
    assert ResultCode(code) == ResultCode.REJECTED, (command, argument, code, message)
    assert message.startswith("OET_") and ": " in message, message
    return message
