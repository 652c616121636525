"""SKA control-model conventions, implemented here because ska-tango-base and
ska-control-model are not installable from PyPI.

Names, enum labels and values are those of ``ska_control_model`` (DESIGN §4), so that SKA
clients, Taranta dashboards and archivers read our attributes exactly as they read any SKA
device. Nothing here imports Tango: the device layers use these types, and plain unit tests
can check them. The enums the gateway and CLI also speak (admin mode, health state, result code,
task status) live in :mod:`ska_oso_oet.vocabulary` and are re-exported here.
"""

from __future__ import annotations

import enum
import time
import uuid

from ..vocabulary import (
    COMMAND_ACCEPTING_ADMIN_MODES,
    AdminMode,
    HealthState,
    ProcedureState,
    ResultCode,
    TaskStatus,
)

__all__ = [
    "COMMAND_ACCEPTING_ADMIN_MODES",
    "AdminMode",
    "ControlMode",
    "HealthState",
    "LoggingLevel",
    "ProcedureStateEnum",
    "ResultCode",
    "SimulationMode",
    "TaskStatus",
    "TestMode",
    "command_name_of",
    "generate_command_id",
]


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


#: A procedure's state as a Tango enum (DevEnum attributes Taranta can show and colour):
#: NONE = 0 (no procedure), then the engine's states in their lifecycle order. Built from
#: :class:`~ska_oso_oet.procedure.domain.ProcedureState`, so the two never disagree.
ProcedureStateEnum = enum.IntEnum(
    "ProcedureStateEnum",
    [("NONE", 0), *((state.name, n) for n, state in enumerate(ProcedureState, start=1))],
)


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
