"""Procedure domain: states, script specifications, arguments and summaries.

Plain data with no behaviour beyond validation and (de)serialisation to the wire shapes of
the documented OET API (DESIGN §3, §5). Nothing here knows about processes, Tango or HTTP.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..vocabulary import ProcedureState
from .errors import InvalidRequest

_S = ProcedureState
_ENDINGS = {_S.FAILED, _S.STOPPED}
#: Every transition the engine may make. Anything else is a bug and raises.
ALLOWED_TRANSITIONS: dict[ProcedureState, frozenset[ProcedureState]] = {
    _S.UNKNOWN: frozenset(_S) - {_S.UNKNOWN},
    _S.CREATING: frozenset({_S.IDLE} | _ENDINGS),
    _S.IDLE: frozenset({_S.PREP_ENV, _S.LOADING, _S.INITIALISING, _S.READY} | _ENDINGS),
    _S.PREP_ENV: frozenset({_S.IDLE} | _ENDINGS),
    _S.LOADING: frozenset({_S.IDLE} | _ENDINGS),
    _S.INITIALISING: frozenset({_S.READY} | _ENDINGS),
    _S.READY: frozenset({_S.RUNNING} | _ENDINGS),
    _S.RUNNING: frozenset({_S.COMPLETE, _S.PAUSED} | _ENDINGS),
    # COMPLETE: main() may return while another thread of the script sits at a checkpoint.
    _S.PAUSED: frozenset({_S.RUNNING, _S.COMPLETE} | _ENDINGS),
    _S.COMPLETE: frozenset(),
    _S.STOPPED: frozenset(),
    _S.FAILED: frozenset(),
}

#: Script functions that accept arguments; ``run`` is the historical alias of ``main``.
SCRIPT_FUNCTIONS = ("init", "main")
FUNCTION_ALIASES = {"run": "main"}


@dataclass(frozen=True)
class FunctionArgs:
    """Positional and keyword arguments for one script function."""

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str = "script_args") -> FunctionArgs:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise InvalidRequest(f"{where} must be an object with 'args' and 'kwargs'")
        unknown = set(data) - {"args", "kwargs"}
        if unknown:
            raise InvalidRequest(f"{where} has unknown keys {sorted(unknown)}")
        args = data.get("args") or []
        kwargs = data.get("kwargs") or {}
        if not isinstance(args, list | tuple):
            raise InvalidRequest(f"{where}.args must be a list")
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            raise InvalidRequest(f"{where}.kwargs must be an object with string keys")
        return cls(tuple(args), dict(kwargs))

    def to_dict(self) -> dict[str, Any]:
        return {"args": list(self.args), "kwargs": dict(self.kwargs)}


def parse_script_args(data: Any) -> dict[str, FunctionArgs]:
    """Validate ``{"init": {...}, "main"|"run": {...}}`` into per-function arguments."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise InvalidRequest("script_args must be an object keyed by function name")
    parsed: dict[str, FunctionArgs] = {}
    for name, fn_args in data.items():
        fn = FUNCTION_ALIASES.get(name, name)
        if fn not in SCRIPT_FUNCTIONS:
            raise InvalidRequest(
                f"script_args has unknown function {name!r}; expected one of init, main, run"
            )
        parsed[fn] = FunctionArgs.from_dict(fn_args, where=f"script_args.{name}")
    return parsed


@dataclass(frozen=True)
class GitArgs:
    """Where a ``git://`` script comes from. ``git_commit`` wins over ``git_branch``."""

    git_repo: str
    git_branch: str | None = None
    git_commit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "git_repo": self.git_repo,
            "git_branch": self.git_branch,
            "git_commit": self.git_commit,
        }


@dataclass(frozen=True)
class FileSystemScript:
    """A script on the local file system, ``file:///abs/path.py``."""

    script_uri: str
    script_type = "filesystem"

    @property
    def path(self) -> str:
        return self.script_uri.removeprefix("file://")

    def to_dict(self) -> dict[str, Any]:
        return {"script_type": self.script_type, "script_uri": self.script_uri}


