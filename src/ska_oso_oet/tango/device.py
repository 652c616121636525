"""OETDevice: the Observation Execution Tool of one subarray, as a Tango device.

Commands (JSON string in, long-running: they return ``([ResultCode], [command_id])`` at once
and the outcome arrives on ``longRunningCommandResult`` and ``_lrcEvent``):

* ``Prepare(json)`` -> completes when the procedure is READY ([OK, summary JSON]).
* ``Start(json)`` -> completes when ``main`` returns ([OK, summary JSON]).
* ``Stop(json)``, ``Abort()`` -> complete when the procedure is STOPPED ([OK, JSON list]).
* ``RunActivity(json)`` -> runs an activity of a scheduling block definition (SBD); completes
  when the activity's script ends, or at PREPARED with ``prepare_only`` ([OK, activity JSON]).
* ``Pause(json)`` -> completes when the procedure is PAUSED (at its next checkpoint, or at once
  with ``immediate``); ``Resume(json)`` -> completes when it is RUNNING again.
* ``Answer(json)`` -> answers the question a script asks (``inputRequest``), synchronous.
* ``GetProcedure(id)``, ``GetActivity(id)`` -> one summary (synchronous).
* ``AddSbd(json)``, ``GetSbd(sbd_id)`` -> store / read an SBD document (synchronous).

Attributes: ``procedures``, ``activities``, ``runningProcedureId``, ``procedureIds``,
``procedureStates``, ``lastEvent`` (one change event per engine/script event, in order),
``scriptMessage``, ``inputRequest`` (questions waiting for an answer), ``subarrayId`` and the SKA attributes of :class:`~.base.SkaDevice`.

The device only translates: it decodes the JSON argument, calls the
:class:`~ska_oso_oet.procedure.service.ScriptExecutionService` (or the
:class:`~ska_oso_oet.activity.service.ActivityService` beside it), and encodes the reply.

Refusals follow ska-tango-base's split, so its clients (``invoke_lrc``) read them as they read
any SKA device's:

* ``DevFailed`` when the request itself is wrong (``OET_INVALID_REQUEST``: not JSON, unknown
  keys, a script outside the roots) or the device's state does not allow the command at all
  (``OET_DEVICE_OFFLINE`` in DISABLE, ``OET_ENGINE_UNAVAILABLE`` in FAULT,
  ``OET_STATE_CONFLICT`` for new scripts while OFF or STANDBY, ``API_CommandNotAllowed`` for
  On/Off/Standby in FAULT) -- what ska-tango-base's argument validation and
  ``is_<Command>_allowed`` raise;
* a ``([ResultCode.REJECTED], ["<OET reason>: <message>"])`` reply when a well-formed long-running
  command cannot be accepted by the engine now (``OET_NOT_FOUND``, ``OET_STATE_CONFLICT``,
  ``OET_ENGINE_UNAVAILABLE``): no command id is issued, nothing is left behind.

Synchronous commands (``GetProcedure``...) raise ``DevFailed`` for every refusal.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any, TypeVar

from tango import DevState
from tango.server import attribute, command, device_property

from .. import events as topics
from ..activity.service import ActivityService
from ..events import Event, dumps
from ..procedure.config import PROPERTY_NAMES, OetConfig, config_from_sources
from ..procedure.domain import PrepareRequest, parse_script_args
from ..procedure.errors import OetError
from ..procedure.service import ScriptExecutionService
from ..vocabulary import FINAL_STATES as FINAL_PROCEDURE_STATES
from ..vocabulary import PREPARING_STATES, ProcedureState
from . import runtime
from .activities import ActivityView
from .activity_commands import ActivityCommands
from .base import SkaDevice
from .procedures import ProcedureView
from .requests import JsonRequests
from .ska import (
    COMMAND_ACCEPTING_ADMIN_MODES,
    HealthState,
    ProcedureStateEnum,
    ResultCode,
    TaskStatus,
    generate_command_id,
)
from .ska_commands import SkaCommands

T = TypeVar("T")

#: Device property -> OetConfig field. Properties left unset are not passed on, so the
#: engine's defaults and OET_* environment variables decide (config_from_sources).
PROPERTY_SETTINGS = {
    "SubarrayId": "subarray_id",
    "ScriptRoots": "script_roots",
    "AbortScript": "abort_script",
    "HistorySize": "history_size",
    "StateDatabase": "state_database",
    "EnvironmentsDir": "environments_dir",
    "GitCacheDir": "git_cache_dir",
    "WarmWorkers": "warm_workers",
    "StopGraceSeconds": "stop_grace_seconds",
    "SBStore": "sb_store",
    "AllowedRepositories": "allowed_repositories",
    "GitTimeout": "git_timeout",
    "EnvBuildTimeout": "env_build_timeout",
    "EnvMaxCount": "env_max_count",
    "EnvMaxBytes": "env_max_bytes",
    "GitMaxCheckouts": "git_max_checkouts",
    "GitMaxBytes": "git_max_bytes",
    "PipOptions": "pip_options",
    "DefaultGitRepo": "default_git_repo",
    "DefaultGitBranch": "default_git_branch",
    "EnvInstaller": "env_installer",
    "EnvInheritPackages": "env_inherit_packages",
    "EnvGroups": "env_groups",
    "EnvExtras": "env_extras",
    "ScriptMemoryBytes": "script_memory_bytes",
    "MaxPrepared": "max_prepared",
    "EventQueueLimit": "event_queue_limit",
    "MaxLineLength": "max_line_length",
}
# Configuration errors name the property a Tango user sets.
PROPERTY_NAMES.update({setting: prop for prop, setting in PROPERTY_SETTINGS.items()})

_ENDED = {"COMPLETE", "STOPPED", "FAILED"}
#: Most progress values kept for a Start not tracked yet (the newest win).
_UNTRACKED_PROGRESS_KEPT = 16
#: ...and for how many procedures (oldest dropped: e.g. scripts run by RunActivity, no Start).
_UNTRACKED_PROCEDURES_KEPT = 64
#: Longest answer to a script's question (JSON characters): answers are recorded in history.
MAX_ANSWER_CHARS = 4096
#: Event backlog above which the device reports DEGRADED health.
DEGRADED_BACKLOG = 10_000
#: Largest ``script_args`` of one request (JSON), and of one procedure's summary in total:
#: every summary is kept in the history window, the state database and every client's list.
MAX_SCRIPT_ARGS_CHARS = 256 * 1024
MAX_SUMMARY_CHARS = 512 * 1024
#: How long a Switch waits, beyond the stop grace, for the stopped script and its abort script.
SWITCH_ABORT_TIMEOUT = 60.0
_LRC_REPLY = "DevVarLongStringArray"
#: Topic of the value lastEvent has before the engine published anything (seq 0: a client
#: that follows seq, like the gateway, knows it is no engine event).
INITIAL_EVENT_TOPIC = "oet.device.started"


#: Tango state shown for each procedure state by procedureLeds (Taranta colours DevState).
PROCEDURE_LEDS = {
    ProcedureState.UNKNOWN: DevState.UNKNOWN,
    **dict.fromkeys(PREPARING_STATES, DevState.INIT),
    ProcedureState.READY: DevState.ON,
    ProcedureState.RUNNING: DevState.RUNNING,
    # held by an operator: waiting, still holding the subarray
    ProcedureState.PAUSED: DevState.STANDBY,
    ProcedureState.COMPLETE: DevState.ON,
    ProcedureState.STOPPED: DevState.OFF,
    ProcedureState.FAILED: DevState.FAULT,
}


class Rejected(Exception):
    """A well-formed long-running command the engine cannot accept now (REJECTED reply)."""


def initial_event(device: str) -> str:
    """lastEvent before any engine event: a valid event envelope with seq 0."""
    return Event(INITIAL_EVENT_TOPIC, device, time.time(), 0, {"device": device}).to_json()


class OETDevice(SkaCommands, ActivityCommands, JsonRequests, SkaDevice):
    """Observation Execution Tool of one subarray: prepares, starts, stops and aborts Python
    observing scripts, each in its own process, and publishes everything they announce as
    change events on lastEvent."""

    SubarrayId = device_property(
        dtype="uint16", doc="Subarray this device serves (default: the last part of the name)."
    )
    ScriptRoots = device_property(
        dtype="DevVarStringArray", doc="Folders that file:// scripts must lie under."
    )
    AbortScript = device_property(
        dtype="str", doc="file:// URI of the script run by Abort (and by Stop with run_abort)."
    )
    HistorySize = device_property(dtype="uint32", doc="Finished procedures kept in the history.")
    StateDatabase = device_property(
        dtype="str", doc="sqlite file keeping the procedure history across restarts."
    )
    EnvironmentsDir = device_property(dtype="str", doc="Cache of per-script virtualenvs.")
    GitCacheDir = device_property(dtype="str", doc="Cache of cloned git repositories.")
    WarmWorkers = device_property(
        dtype="uint16", doc="Idle worker processes kept ready (shared by the server's devices)."
    )
    StopGraceSeconds = device_property(
        dtype="double", doc="Seconds a stopped script has after SIGTERM before SIGKILL."
    )
    SBStore = device_property(
        dtype="str",
        doc="Folder of scheduling block definitions (<sbd_id>.json) used by RunActivity; "
        "several devices may share it.",
    )
    AllowedRepositories = device_property(
        dtype="DevVarStringArray",
        doc="URL patterns (shell-style, * matches /) a git:// script's git_repo must match.",
    )
    GitTimeout = device_property(
        dtype="double", doc="Seconds one preparation's git work (clone, fetch, checkout) may take."
    )
    EnvBuildTimeout = device_property(
        dtype="double",
        doc="Seconds finding or building a script's virtualenv may take, waiting included.",
    )
    EnvMaxCount = device_property(
        dtype="uint32", doc="Cached virtualenvs kept, least recently used evicted (0: no limit)."
    )
    EnvMaxBytes = device_property(
        dtype="DevLong64", doc="Disk the cached virtualenvs may use, in bytes (0: no limit)."
    )
    GitMaxCheckouts = device_property(
        dtype="uint32",
        doc="Git checkouts (one tree per commit) kept, least recently used evicted, never one "
        "in use (0: no limit).",
    )
    GitMaxBytes = device_property(
        dtype="DevLong64", doc="Disk the git checkouts may use, in bytes (0: no limit)."
    )
    PipOptions = device_property(
        dtype="DevVarStringArray",
        doc="Extra pip install options for script environments, split shell-style, "
        "e.g. --no-index --find-links /srv/wheels.",
    )
    DefaultGitRepo = device_property(
        dtype="str",
        doc="Repository of git:// scripts created without git_repo (ska-oso-scripting).",
    )
    DefaultGitBranch = device_property(
        dtype="str", doc="Branch used with DefaultGitRepo (default: the repository's HEAD)."
    )
    EnvInstaller = device_property(
        dtype="str", doc="Script environment builder: auto (uv, else pip), uv or pip."
    )
    EnvInheritPackages = device_property(
        dtype="bool",
        doc="Script environments see the OET's packages (pytango, pypubsub) behind their own "
        "(default true); false builds isolated environments.",
    )
    EnvGroups = device_property(
        dtype="DevVarStringArray", doc="Poetry dependency groups installed besides main."
    )
    EnvExtras = device_property(
        dtype="DevVarStringArray", doc="Extras of a repository's project to install."
    )
    ScriptMemoryBytes = device_property(
        dtype="DevLong64",
        doc="Address space one script process may use (RLIMIT_AS), in bytes; past it the "
        "script gets MemoryError (0: no limit; default 4 GiB).",
    )
    MaxPrepared = device_property(
        dtype="uint32",
        doc="Procedures that may be unfinished at once on this device (default 16); Prepare "
        "past it is refused with OET_LIMIT.",
    )
    EventQueueLimit = device_property(
        dtype="uint32",
        doc="Events waiting to be published beyond which a script's output, logs and events "
        "are held back, slowing the script (default 5000; nothing is dropped).",
    )
    MaxLineLength = device_property(
        dtype="uint32",
        doc="Longest script output line passed on, in characters (default 65536); longer "
        "lines are cut with a marker.",
    )

    # ----- life cycle -----------------------------------------------------------------------
    def init_device(self) -> None:
        super().init_device()
        self._view = ProcedureView()
        self._activity_view = ActivityView()
        self._activity_service: ActivityService | None = None
        self._activity_error = ""
        self._last_event = initial_event(self.get_name())
        self._script_message = ""
        #: ON, OFF or STANDBY as On/Off/Standby set it; the lock makes "may a new script
        #: start" and the start itself one step, so Off never misses a procedure.
        self._power = DevState.ON
        self._power_lock = threading.Lock()
        self._reset_lock = threading.Lock()
        #: Questions waiting for an answer, by procedure id (inputRequest).
        self._requests: dict[int, dict[str, Any]] = {}
        #: Progress (percent) of a procedure whose Start is not tracked yet: the script runs
        #: before Start's tracking reaches the event thread, so its first progress() calls can
        #: arrive first; Start's tracking then applies them, in order (event thread only).
        self._untracked_progress: dict[int, list[int]] = {}
        self._subscription = None
        self._service: ScriptExecutionService | None = None
        self._service_error = ""
        for name in (
            *ProcedureView.ATTRIBUTES,
            "activities",
            "lastEvent",
            "scriptMessage",
            "runningProcedureState",
            "procedureLeds",
            "inputRequest",
        ):
            self.set_change_event(name, True, False)
            self.set_archive_event(name, True, False)
        self._build_engine()
        self.submit(self._refresh_procedures)
        self.submit(self._refresh_activities)
        self.logger.info("OETDevice %s ready", self.get_name())

    def _build_engine(self) -> None:
        """Create the script engine and the activity service (at start-up and on Reset);
        on failure the device stays in FAULT with the reason in Status."""
        self._service_error = ""
        self._activity_error = ""
        try:
            service = self.create_service()
            self._subscription = service.events.subscribe(self._on_engine_event)
            limit = service.config.event_queue_limit
            service.set_throttle(lambda timeout: self._events.wait_for_room(limit, timeout))
            service.launcher.add_listener(self._on_launcher_change)
            self._service = service
        except Exception as exc:
            self._service_error = f"the script engine could not start: {exc}"
            self.logger.exception("cannot create the script execution service")
            return
        try:
            self._activity_service = self.create_activity_service(service)
        except Exception as exc:
            self._activity_error = f"activities are unavailable: {exc}"
            self.logger.exception("cannot create the activity service")

    def _close_engine(self) -> None:
        subscription = getattr(self, "_subscription", None)
        if subscription is not None:
            self._subscription = None
            subscription.close()
        service = getattr(self, "_service", None)
        if service is not None:
            self._service = None
            service.launcher.remove_listener(self._on_launcher_change)
            service.shutdown()  # the activity service still listens: it records STOPPED
        activities = getattr(self, "_activity_service", None)
        if activities is not None:
            self._activity_service = None
            activities.close()

    def delete_device(self) -> None:
        subscription = getattr(self, "_subscription", None)
        if subscription is not None:
            self._subscription = None
            subscription.close()
        super().delete_device()
        self._close_engine()

    def engine_settings(self) -> dict[str, Any]:
        """Settings from the device properties that are set (None = leave to the engine)."""
        known = {f.name for f in fields(OetConfig)}
        settings: dict[str, Any] = {"name": self.get_name()}
        for prop, setting in PROPERTY_SETTINGS.items():
            value = getattr(self, prop, None)
            if value is None or setting not in known:
                continue
            if isinstance(value, list | tuple):
                value = [v for v in value if str(v).strip()]
                if not value:
                    continue
            if prop == "PipOptions":
                value = [option for item in value for option in shlex.split(item)]
            settings[setting] = list(value) if isinstance(value, list | tuple) else value
        if "subarray_id" not in settings:
            match = re.search(r"(\d+)$", self.get_name())
            if match:
                settings["subarray_id"] = int(match.group(1))
        return settings

    def create_service(self) -> ScriptExecutionService:
        """The engine this device adapts. The one seam tests replace with a fake."""
        config = config_from_sources(self.engine_settings(), os.environ)
        return ScriptExecutionService(config, launcher=runtime.shared_launcher())

    def create_activity_service(self, engine: ScriptExecutionService) -> ActivityService:
        """Activities of this subarray, run as procedures of ``engine`` (SB store: SBStore)."""
        return ActivityService(engine)

    # ----- engine events (engine threads: enqueue only) ------------------------------------
    def _on_launcher_change(self) -> None:
        self.submit(self.refresh_condition)

    def _on_engine_event(self, event: Event) -> None:
        self.submit(self._handle_event, event)

    def _handle_event(self, event: Event) -> None:
        """Publish one engine event, then what it changed (event thread)."""
        self._last_event = event.to_json()
        self.push("lastEvent", self._last_event)
        if event.topic == "user.script.announce":
            msg = event.payload.get("msg")
            self._script_message = msg if isinstance(msg, str) else dumps(msg)
            self.push("scriptMessage", self._script_message)
        if event.topic in (topics.REQUEST_OPENED, topics.REQUEST_CLOSED):
            self._on_request_event(event)
        elif event.topic == topics.PROCEDURE_PROGRESS:
            self._on_progress(event)
        if event.topic.startswith("procedure.lifecycle."):
            self._view.observe(event, self._lookup)
            self._refresh_procedures()
            if event.topic.endswith((".stopped", ".failed", ".complete")):
                self._forget_requests()
            for command_id, status, code, message in self._view.completions(self._lookup):
                self.lrc_finish(command_id, status, code, message)
        elif self._activity_view.observe(event):
            self._refresh_activities()
            self._complete_activities()

    def _on_request_event(self, event: Event) -> None:
        pid = event.payload.get("procedure_id")
        request = event.payload.get("request")
        if not isinstance(pid, int) or not isinstance(request, dict):
            return
        if event.topic == topics.REQUEST_OPENED:
            self._requests[pid] = request
        elif self._requests.get(pid, {}).get("id") == request.get("id"):
            del self._requests[pid]
        self.push("inputRequest", self._input_request())

    def _forget_requests(self) -> None:
        """A procedure that ended waits for nothing any more."""
        ended = [pid for pid in self._requests if (self._lookup(pid) or {}).get("state") in _ENDED]
        for pid in ended:
            del self._requests[pid]
        if ended:
            self.push("inputRequest", self._input_request())

    def _input_request(self) -> str:
        return dumps([self._requests[pid] for pid in sorted(self._requests)])

    def _on_progress(self, event: Event) -> None:
        """A script's progress() is the progress of the Start command that runs it."""
        pid = event.payload.get("procedure_id")
        if not isinstance(pid, int):
            return
        done, total = event.payload.get("done"), event.payload.get("total")
        try:
            percent = round(100 * float(done) / float(total)) if total else round(float(done))
        except (TypeError, ValueError, OverflowError):
            return
        percent = max(0, min(percent, 2**31 - 1))
        command_id = self._view.command_of(pid, "Start")
        if command_id is None:
            early = self._untracked_progress.setdefault(pid, [])
            early[:] = [*early[-(_UNTRACKED_PROGRESS_KEPT - 1) :], percent]
            while len(self._untracked_progress) > _UNTRACKED_PROCEDURES_KEPT:  # no Start came
                del self._untracked_progress[next(iter(self._untracked_progress))]
            return
        self.lrc_progress(command_id, percent)

    def _apply_untracked_progress(self, command_id: str, procedure_id: int) -> None:
        """The progress a Start's script made before the Start was tracked (event thread)."""
        for percent in self._untracked_progress.pop(procedure_id, ()):
            self.lrc_progress(command_id, percent)

    def _lookup(self, procedure_id: int) -> dict[str, Any] | None:
        try:
            return self._service.get(procedure_id) if self._service else None
        except OetError:
            return None

    def _refresh_procedures(self) -> None:
        service = self._service
        running_before = self._running_state()
        if service is not None and self._view.seeded:
            changes = self._view.update_listed(service.procedure_ids())
        else:
            changes = self._view.update(service.summaries() if service is not None else [])
        for name, value in changes:
            self.push(name, value)
            if name == "procedureStates":
                self.push("procedureLeds", self._leds())
        if self._running_state() != running_before:
            self.push("runningProcedureState", self._running_state())
        self.refresh_condition()

    def _running_state(self) -> ProcedureStateEnum:
        """State of the procedure of runningProcedureState: the running one, else the newest."""
        if not self._view.states:
            return ProcedureStateEnum.NONE
        if self._view.running_id:
            paused = self._view.state_of(self._view.running_id) == ProcedureState.PAUSED
            return ProcedureStateEnum.PAUSED if paused else ProcedureStateEnum.RUNNING
        return ProcedureStateEnum[self._view.states[-1]]

    def condition(self) -> tuple[DevState, str, HealthState]:
        if self._service is None or not self._service.healthy:
            reason = self._service_error or "the script engine cannot start worker processes"
            return DevState.FAULT, f"The device is in FAULT: {reason}.", HealthState.FAILED
        degraded = self._service.degraded
        health = (
            HealthState.DEGRADED
            if degraded or self._events.backlog > DEGRADED_BACKLOG
            else HealthState.OK
        )
        note = f" Degraded: {degraded}." if degraded else ""
        state, status, _ = super().condition()
        if state == DevState.DISABLE:
            return state, status + note, health
        running = self._view.running_id
        if self._power == DevState.OFF:
            return DevState.OFF, "The device is OFF: no script can run until On.", health
        if self._power == DevState.STANDBY:
            doing = f"procedure {running} runs to its end" if running else "no procedure runs"
            return (
                DevState.STANDBY,
                f"The device is in STANDBY: no new script starts until On; {doing}.",
                health,
            )
        if running:
            how = "paused" if self._view.state_of(running) == "PAUSED" else "running"
            return DevState.RUNNING, f"Procedure {running} is {how}.{note}", health
        return DevState.ON, f"The device is ON: no procedure is running.{note}", health

    # ----- request helpers ------------------------------------------------------------------
    def _engine(self, origin: str, new_script: bool = False) -> ScriptExecutionService:
        """The service, if commands are allowed now (raises DevFailed otherwise);
        ``new_script``: the command starts script work, which OFF and STANDBY refuse (call it
        holding ``_power_lock``)."""
        if new_script and self._power != DevState.ON:
            self._fail(
                "OET_STATE_CONFLICT",
                f"{self.get_name()} is {self._power.name} (commandedState); send On to run scripts",
                origin,
            )
        if self._admin_mode not in COMMAND_ACCEPTING_ADMIN_MODES:
            self._fail(
                "OET_DEVICE_OFFLINE",
                f"{self.get_name()} is {self._admin_mode.name} (adminMode); set adminMode to "
                "ONLINE or ENGINEERING to use it",
                origin,
            )
        if self._service is None:
            self._fail("OET_ENGINE_UNAVAILABLE", self._service_error or "no script engine", origin)
        return self._service

    def _call(self, origin: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except OetError as exc:
            self._fail(exc.code, str(exc), origin)

    def _accept(self, origin: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Ask the engine to accept a long-running command: a bad request is DevFailed
        (OET_INVALID_REQUEST), any other refusal raises :class:`Rejected`."""
        try:
            return fn(*args, **kwargs)
        except OetError as exc:
            if exc.code == "OET_INVALID_REQUEST":
                self._fail(exc.code, str(exc), origin)
            raise Rejected(f"{exc.code}: {exc}") from exc

    def _lrc_reply(self, origin: str, fn: Callable[..., list[Any]], *args: Any) -> list[Any]:
        """Run a long-running command's body; a :class:`Rejected` becomes the REJECTED reply."""
        try:
            return fn(*args)
        except Rejected as exc:
            self.logger.info("%s rejected: %s", origin, exc)
            return [[int(ResultCode.REJECTED)], [str(exc)]]

    def _finish_now(self, command_id: str, code: ResultCode, message: str) -> list[Any]:
        """A long-running command with nothing to wait for: started and completed at once."""
        status = TaskStatus.COMPLETED if code == ResultCode.OK else TaskStatus.FAILED
        self.submit(self.lrc_started, command_id)
        self.submit(self.lrc_finish, command_id, status, code, message)
        return [[int(ResultCode.STARTED)], [command_id]]

    def _decode(self, argin: str, origin: str, allowed: set[str]) -> dict[str, Any]:
        """:meth:`JsonRequests._decode`, and ``script_args`` bounded in size."""
        body = super()._decode(argin, origin, allowed)
        if "script_args" in body:
            size = len(json.dumps(body["script_args"]))
            if size > MAX_SCRIPT_ARGS_CHARS:
                self._fail(
                    "OET_INVALID_REQUEST",
                    f"script_args of {size} characters refused; at most {MAX_SCRIPT_ARGS_CHARS}",
                    origin,
                )
        return body

    def _procedure_id(self, body: dict[str, Any], origin: str) -> int | None:
        pid = body.get("procedure_id")
        if pid is None:
            return None
        if isinstance(pid, bool) or not isinstance(pid, int) or pid < 1:
            self._fail("OET_INVALID_REQUEST", "procedure_id must be a positive integer", origin)
        return pid

    def _check_summary_size(self, pid: int | None, script_args: Any, origin: str) -> None:
        """Refuse a Start whose arguments would make the procedure's summary too large."""
        service = self._service
        if pid is None or not script_args or service is None:
            return
        try:
            current = len(dumps(service.get(pid)))
        except OetError:
            return  # an unknown id: the engine says so
        total = current + len(json.dumps(script_args))
        if total > MAX_SUMMARY_CHARS:
            self._fail(
                "OET_INVALID_REQUEST",
                f"procedure {pid}'s summary would take {total} characters with these "
                f"script_args; at most {MAX_SUMMARY_CHARS}",
                origin,
            )

    def _begin(self, command_id: str, kind: str, procedure_id: int, extra: list[int]) -> list[Any]:
        self.submit(self._track, command_id, kind, procedure_id, extra)
        return [[int(ResultCode.STARTED)], [command_id]]

    def _track(self, command_id: str, kind: str, procedure_id: int, extra: list[int]) -> None:
        """A long-running command begins (event thread): IN_PROGRESS, followed until done.
        One task, not four: each hop between tasks can cost the next event a thread switch."""
        self.lrc_started(command_id)
        self._view.track(command_id, kind, procedure_id, extra, self._lookup)
        if kind == "Start":
            self._apply_untracked_progress(command_id, procedure_id)
        self._complete_ready()

    def _complete_ready(self) -> None:
        for command_id, status, code, message in self._view.completions(self._lookup):
            self.lrc_finish(command_id, status, code, message)

    # ----- OET commands ---------------------------------------------------------------------
    @command(
        dtype_in=str,
        dtype_out=_LRC_REPLY,
        doc_in='{"script": {"script_type": "filesystem"|"git", "script_uri": ..., "git_args": '
        '{...}, "create_env": false}, "script_args": {"init": {"args": [], "kwargs": {}}}}',
        doc_out="([ResultCode.STARTED], [command_id]); completes when the procedure is READY.",
    )
    def Prepare(self, argin: str) -> list[Any]:
        """Create a procedure and load its script; it exists (CREATING) when this returns."""
        return self._lrc_reply("Prepare", self._prepare, argin)

    def _prepare(self, argin: str) -> list[Any]:
        allowed = {"script", "script_uri", "script_type", "git_args", "create_env", "script_args"}
        body = self._decode(argin, "Prepare", allowed)
        user = self._requester(body, "Prepare")
        command_id = generate_command_id("Prepare")
        request = self._call("Prepare", PrepareRequest.from_dict, body, command_id=command_id)
        request = replace(request, requested_by=user)
        with self._power_lock:
            service = self._engine("Prepare", new_script=True)
            summary = self._accept("Prepare", service.prepare, request)
        return self._begin(command_id, "Prepare", summary["id"], [])

    @command(
        dtype_in=str,
        dtype_out=_LRC_REPLY,
        doc_in='{"procedure_id": int (optional: the newest READY one), "script_args": {"main": '
        '{"args": [], "kwargs": {}}}}',
        doc_out="([ResultCode.STARTED], [command_id]); completes when main returns.",
    )
    def Start(self, argin: str) -> list[Any]:
        """Run main of a READY procedure."""
        return self._lrc_reply("Start", self._start, argin)

    def _start(self, argin: str) -> list[Any]:
        body = self._decode(argin, "Start", {"procedure_id", "script_args"})
        user = self._requester(body, "Start")
        pid = self._procedure_id(body, "Start")
        fn_args = self._call("Start", parse_script_args, body.get("script_args"))
        if "init" in fn_args:
            self._fail(
                "OET_INVALID_REQUEST", "init arguments are given to Prepare, not Start", "Start"
            )
        self._check_summary_size(pid, body.get("script_args"), "Start")
        command_id = generate_command_id("Start")
        with self._power_lock:
            service = self._engine("Start", new_script=True)
            start = self._activity_service.start if self._activity_service else service.start
            summary = self._accept("Start", start, pid, fn_args.get("main"), user)
        return self._begin(command_id, "Start", summary["id"], [])

    @command(
        dtype_in=str,
        dtype_out=_LRC_REPLY,
        doc_in='{"procedure_id": int (optional: the running one), "run_abort": false, '
        '"grace": seconds after SIGTERM before SIGKILL (optional: StopGraceSeconds)}',
        doc_out="([ResultCode.STARTED], [command_id]); completes when the procedure is STOPPED.",
    )
    def Stop(self, argin: str) -> list[Any]:
        """Stop a procedure; with run_abort, then run the abort script for this subarray."""
        return self._lrc_reply("Stop", self._stop_command, argin)

    def _stop_command(self, argin: str) -> list[Any]:
        body = self._decode(argin, "Stop", {"procedure_id", "run_abort", "grace"})
        user = self._requester(body, "Stop")
        service = self._engine("Stop")
        pid = self._procedure_id(body, "Stop")
        run_abort = body.get("run_abort", False)
        if not isinstance(run_abort, bool):
            self._fail("OET_INVALID_REQUEST", "run_abort must be true or false", "Stop")
        return self._stop(service, "Stop", pid, run_abort, user, body.get("grace"))

    @command(
        dtype_in=str,
        dtype_out=_LRC_REPLY,
        doc_in='{"procedure_id": int (the READY procedure to start), "run_abort": false, '
        '"force": false, "script_args": {"main": {"args": [], "kwargs": {}}}}',
        doc_out="([ResultCode.STARTED], [command_id]); completes when the new procedure is "
        'RUNNING, with {"stopped": [summaries], "started": summary}.',
    )
    def Switch(self, argin: str) -> list[Any]:
        """Target-of-opportunity switch in one command: stop whatever runs on this subarray
        (``run_abort``: then run its abort script and wait for it), then start the READY
        procedure. ``force`` kills the running script at once instead of giving it the stop
        grace (for a script that ignores SIGTERM)."""
        return self._lrc_reply("Switch", self._switch, argin)

    def _switch(self, argin: str) -> list[Any]:
        body = self._decode(argin, "Switch", {"procedure_id", "run_abort", "force", "script_args"})
        user = self._requester(body, "Switch")
        pid = self._procedure_id(body, "Switch")
        if pid is None:
            self._fail("OET_INVALID_REQUEST", "procedure_id (the READY one) is required", "Switch")
        flags = {key: body.get(key, False) for key in ("run_abort", "force")}
        for key, value in flags.items():
            if not isinstance(value, bool):
                self._fail("OET_INVALID_REQUEST", f"{key} must be true or false", "Switch")
        fn_args = self._call("Switch", parse_script_args, body.get("script_args"))
        if "init" in fn_args:
            self._fail("OET_INVALID_REQUEST", "init arguments are given to Prepare", "Switch")
        command_id = generate_command_id("Switch")
        with self._power_lock:
            service = self._engine("Switch", new_script=True)
            target = self._accept("Switch", service.get, pid)
            if target["state"] != ProcedureState.READY:
                raise Rejected(
                    f"OET_STATE_CONFLICT: procedure {pid} is {target['state']}, not READY"
                )
            running = service.running_id()
            stopped: list[dict[str, Any]] = []
            if running is not None:
                grace = 0.0 if flags["force"] else None
                stopped = self._accept(
                    "Switch", service.stop, running, run_abort=flags["run_abort"],
                    requested_by=user, grace=grace,
                )  # fmt: skip
                if self._activity_service is not None:
                    self._activity_service.note(running, "stopped", user)
        self.submit(self.lrc_started, command_id)
        threading.Thread(
            target=self._switch_over,
            args=(command_id, service, pid, [s["id"] for s in stopped], fn_args.get("main"), user),
            name=f"switch-{pid}",
            daemon=True,
        ).start()
        return [[int(ResultCode.STARTED)], [command_id]]

    def _switch_over(
        self,
        command_id: str,
        service: ScriptExecutionService,
        pid: int,
        stopped: list[int],
        main: Any,
        user: str,
    ) -> None:
        """The switch's second half (own thread): once what was stopped (and its abort
        script) has ended, start the new procedure; the command completes when it runs."""
        timeout = service.config.stop_grace_seconds + SWITCH_ABORT_TIMEOUT
        try:
            for stopped_id in stopped:
                service.wait_for_state(stopped_id, FINAL_PROCEDURE_STATES, timeout)
            start = self._activity_service.start if self._activity_service else service.start
            started = start(pid, main, user)
            result = {"stopped": [service.get(i) for i in stopped], "started": started}
            self.submit(self.lrc_finish, command_id, TaskStatus.COMPLETED, ResultCode.OK,
                        dumps(result))  # fmt: skip
        except (OetError, TimeoutError) as exc:
            self.logger.warning("Switch to procedure %s failed: %s", pid, exc)
            message = f"switch to procedure {pid} failed: {exc}"
            self.submit(self.lrc_finish, command_id, TaskStatus.FAILED, ResultCode.FAILED, message)

    @command(
        dtype_out=_LRC_REPLY,
        doc_out="([ResultCode.STARTED], [command_id]); completes when the running procedure "
        "is STOPPED (and the abort script has been started), or when the abort script run "
        "with nothing to stop has ended; the result lists the summaries concerned.",
    )
    def Abort(self) -> list[Any]:
        """Abort on this subarray, accepted in every state: stop the running procedure and run
        the abort script (AbortScript) for the subarray. With nothing running the abort script
        runs alone; with no AbortScript the running procedure is stopped without one."""
        return self._lrc_reply("Abort", self._abort, "Abort")

    def _abort(self, origin: str) -> list[Any]:
        command_id = generate_command_id(origin)
        service = self._service
        if service is None:
            self.logger.info("%s: nothing to abort (no script engine)", origin)
            return self._finish_now(command_id, ResultCode.OK, "[]")
        # An OFFLINE device may still run a script started before; it runs no new one.
        enabled = self._admin_mode in COMMAND_ACCEPTING_ADMIN_MODES
        user = self._tango_client()
        stopped, abort = self._accept(origin, service.abort, when_idle=enabled, requested_by=user)
        if stopped is not None and self._activity_service is not None:
            self._activity_service.note(stopped["id"], "aborted", user)
        if stopped is not None and abort is not None:
            return self._begin(command_id, "Stop", stopped["id"], [abort["id"]])
        if stopped is not None:
            self.logger.warning(
                "%s: no AbortScript is configured, so procedure %s is stopped without an "
                "abort script",
                origin,
                stopped["id"],
            )
            return self._begin(command_id, "Stop", stopped["id"], [])
        if abort is not None:
            self.logger.info("%s: nothing runs; running the abort script alone", origin)
            return self._begin(command_id, "AbortScript", abort["id"], [])
        why = "no AbortScript is configured" if enabled else "the device is not ONLINE"
        self.logger.info("%s: nothing runs and %s: nothing to do", origin, why)
        return self._finish_now(command_id, ResultCode.OK, "[]")

    def _stop(
        self,
        service: ScriptExecutionService,
        name: str,
        pid: int | None,
        abort: bool,
        user: str,
        grace: float | None = None,
    ) -> list[Any]:
        command_id = generate_command_id(name)
        summaries = self._accept(
            name, service.stop, pid, run_abort=abort, requested_by=user, grace=grace
        )
        if self._activity_service is not None:
            action = "aborted" if abort else "stopped"
            self._activity_service.note(summaries[0]["id"], action, user)
        extra = [s["id"] for s in summaries[1:]]
        return self._begin(command_id, "Stop", summaries[0]["id"], extra)

    @command(
        dtype_in=str,
        dtype_out=_LRC_REPLY,
        doc_in='{"procedure_id": int (optional: the running one), "immediate": false (true: '
        "freeze its processes with SIGSTOP at once instead of at the next checkpoint), "
        '"requested_by": who asks (recorded)}',
        doc_out="([ResultCode.STARTED], [command_id]); completes when the procedure is PAUSED.",
    )
    def Pause(self, argin: str) -> list[Any]:
        """Pause a running procedure at its next checkpoint (or freeze it at once)."""
        return self._lrc_reply("Pause", self._pause, argin)

    def _pause(self, argin: str) -> list[Any]:
        body = self._decode(argin, "Pause", {"procedure_id", "immediate"})
        service = self._engine("Pause")
        pid = self._procedure_id(body, "Pause")
        immediate = body.get("immediate", False)
        if not isinstance(immediate, bool):
            self._fail("OET_INVALID_REQUEST", "immediate must be true or false", "Pause")
        user = self._requester(body, "Pause")
        command_id = generate_command_id("Pause")
        summary = self._accept("Pause", service.pause, pid, immediate=immediate, user=user)
        return self._begin(command_id, "Pause", summary["id"], [])

    @command(
        dtype_in=str,
        dtype_out=_LRC_REPLY,
        doc_in='{"procedure_id": int (optional: the paused one), "requested_by": who asks (recorded)}',
        doc_out="([ResultCode.STARTED], [command_id]); completes when the procedure is RUNNING.",
    )
    def Resume(self, argin: str) -> list[Any]:
        """Resume a PAUSED procedure where it stopped (or withdraw a pause not yet reached)."""
        return self._lrc_reply("Resume", self._resume, argin)

    def _resume(self, argin: str) -> list[Any]:
        body = self._decode(argin, "Resume", {"procedure_id"})
        service = self._engine("Resume")
        pid = self._procedure_id(body, "Resume")
        user = self._requester(body, "Resume")
        command_id = generate_command_id("Resume")
        summary = self._accept("Resume", service.resume, pid, user=user)
        self.submit(self._withdraw_pause, summary["id"])
        return self._begin(command_id, "Resume", summary["id"], [])

    def _withdraw_pause(self, procedure_id: int) -> None:
        """A Pause the script had not reached yet ends, ABORTED, with the Resume."""
        command_id = self._view.command_of(procedure_id, "Pause")
        if command_id is not None and self._view.state_of(procedure_id) != "PAUSED":
            self._view.untrack(command_id)
            self.lrc_finish(
                command_id,
                TaskStatus.ABORTED,
                ResultCode.ABORTED,
                f"pause of procedure {procedure_id} withdrawn by Resume before a checkpoint",
            )

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='{"procedure_id": int, "request_id": str (inputRequest\'s "id"), "value": the '
        'answer (one of the request\'s choices, if it has any), "requested_by": who answers (recorded)}',
        doc_out="The closed request as JSON: {id, outcome: answered, value, user, ...}.",
    )
    def Answer(self, argin: str) -> str:
        """Answer a question a script asked (see inputRequest)."""
        body = self._decode(argin, "Answer", {"procedure_id", "request_id", "value"})
        service = self._engine("Answer")
        pid = self._procedure_id(body, "Answer")
        if pid is None:
            self._fail("OET_INVALID_REQUEST", "procedure_id is required", "Answer")
        request_id = body.get("request_id")
        if isinstance(request_id, int) and not isinstance(request_id, bool):
            request_id = str(request_id)
        if not isinstance(request_id, str) or not request_id:
            self._fail("OET_INVALID_REQUEST", "request_id is required (a string)", "Answer")
        if "value" not in body:
            self._fail("OET_INVALID_REQUEST", "value is required", "Answer")
        if len(dumps(body["value"])) > MAX_ANSWER_CHARS:
            self._fail(
                "OET_INVALID_REQUEST",
                f"value is longer than {MAX_ANSWER_CHARS} characters as JSON",
                "Answer",
            )
        user = self._requester(body, "Answer")
        return dumps(
            self._call("Answer", service.answer, pid, request_id, body["value"], user=user)
        )

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in="A procedure id (e.g. 12) or the command id that prepared or started it.",
        doc_out="The procedure summary as JSON.",
    )
    def GetProcedure(self, argin: str) -> str:
        """One procedure's summary."""
        text = (argin or "").strip()
        if self._service is None:
            self._fail(
                "OET_ENGINE_UNAVAILABLE", self._service_error or "no script engine", "GetProcedure"
            )
        if text.isdigit():
            return dumps(self._call("GetProcedure", self._service.get, int(text)))
        pid = self._view.procedure_of(text)
        if pid is None:
            pid = next(
                (s["id"] for s in self._service.summaries() if s.get("command_id") == text), None
            )
        if pid is None:
            self._fail("OET_NOT_FOUND", f"no procedure for {text!r}", "GetProcedure")
        return dumps(self._call("GetProcedure", self._service.get, pid))

    # ----- OET attributes -------------------------------------------------------------------
    @attribute(
        dtype=str, doc="JSON list of the procedure summaries in the history window, oldest first."
    )
    def procedures(self) -> str:
        return self._view.procedures_json

    @attribute(
        dtype=str,
        doc="JSON list of the activity summaries (RunActivity) in the history window, oldest "
        "first.",
    )
    def activities(self) -> str:
        return self._activity_view.activities_json

    @attribute(dtype="DevLong", doc="Id of the RUNNING procedure, 0 when none runs.")
    def runningProcedureId(self) -> int:
        return self._view.running_id

    @attribute(
        dtype=("DevLong",),
        max_dim_x=ProcedureView.MAX_LISTED,
        doc="Ids of the procedures in the history window (aligned with procedureStates).",
    )
    def procedureIds(self) -> list[int]:
        return self._view.ids

    @attribute(
        dtype=("str",),
        max_dim_x=ProcedureView.MAX_LISTED,
        doc="States of the procedures in the history window (aligned with procedureIds).",
    )
    def procedureStates(self) -> list[str]:
        return self._view.states

    @attribute(
        dtype=ProcedureStateEnum,
        doc="State of the running procedure, else of the newest one (NONE without any), as "
        "an enum Taranta can colour.",
    )
    def runningProcedureState(self) -> ProcedureStateEnum:
        return self._running_state()

    @attribute(
        dtype=("DevState",),
        max_dim_x=ProcedureView.MAX_LISTED,
        doc="States of the procedures in the history window (aligned with procedureIds) as "
        "Tango states, for LED widgets: RUNNING running, ON ready/complete, INIT loading, "
        "FAULT failed, OFF stopped, STANDBY paused.",
    )
    def procedureLeds(self) -> list[DevState]:
        return self._leds()

    def _leds(self) -> list[DevState]:
        return [PROCEDURE_LEDS.get(state, DevState.UNKNOWN) for state in self._view.states]

    @attribute(
        dtype=str,
        doc='The latest engine or script event as JSON {"seq", "topic", "msg_src", '
        '"timestamp", ...}; subscribe to change events to receive every event, in order.',
    )
    def lastEvent(self) -> str:
        return self._last_event

    @attribute(
        dtype=str,
        doc='JSON list of the questions scripts wait on, [{"procedure_id", "id", "prompt", '
        '"choices", "default", "timeout", "asked_at"}], oldest procedure first; answer with '
        "Answer. Change events on every question asked or closed.",
    )
    def inputRequest(self) -> str:
        return self._input_request()

    @attribute(dtype=str, doc="msg of the latest user.script.announce event.")
    def scriptMessage(self) -> str:
        return self._script_message

    @attribute(dtype="DevUShort", doc="Subarray served by this device.")
    def subarrayId(self) -> int:
        if self._service is not None:
            return self._service.config.subarray_id
        return int(self.engine_settings().get("subarray_id", 0))
