"""The words every layer of the OET shares: procedure states, long-running command result codes
and statuses, and the SKA admin-mode and health-state labels.

They are defined here once and imported by the engine, the Tango device, the REST gateway and
the CLI, so a state or a label cannot drift between layers. The module uses the standard library
only: the clients (gateway, CLI) may import it without pulling in the engine or PyTango, and the
import contract (``pyproject.toml``, ``[tool.importlinter]``) keeps it that way.

Every string and integer value here is an external contract (DESIGN §3, §4, §5): REST bodies,
Tango attribute values, Prometheus labels and the CLI's output spell them exactly like this.
Never rename a member or change a value; a new state is an API change.
"""

from __future__ import annotations

import enum

__all__ = [
    "ACCEPTED_RESULT_CODES",
    "ACTIVE_STATES",
    "COMMAND_ACCEPTING_ADMIN_MODES",
    "FINAL_STATES",
    "FINAL_TASK_STATUSES",
    "HOLDING_STATES",
    "PREPARING_STATES",
    "REFUSED_RESULT_CODES",
    "STARTABLE_STATES",
    "AdminMode",
    "HealthState",
    "ProcedureState",
    "ResultCode",
    "TaskStatus",
    "label_of",
]


class ProcedureState(enum.StrEnum):
    """Lifecycle states of a procedure; the string values are part of the public API."""

    UNKNOWN = "UNKNOWN"
    IDLE = "IDLE"
    CREATING = "CREATING"
    PREP_ENV = "PREP_ENV"
    LOADING = "LOADING"
    INITIALISING = "INITIALISING"
    READY = "READY"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    STOPPED = "STOPPED"
    FAILED = "FAILED"
    #: Stopped at a checkpoint (or frozen) by an operator's pause; resumes to RUNNING. Last,
    #: so that the Tango enum values of the older states stay what they were.
    PAUSED = "PAUSED"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


_S = ProcedureState
#: States a procedure never leaves.
FINAL_STATES = frozenset({_S.COMPLETE, _S.STOPPED, _S.FAILED})
#: States of a procedure that is still being prepared: it will become READY or end.
PREPARING_STATES = frozenset({_S.CREATING, _S.IDLE, _S.PREP_ENV, _S.LOADING, _S.INITIALISING})
#: States of a procedure that holds (or is about to hold) a script process: the ones a crash
#: interrupts and a restart records FAILED.
ACTIVE_STATES = frozenset(PREPARING_STATES | {_S.READY, _S.RUNNING, _S.PAUSED})
#: States of the procedure that holds its subarray: no other may start meanwhile.
HOLDING_STATES = frozenset({_S.RUNNING, _S.PAUSED})
#: States from which a start may be asked for (a preparing procedure is started once READY).
STARTABLE_STATES = frozenset(PREPARING_STATES | {_S.READY})


class AdminMode(enum.IntEnum):
    """Who may use the device (ska-control-model): OFFLINE devices refuse every OET command."""

    ONLINE = 0
    OFFLINE = 1
    ENGINEERING = 2
    NOT_FITTED = 3
    RESERVED = 4


#: Admin modes in which the device accepts OET commands.
COMMAND_ACCEPTING_ADMIN_MODES = frozenset({AdminMode.ONLINE, AdminMode.ENGINEERING})


class HealthState(enum.IntEnum):
    """The device's own verdict on whether it can do its job (ska-control-model)."""

    OK = 0
    DEGRADED = 1
    FAILED = 2
    UNKNOWN = 3


class ResultCode(enum.IntEnum):
    """First element of a long-running command's reply and of its final result."""

    OK = 0
    STARTED = 1
    QUEUED = 2
    FAILED = 3
    UNKNOWN = 4
    REJECTED = 5
    NOT_ALLOWED = 6
    ABORTED = 7


#: Reply codes meaning the device took the command on.
ACCEPTED_RESULT_CODES = frozenset({ResultCode.OK, ResultCode.STARTED, ResultCode.QUEUED})
#: Reply codes meaning the device refused the command in its current state (not an error).
REFUSED_RESULT_CODES = frozenset({ResultCode.REJECTED, ResultCode.NOT_ALLOWED})


class TaskStatus(enum.IntEnum):
    """Life of one long-running command, as reported by the LRC attributes."""

    STAGING = 0
    QUEUED = 1
    IN_PROGRESS = 2
    ABORTED = 3
    NOT_FOUND = 4
    COMPLETED = 5
    REJECTED = 6
    FAILED = 7

    @property
    def is_final(self) -> bool:
        return self in FINAL_TASK_STATUSES


#: Statuses a long-running command never leaves.
FINAL_TASK_STATUSES = frozenset(
    {TaskStatus.ABORTED, TaskStatus.COMPLETED, TaskStatus.REJECTED, TaskStatus.FAILED}
)


def label_of(kind: type[enum.IntEnum], value: object) -> str | None:
    """The label of an integer enum value as read from Tango (``None`` stays ``None``; a value
    outside the enum, e.g. from a newer device, is shown as its number rather than dropped)."""
    if value is None:
        return None
    number = int(value)  # type: ignore[call-overload]
    try:
        return kind(number).name
    except ValueError:
        return str(number)