@dataclass(frozen=True)
class GitScript:
    """A script inside a git repository, ``git://relative/path.py``."""

    script_uri: str
    git_args: GitArgs
    create_env: bool = False
    script_type = "git"

    @property
    def path(self) -> str:
        return self.script_uri.removeprefix("git://")

    def to_dict(self) -> dict[str, Any]:
        return {
            "script_type": self.script_type,
            "script_uri": self.script_uri,
            "git_args": self.git_args.to_dict(),
            "create_env": self.create_env,
        }


ScriptSpec = FileSystemScript | GitScript


def parse_script(data: Any) -> ScriptSpec:
    """Validate the ``script`` object of a create request (DESIGN §5)."""
    if isinstance(data, str):
        data = {"script_uri": data}
    if not isinstance(data, Mapping):
        raise InvalidRequest("script must be an object with 'script_type' and 'script_uri'")
    uri = data.get("script_uri")
    if not isinstance(uri, str) or not uri:
        raise InvalidRequest("script.script_uri is required and must be a string")
    if len(uri) > 4096 or any(ord(ch) < 32 or ch == "\x7f" for ch in uri):
        # A path the OS cannot take (NUL) must be a bad request, not an error deep inside.
        raise InvalidRequest(
            f"script.script_uri must be at most 4096 characters without control characters, "
            f"got {uri[:100]!r}{'...' if len(uri) > 100 else ''}"
        )
    script_type = data.get("script_type") or ("git" if uri.startswith("git://") else "filesystem")
    if script_type == "filesystem":
        if not uri.startswith("file://"):
            raise InvalidRequest(f"filesystem script URI must start with file://, got {uri!r}")
        if not uri.removeprefix("file://").startswith("/"):
            raise InvalidRequest(f"file:// script URI must hold an absolute path, got {uri!r}")
        return FileSystemScript(uri)
    if script_type == "git":
        if not uri.startswith("git://") or len(uri) <= len("git://"):
            raise InvalidRequest(
                f"git script URI must look like git://path/in/repo.py, got {uri!r}"
            )
        git_args = data.get("git_args") or {}
        if not isinstance(git_args, Mapping):
            raise InvalidRequest("script.git_args must be an object")
        repo = git_args.get("git_repo")
        if repo is not None and not isinstance(repo, str):
            raise InvalidRequest("git_args.git_repo must be a string")
        create_env = data.get("create_env", False)
        if not isinstance(create_env, bool):
            raise InvalidRequest("script.create_env must be true or false")
        return GitScript(
            uri,
            GitArgs(
                # Empty: the engine's configured default repository (ska-oso-scripting).
                git_repo=repo or "",
                git_branch=git_args.get("git_branch") or None,
                git_commit=git_args.get("git_commit") or None,
            ),
            create_env,
        )
    raise InvalidRequest(f"unknown script_type {script_type!r}; expected 'filesystem' or 'git'")


#: The audit trail's user for what the engine does by itself (e.g. recovery).
ENGINE_USER = "oet"


def audit_entry(action: str, user: str | None) -> dict[str, Any]:
    """One audit-trail entry: who (``user``) did what (``action``) when (``at``, epoch s)."""
    return {"action": action, "user": user or ENGINE_USER, "at": time.time()}


