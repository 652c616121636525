"""ActivityService: runs SBD activities as procedures of a ScriptExecutionService and follows
their lifecycle through the engine's events."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from .. import events as topics
from ..events import Event
from ..procedure.domain import FunctionArgs, PrepareRequest, ProcedureState, audit_entry
from ..procedure.errors import InvalidRequest, ProcedureNotFound, StateConflict
from ..procedure.service import ScriptExecutionService
from ..procedure.store import JsonTable
from .domain import (
    FOLLOWS_PROCEDURE,
    Activity,
    ActivityRequest,
    ActivityScript,
    ActivityState,
    merge_args,
    with_create_env,
)
from .sbd_store import DirectorySbdStore, SbdStore

LOGGER = logging.getLogger(__name__)


class ActivityNotFound(ProcedureNotFound):
    def __init__(self, activity_id: object):
        super().__init__(activity_id)
        self.args = (f"No information available for activity ID={activity_id}",)


class ActivityService:
    """One per subarray, beside that subarray's script execution service."""

    def __init__(self, engine: ScriptExecutionService, sbds: SbdStore | None = None):
        self._engine = engine
        config = engine.config
        self.sbds = sbds or DirectorySbdStore(config.sb_store)
        self._instances = Path(config.sb_store) / "instances"
        self._history_size = config.history_size
        self._lock = threading.Lock()
        self._activities: dict[int, Activity] = {}
        self._pending: dict[str, Activity] = {}
        self._by_procedure: dict[int, Activity] = {}
        self._next_id = config.next_id(0)
        self._store = JsonTable(config.state_database, "activities")
        self._recover()
        self._subscription = engine.events.subscribe(self._follow)

    # -- queries ---------------------------------------------------------------------------
    def get(self, activity_id: int) -> dict[str, Any]:
        with self._lock:
            try:
                return self._activities[int(activity_id)].summary()
            except (KeyError, ValueError, TypeError):
                raise ActivityNotFound(activity_id) from None

    def summaries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [a.summary() for a in self._activities.values()]

    # -- commands --------------------------------------------------------------------------
    def run(
        self,
        request: ActivityRequest,
        command_id: str | None = None,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        """Create a procedure for the activity; it starts by itself once READY unless
        ``prepare_only``. Returns the activity summary (REQUESTED). ``requested_by`` goes into
        the audit trails of the activity and its procedure."""
        sbd = self.sbds.get(request.sbd_id)
        scripts = sbd["activities"]
        if request.activity_name not in scripts:
            raise InvalidRequest(
                f"SBD {request.sbd_id} has no activity {request.activity_name!r}; "
                f"it has {', '.join(sorted(scripts))}"
            )
        script = ActivityScript.from_sbd(request.activity_name, scripts[request.activity_name])
        running = self._engine.running_id()
        if not request.prepare_only and running is not None:
            raise StateConflict(
                f"procedure {running} is running on this subarray; stop it or use prepare_only"
            )
        with self._lock:
            activity_id = self._next_id
            self._next_id = self._engine.config.next_id(self._next_id)
        sbi_id = f"sbi-oet-{time.strftime('%Y%m%d', time.gmtime())}-{activity_id:05d}-{secrets.token_hex(2)}"
        sb_json = self._write_instance(sbi_id, sbd)
        init = merge_args(script.function_args.get("init"), request.script_args.get("init"))
        main = merge_args(script.function_args.get("main"), request.script_args.get("main"))
        main = FunctionArgs(main.args, {**main.kwargs, "sb_json": str(sb_json), "sbi_id": sbi_id})
        activity = Activity(
            id=activity_id,
            activity_name=request.activity_name,
            sbd_id=request.sbd_id,
            sbi_id=sbi_id,
            prepare_only=request.prepare_only,
            script_args={"init": init, "main": main},
            activity_states=[(ActivityState.TODO, time.time())],
            command_id=command_id or f"activity-{activity_id}-{secrets.token_hex(4)}",
            audit=[audit_entry("created", requested_by)],
        )
        with self._lock:
            self._pending[activity.command_id] = activity
        prepare = PrepareRequest(
            with_create_env(script.script, request.create_env),
            init_args=init,
            autostart_args=None if request.prepare_only else main,
            command_id=activity.command_id,
            requested_by=requested_by,
        )
        try:
            self._engine.prepare(prepare)
        except Exception:
            with self._lock:
                self._pending.pop(activity.command_id, None)
            sb_json.unlink(missing_ok=True)
            raise
        # The engine's "created" event has linked the activity to its procedure by now.
        return self.get(activity_id)

    def start(
        self,
        procedure_id: int | None = None,
        main_args: FunctionArgs | None = None,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        """Start a READY procedure (default: the newest READY one), as the engine does.

        A procedure prepared by an activity (``prepare_only``) runs ``main`` with the
        activity's arguments merged with ``main_args`` (the same rule as at run time), so a
        later start keeps the SBD's arguments, ``sb_json`` and ``sbi_id``; the activity
        summary records the arguments used.
        """
        if procedure_id is None:
            ready = [s["id"] for s in self._engine.summaries() if s["state"] == "READY"]
            procedure_id = ready[-1] if ready else None
        with self._lock:
            activity = self._by_procedure.get(procedure_id) if procedure_id is not None else None
            if activity is None:
                merged = previous = None
            else:
                previous = activity.script_args
                base = previous.get("main") or FunctionArgs()
                merged = merge_args(base, main_args)
                merged = FunctionArgs(merged.args, {**merged.kwargs, **_instance_kwargs(base)})
                activity.script_args = {**previous, "main": merged}
        if activity is None:
            return self._engine.start(procedure_id, main_args, requested_by)
        try:
            summary = self._engine.start(procedure_id, merged, requested_by)
        except Exception:
            with self._lock:
                activity.script_args = previous
            raise
        self.note(procedure_id, "started", requested_by)
        return summary

    def note(self, procedure_id: int, action: str, user: str | None) -> None:
        """Add to the audit trail of the activity running procedure ``procedure_id``, if any
        (the device calls it when such a procedure is stopped or aborted)."""
        with self._lock:
            activity = self._by_procedure.get(procedure_id)
            if activity is None:
                return
            activity.audit.append(audit_entry(action, user))
            self._store.save(activity.id, activity.summary())

    def close(self) -> None:
        self._subscription.close()
        self._store.close()

    # -- following the procedure -----------------------------------------------------------
    def _follow(self, event: Event) -> None:
        """Engine subscriber: runs inside event delivery, so it never calls the engine."""
        payload = event.payload
        if event.topic == topics.PROCEDURE_CREATED:
            command_id = payload["result"].get("command_id")
            with self._lock:
                activity = self._pending.pop(command_id, None)
                if activity is None:
                    return
                activity.procedure_id = payload["procedure_id"]
                self._activities[activity.id] = activity
                self._by_procedure[activity.procedure_id] = activity
            self._advance(activity, ActivityState.REQUESTED)
        elif event.topic == topics.PROCEDURE_STATECHANGE:
            activity = self._by_procedure.get(payload["procedure_id"])
            state = FOLLOWS_PROCEDURE.get(ProcedureState(payload["new_state"]))
            autostarted = payload["new_state"] == "RUNNING" and not (
                activity is None or activity.prepare_only
            )
            if autostarted:  # started by itself, on behalf of whoever created it
                with self._lock:
                    activity.audit.append(audit_entry("started", activity.audit[0]["user"]))
            if activity is not None and state is not None:
                self._advance(activity, state)

    def _advance(self, activity: Activity, state: ActivityState) -> None:
        with self._lock:
            if not activity.record(state):
                return
            summary = activity.summary()
            self._store.save(activity.id, summary)
            if state.is_final:
                self._by_procedure.pop(activity.procedure_id, None)
                self._evict()
        self._engine.events.publish(
            topics.ACTIVITY_PREFIX + state.lower(),
            self._engine.config.name,
            {
                "activity_id": activity.id,
                "procedure_id": activity.procedure_id,
                "new_state": str(state),
                "result": summary,
            },
        )

    # -- helpers ---------------------------------------------------------------------------
    def _write_instance(self, sbi_id: str, sbd: dict[str, Any]) -> Path:
        self._instances.mkdir(parents=True, exist_ok=True)
        path = self._instances / f"{sbi_id}.json"
        path.write_text(json.dumps(sbd, indent=2))
        return path

    def _evict(self) -> None:
        """Forget the oldest finished activities beyond the history window, with their SB
        instance files (no request can refer to them any more)."""
        finished = [a.id for a in self._activities.values() if a.state.is_final]
        excess = finished[: max(0, len(finished) - self._history_size)]
        for activity_id in excess:
            self._remove_instance(self._activities.pop(activity_id))
        if excess:
            self._store.delete(excess)

    def _remove_instance(self, activity: Activity) -> None:
        main = activity.script_args.get("main")
        sb_json = _instance_kwargs(main).get("sb_json") if main else None
        if not isinstance(sb_json, str):
            return
        path = Path(sb_json)
        if path.parent.resolve() == self._instances.resolve():  # only files this service wrote
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                LOGGER.warning("cannot remove SB instance file %s: %s", path, exc)

    def _recover(self) -> None:
        for summary in self._store.load():
            activity = Activity.from_summary(summary)
            if not activity.state.is_final:
                activity.record(ActivityState.FAILED)
                self._store.save(activity.id, activity.summary())
            self._activities[activity.id] = activity
            self._next_id = max(self._next_id, self._engine.config.next_id(activity.id))
        self._evict()


def _instance_kwargs(main: FunctionArgs) -> dict[str, Any]:
    """The keyword arguments an activity always gives ``main`` (the SB instance's)."""
    return {k: main.kwargs[k] for k in ("sb_json", "sbi_id") if k in main.kwargs}
