"""Activities: "run activity X of scheduling block definition Y".

A scheduling block definition (SBD) maps activity names to scripts and their arguments. Running
an activity resolves the script, merges the SBD's arguments with the request's, and runs the
result as an ordinary procedure whose lifecycle the activity follows.
"""

from __future__ import annotations

import copy
import enum
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..procedure.domain import (
    FunctionArgs,
    GitScript,
    ProcedureState,
    ScriptSpec,
    parse_script,
    parse_script_args,
)
from ..procedure.errors import InvalidRequest

SBD_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ActivityState(enum.StrEnum):
    TODO = "TODO"
    REQUESTED = "REQUESTED"
    PREPARED = "PREPARED"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    @property
    def is_final(self) -> bool:
        return self in (ActivityState.COMPLETE, ActivityState.FAILED, ActivityState.STOPPED)


#: The activity state each procedure state moves an activity to (others leave it as it is).
FOLLOWS_PROCEDURE = {
    ProcedureState.READY: ActivityState.PREPARED,
    ProcedureState.RUNNING: ActivityState.RUNNING,
    ProcedureState.COMPLETE: ActivityState.COMPLETE,
    ProcedureState.FAILED: ActivityState.FAILED,
    ProcedureState.STOPPED: ActivityState.STOPPED,
}


@dataclass(frozen=True)
class ActivityScript:
    """The script an SBD names for one activity, with the SBD's arguments."""

    script: ScriptSpec
    function_args: dict[str, FunctionArgs]

    @classmethod
    def from_sbd(cls, name: str, data: Any) -> ActivityScript:
        where = f"activity {name!r}"
        if not isinstance(data, Mapping):
            raise InvalidRequest(f"{where} must be an object with 'kind' and 'path'")
        kind = data.get("kind")
        try:
            if kind == "filesystem":
                script = parse_script({"script_type": "filesystem", "script_uri": data.get("path")})
            elif kind == "git":
                git_args = {
                    "git_repo": data.get("repo"),
                    "git_branch": data.get("branch"),
                    "git_commit": data.get("commit"),
                }
                script = parse_script(
                    {"script_type": "git", "script_uri": data.get("path"), "git_args": git_args}
                )
            else:
                raise InvalidRequest(f"kind must be 'filesystem' or 'git', got {kind!r}")
            function_args = parse_script_args(data.get("function_args"))
        except InvalidRequest as exc:
            raise InvalidRequest(f"{where}: {exc}") from None
        return cls(script, function_args)


def validate_sbd(document: Any) -> dict[str, Any]:
    """Check what the OET needs of an SBD; every other field is kept untouched."""
    if not isinstance(document, Mapping):
        raise InvalidRequest("an SBD must be a JSON object")
    sbd_id = document.get("sbd_id")
    if not isinstance(sbd_id, str) or not SBD_ID_PATTERN.match(sbd_id):
        raise InvalidRequest(
            "sbd_id is required: letters, digits, '.', '_' or '-', at most 128 characters"
        )
    activities = document.get("activities")
    if not isinstance(activities, Mapping) or not activities:
        raise InvalidRequest(f"SBD {sbd_id} needs 'activities': an object of named scripts")
    for name, activity in activities.items():
        ActivityScript.from_sbd(name, activity)
    return dict(document)


def merge_args(sbd: FunctionArgs | None, request: FunctionArgs | None) -> FunctionArgs:
    """Positional arguments of the request replace the SBD's when given; keyword arguments
    merge key by key, the request winning."""
    sbd = sbd or FunctionArgs()
    request = request or FunctionArgs()
    return FunctionArgs(request.args or sbd.args, {**sbd.kwargs, **request.kwargs})


@dataclass(frozen=True)
class ActivityRequest:
    activity_name: str
    sbd_id: str
    script_args: dict[str, FunctionArgs] = field(default_factory=dict)
    prepare_only: bool = False
    create_env: bool = False

    @classmethod
    def from_dict(cls, body: Any) -> ActivityRequest:
        if not isinstance(body, Mapping):
            raise InvalidRequest("request body must be a JSON object")
        name, sbd_id = body.get("activity_name"), body.get("sbd_id")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("activity_name is required")
        if not isinstance(sbd_id, str) or not sbd_id:
            raise InvalidRequest("sbd_id is required")
        for flag in ("prepare_only", "create_env"):
            if not isinstance(body.get(flag, False), bool):
                raise InvalidRequest(f"{flag} must be true or false")
        return cls(
            name,
            sbd_id,
            parse_script_args(body.get("script_args")),
            body.get("prepare_only", False),
            body.get("create_env", False),
        )


def with_create_env(script: ScriptSpec, create_env: bool) -> ScriptSpec:
    if isinstance(script, GitScript) and create_env and not script.create_env:
        return GitScript(script.script_uri, script.git_args, True)
    return script


@dataclass
class Activity:
    id: int
    activity_name: str
    sbd_id: str
    sbi_id: str
    prepare_only: bool
    script_args: dict[str, FunctionArgs]
    activity_states: list[tuple[ActivityState, float]]
    procedure_id: int | None = None
    command_id: str | None = None
    #: Who created, started, stopped or aborted it (entries as the engine's procedures have).
    audit: list[dict[str, Any]] = field(default_factory=list)

    @property
    def state(self) -> ActivityState:
        return self.activity_states[-1][0]

    def record(self, state: ActivityState) -> bool:
        """Move to ``state``; False when already there or finished."""
        if self.state.is_final or state == self.state:
            return False
        self.activity_states.append((state, time.time()))
        return True

    def summary(self) -> dict[str, Any]:
        """The activity summary of the documented API (without ``uri``)."""
        return {
            "id": self.id,
            "activity_name": self.activity_name,
            "sbd_id": self.sbd_id,
            "procedure_id": self.procedure_id,
            "prepare_only": self.prepare_only,
            "script_args": {fn: a.to_dict() for fn, a in self.script_args.items()},
            "activity_states": [[str(s), ts] for s, ts in self.activity_states],
            "state": str(self.state),
            "sbi_id": self.sbi_id,
            "command_id": self.command_id,
            "audit": copy.deepcopy(self.audit),
        }

    @classmethod
    def from_summary(cls, data: Mapping[str, Any]) -> Activity:
        return cls(
            id=int(data["id"]),
            activity_name=data["activity_name"],
            sbd_id=data["sbd_id"],
            sbi_id=data["sbi_id"],
            prepare_only=bool(data["prepare_only"]),
            script_args=parse_script_args(data.get("script_args")),
            activity_states=[(ActivityState(s), float(t)) for s, t in data["activity_states"]],
            procedure_id=data.get("procedure_id"),
            command_id=data.get("command_id"),
            audit=list(data.get("audit") or []),
        )
