"""SKA control-model conventions, implemented here because ska-tango-base and
ska-control-model are not installable from PyPI.

Names, enum labels and values are those of ``ska_control_model`` (DESIGN §4), so that SKA
clients, Taranta dashboards and archivers read our attributes exactly as they read any SKA
device. Nothing here imports Tango: the device layers use these types, and plain unit tests
can check them.
"""

from __future__ import annotations

import enum
import time
import uuid

__all__ = [
    "COMMAND_ACCEPTING_ADMIN_MODES",
    "AdminMode",
    "ControlMode",
    "HealthState",
    "LoggingLevel",
    "ResultCode",
    "SimulationMode",
    "TaskStatus",
    "TestMode",
    "command_name_of",
    "generate_command_id",
]


class AdminMode(enum.IntEnum):
    """Who may use the device: OFFLINE devices refuse every OET command."""

    ONLINE = 0
    OFFLINE = 1
    ENGINEERING = 2
    NOT_FITTED = 3
    RESERVED = 4


class HealthState(enum.IntEnum):
    """The device's own verdict on whether it can do its job."""

    OK = 0
    DEGRADED = 1
    FAILED = 2
    UNKNOWN = 3


class ControlMode(enum.IntEnum):
    REMOTE = 0
    LOCAL = 1


class SimulationMode(enum.IntEnum):
    FALSE = 0
    TRUE = 1


class TestMode(enum.IntEnum):
    NONE = 0
    TEST = 1


class LoggingLevel(enum.IntEnum):
    OFF = 0
    FATAL = 1
    ERROR = 2
    WARNING = 3
    INFO = 4
    DEBUG = 5


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
        return self in _FINAL_TASK_STATUSES


_FINAL_TASK_STATUSES = frozenset(
    {TaskStatus.ABORTED, TaskStatus.COMPLETED, TaskStatus.REJECTED, TaskStatus.FAILED}
)

#: Admin modes in which the device accepts OET commands.
COMMAND_ACCEPTING_ADMIN_MODES = frozenset({AdminMode.ONLINE, AdminMode.ENGINEERING})


def generate_command_id(command_name: str) -> str:
    """A unique long-running command id, ``"<epoch float>_<unique int>_<CommandName>"``.

    Same shape as ska-tango-base's ids, so clients that split the id on ``_`` to find the
    command name or the submission time keep working.
    """
    return f"{time.time()}_{uuid.uuid4().fields[-1]}_{command_name}"


def command_name_of(command_id: str) -> str:
    """The command name at the end of a command id (``""`` for a malformed id)."""
    parts = command_id.split("_", 2)
    return parts[2] if len(parts) == 3 else ""