@dataclass(frozen=True)
class PrepareRequest:
    """Everything needed to create a procedure."""

    script: ScriptSpec
    init_args: FunctionArgs = FunctionArgs()
    #: Arguments for ``main`` when the procedure should start by itself once READY.
    autostart_args: FunctionArgs | None = None
    command_id: str | None = None
    #: Who asked (the audit trail's user); None for the engine's own procedures.
    requested_by: str | None = None

    @classmethod
    def from_dict(cls, body: Any, command_id: str | None = None) -> PrepareRequest:
        """Accept both ``{"script": {...}, "script_args": ...}`` and the older
        ``{"script_uri": ..., "script_args": ...}`` bodies."""
        if not isinstance(body, Mapping):
            raise InvalidRequest("request body must be a JSON object")
        if "script" in body:
            script = parse_script(body["script"])
        elif "script_uri" in body:
            script = parse_script(
                {
                    k: body[k]
                    for k in ("script_uri", "script_type", "git_args", "create_env")
                    if k in body
                }
            )
        else:
            raise InvalidRequest("request body needs 'script' (or 'script_uri')")
        fn_args = parse_script_args(body.get("script_args"))
        if "main" in fn_args:
            raise InvalidRequest("script_args for main are given when starting, not preparing")
        return cls(script, fn_args.get("init", FunctionArgs()), command_id=command_id)


@dataclass
class Procedure:
    """The mutable record of one procedure, owned by the service."""

    id: int
    script: ScriptSpec
    script_args: dict[str, FunctionArgs]
    process_states: list[tuple[ProcedureState, float]]
    stacktrace: str | None = None
    command_id: str | None = None
    #: Free-form facts recorded on the way (e.g. the git commit actually used).
    details: dict[str, Any] = field(default_factory=dict)
    #: Who created, started, stopped or aborted it: ``{"action", "user", "at"}`` entries.
    audit: list[dict[str, Any]] = field(default_factory=list)
    #: The script's last ``progress()``: {done, total, message, ts} (None: never reported).
    progress: dict[str, Any] | None = None
    #: The question the script waits on (``ask()``), None when there is none.
    request: dict[str, Any] | None = None
    #: Questions that ended: who answered what and when, or that they timed out (audit).
    requests: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def new(cls, pid: int, request: PrepareRequest) -> Procedure:
        return cls(
            id=pid,
            script=request.script,
            script_args={"init": request.init_args},
            process_states=[(ProcedureState.CREATING, time.time())],
            command_id=request.command_id,
            audit=[audit_entry("created", request.requested_by)],
        )

    def note(self, action: str, user: str | None) -> None:
        """Add an entry to the audit trail (``user`` None: the engine itself)."""
        self.audit.append(audit_entry(action, user))

    @property
    def state(self) -> ProcedureState:
        return self.process_states[-1][0]

    def record(self, state: ProcedureState) -> None:
        current = self.state
        if state not in ALLOWED_TRANSITIONS[current]:
            raise ValueError(f"procedure {self.id}: illegal transition {current} -> {state}")
        self.process_states.append((state, time.time()))

    def summary(self) -> dict[str, Any]:
        """The summary of DESIGN §5 (without ``uri``, which belongs to the REST layer)."""
        script = self.script.to_dict()
        if "git_commit_used" in self.details:
            script["git_args"]["git_commit"] = self.details["git_commit_used"]
        summary = {
            "id": self.id,
            "script": script,
            "script_args": {fn: a.to_dict() for fn, a in self.script_args.items()},
            "history": {
                "process_states": [[str(s), ts] for s, ts in self.process_states],
                "stacktrace": self.stacktrace,
                "requests": copy.deepcopy(self.requests),
            },
            "state": str(self.state),
            "progress": copy.deepcopy(self.progress),
            "request": copy.deepcopy(self.request),
            "command_id": self.command_id,
            "audit": copy.deepcopy(self.audit),
        }
        if self.details:
            summary["details"] = copy.deepcopy(self.details)
        return summary

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> Procedure:
        """Rebuild a record from a stored summary."""
        script = parse_script(summary["script"])
        return cls(
            id=int(summary["id"]),
            script=script,
            script_args=parse_script_args(summary.get("script_args")),
            process_states=[
                (ProcedureState(s), float(ts)) for s, ts in summary["history"]["process_states"]
            ],
            stacktrace=summary["history"].get("stacktrace"),
            command_id=summary.get("command_id"),
            details=dict(summary.get("details") or {}),
            audit=list(summary.get("audit") or []),
            progress=summary.get("progress"),
            requests=list(summary["history"].get("requests") or []),
        )
