"""Wire models of the documented API (DESIGN §5), kept apart from the engine's domain types.

Requests are checked for shape here (so that malformed bodies get a clear 400 before any Tango
call) and forwarded to the device as sent; the device applies the domain rules (script roots,
function names, states). Responses are described for the OpenAPI document and let extra keys
through, so new summary fields reach clients without a gateway release.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..vocabulary import ProcedureState

#: A URI, path or name sent on to the device: bounded and free of control characters (a NUL
#: would otherwise fail deep inside the engine, not as a 400 here).
Text = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00-\x1f\x7f]+$")]
#: A script: ``file:///absolute/path.py`` or ``git://path/in/repo.py``.
ScriptUri = Annotated[
    str, Field(min_length=7, max_length=4096, pattern=r"^(file:///|git://)[^\x00-\x1f\x7f]+$")
]


class FunctionArgs(BaseModel):
    """Positional and keyword arguments for one script function."""

    model_config = ConfigDict(extra="forbid", strict=True)
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class GitArgs(BaseModel):
    """Where a ``git://`` script comes from; ``git_commit`` wins over ``git_branch``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    #: None: the engine's default repository (ska-oso-scripting unless configured).
    git_repo: Text | None = None
    git_branch: Text | None = None
    git_commit: Text | None = None


class Script(BaseModel):
    """The script to load: ``file:///abs/path.py`` or ``git://path/in/repo.py``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    script_type: Literal["filesystem", "git"] | None = None
    script_uri: ScriptUri = Field(examples=["file:///scripts/hello_world.py"])
    git_args: GitArgs | None = None
    create_env: bool = False


class CreateProcedureRequest(BaseModel):
    """Body of ``POST /procedures``. The older ``{"script_uri": ..., "script_args": ...}`` form
    is accepted too."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            # what the validator below requires, so that the document says it too
            "anyOf": [
                {"required": ["script"], "properties": {"script": {"type": "object"}}},
                {"required": ["script_uri"], "properties": {"script_uri": {"type": "string"}}},
            ],
            "examples": [
                {
                    "script": {
                        "script_type": "filesystem",
                        "script_uri": "file:///scripts/hello_world.py",
                    },
                    "script_args": {"init": {"args": [], "kwargs": {"subarray_id": 1}}},
                }
            ],
        },
    )
    script: Script | None = None
    script_uri: ScriptUri | None = None
    script_type: Literal["filesystem", "git"] | None = None
    git_args: GitArgs | None = None
    create_env: bool | None = None
    script_args: dict[str, FunctionArgs] | None = None

    @model_validator(mode="after")
    def _needs_a_script(self) -> CreateProcedureRequest:
        if self.script is None and not self.script_uri:
            raise ValueError("request body needs 'script' (or 'script_uri')")
        return self


class UpdateProcedureRequest(BaseModel):
    """Body of ``PUT /procedures/{id}``: start (``RUNNING``), stop (``STOPPED``), pause
    (``PAUSED``, with ``immediate`` to freeze at once) or resume (``RUNNING`` when PAUSED).

    Other keys are ignored: older clients PUT the whole procedure back with a new state."""

    model_config = ConfigDict(
        extra="ignore",
        strict=True,
        json_schema_extra={
            "examples": [
                {"state": "RUNNING", "script_args": {"main": {"args": [], "kwargs": {}}}},
                {"state": "STOPPED", "abort": False},
                {"state": "PAUSED", "immediate": False},
            ]
        },
    )
    state: Literal[tuple(s.value for s in ProcedureState)]  # type: ignore[valid-type]
    script_args: dict[str, FunctionArgs] | None = None
    abort: bool = False
    #: With PAUSED: freeze the script's processes at once (SIGSTOP) instead of pausing at
    #: its next checkpoint (docs/scripts.md says why that is dangerous).
    immediate: bool = False


class AnswerRequest(BaseModel):
    """Body of ``POST /procedures/{id}/request``: the answer to the script's question."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"request_id": "1", "value": "yes"}]}
    )
    #: The ``id`` of the pending request (``GET /procedures/{id}/request``).
    request_id: str = Field(min_length=1, max_length=64)
    #: The answer: one of the request's choices when it has any.
    value: str | int | float | bool | None


class InputRequest(BaseModel):
    """A question a script asks the operator, or how it ended (``outcome``)."""

    model_config = ConfigDict(extra="allow")
    id: str
    procedure_id: int | None = None
    prompt: str | None = None
    choices: list[Any] | None = None


class InputRequestResponse(BaseModel):
    #: None when the procedure waits for no answer.
    request: InputRequest | None


class History(BaseModel):
    model_config = ConfigDict(extra="allow")
    process_states: list[tuple[str, float]]
    stacktrace: str | None = None


class ProcedureSummary(BaseModel):
    """A procedure as clients see it; ``uri`` is built from the request's base URL."""

    model_config = ConfigDict(extra="allow")
    uri: str
    id: int
    script: dict[str, Any]
    script_args: dict[str, FunctionArgs]
    history: History
    state: str


class ProcedureResponse(BaseModel):
    procedure: ProcedureSummary


class ProcedureListResponse(BaseModel):
    procedures: list[ProcedureSummary]


class StopResponse(BaseModel):
    abort_message: str


class CreateActivityRequest(BaseModel):
    """Body of ``POST /activities``: run an activity of a stored scheduling block definition."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "activity_name": "observe",
                    "sbd_id": "sbd-demo-00001",
                    "script_args": {"main": {"args": [], "kwargs": {"scans": 1}}},
                    "prepare_only": False,
                    "create_env": False,
                }
            ]
        },
    )
    activity_name: Text
    sbd_id: Text
    script_args: dict[str, FunctionArgs] = Field(default_factory=dict)
    prepare_only: bool = False
    create_env: bool = False


class ActivitySummary(BaseModel):
    """An activity as clients see it; its script runs as procedure ``procedure_id``."""

    model_config = ConfigDict(extra="allow")
    uri: str
    id: int
    activity_name: str
    sbd_id: str
    procedure_id: int | None = None
    prepare_only: bool
    script_args: dict[str, FunctionArgs]
    activity_states: list[tuple[str, float]]
    state: str
    sbi_id: str | None = None


class ActivityResponse(BaseModel):
    activity: ActivitySummary


class ActivityListResponse(BaseModel):
    activities: list[ActivitySummary]


#: An SBD id as the device stores it.
SBD_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class SbdActivity(BaseModel):
    """One named activity of an SBD: the script to run and its arguments."""

    model_config = ConfigDict(extra="allow", strict=True)
    kind: Literal["filesystem", "git"]
    path: Text = Field(examples=["file:///scripts/observe.py"])
    repo: Text | None = None
    branch: Text | None = None
    commit: Text | None = None
    function_args: dict[str, FunctionArgs] = Field(default_factory=dict)


class SbdRequest(BaseModel):
    """Body of ``POST /sbds``: what the OET needs of an SBD; every other field is kept as sent
    (and given to the activity's script)."""

    model_config = ConfigDict(
        extra="allow",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "sbd_id": "sbd-demo-00001",
                    "activities": {
                        "observe": {"kind": "filesystem", "path": "file:///scripts/observe.py"}
                    },
                }
            ]
        },
    )
    sbd_id: str = Field(pattern=SBD_ID_PATTERN)
    activities: dict[str, SbdActivity] = Field(min_length=1)


class SbdResponse(BaseModel):
    """A scheduling block definition as stored (fields beyond these are kept untouched)."""

    sbd: dict[str, Any]


class ErrorResponse(BaseModel):
    """Every error: ``{"error": "404 Not Found", "type": "ResourceNotFound", "Message": ...}``."""

    error: str
    type: str
    Message: str


#: ``responses=`` entry documenting the error body for the given statuses.
#: Every route but ``/health`` may also answer 401/403 (authentication, role) and 413/431/400
#: (request limits).
def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in sorted({*statuses, 401, 403})}


class SwitchRequest(BaseModel):
    """Body of ``POST /procedures/{id}/switch``: the target-of-opportunity switch."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"abort": False, "force": True}]},
    )
    #: Run the subarray's abort script after stopping what runs (the switch waits for it).
    abort: bool = False
    #: Kill what runs at once instead of giving it the stop grace.
    force: bool = False
    script_args: dict[str, FunctionArgs] | None = None


class SwitchResponse(BaseModel):
    """What the switch stopped (with its abort script, if any) and the procedure it started."""

    stopped: list[ProcedureSummary]
    started: ProcedureSummary
