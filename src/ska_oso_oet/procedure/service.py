"""ScriptExecutionService: prepare, start, stop and list procedures.

Every procedure has one driver thread that owns its worker: it walks the procedure through
CREATING → IDLE → LOADING → IDLE → [INITIALISING →] READY and then blocks on the worker's
channel, turning what the worker reports into state changes and events. Commands
(:meth:`start`, :meth:`stop`) only record the request, send one message or signal, and return:
a Tango command calling them never waits for a script.

State changes and events are made under one lock, so subscribers see them in the order they
happened; each change is also written to the store, so history survives a restart.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import psutil

from .. import events as topics
from ..events import EventBus
from . import protocol
from .config import OetConfig
from .dependencies import DependencySpecError, import_roots
from .domain import (
    FileSystemScript,
    FunctionArgs,
    GitArgs,
    GitScript,
    PrepareRequest,
    Procedure,
    ProcedureState,
)
from .environments import EnvironmentCache, EnvironmentLease, Progress
from .errors import (
    EngineUnavailable,
    InvalidRequest,
    LimitExceeded,
    OetError,
    ProcedureNotFound,
    StateConflict,
)
from .git import Checkout, GitCache
from .launcher import WorkerConnection, WorkerLauncher
from .store import ProcedureStore

LOGGER = logging.getLogger(__name__)
State = ProcedureState

_LIFECYCLE_TOPICS = {
    State.RUNNING: topics.PROCEDURE_STARTED,
    State.PAUSED: topics.PROCEDURE_PAUSED,
    State.COMPLETE: topics.PROCEDURE_COMPLETE,
    State.FAILED: topics.PROCEDURE_FAILED,
    State.STOPPED: topics.PROCEDURE_STOPPED,
}
#: Worker messages that come from the script (subject to back-pressure).
_SCRIPT_MESSAGES = frozenset({protocol.OUTPUT, protocol.LOG, protocol.EVENT})
#: Longest wait of :meth:`ScriptExecutionService.answer` for the worker to take an answer.
_ANSWER_TIMEOUT = 5.0
#: Closed requests kept in a procedure's history (the oldest are dropped beyond this).
_MAX_RECORDED_REQUESTS = 200
#: How long an automatically started procedure (the abort script) waits for the stopped
#: procedure to leave RUNNING, beyond the stop grace period.
_AUTOSTART_MARGIN = 10.0


@dataclass(eq=False)
class _Run:
    """A procedure plus the runtime facts the service needs to drive it."""

    procedure: Procedure
    autostart: FunctionArgs | None = None
    worker: WorkerConnection | None = None
    worker_started: float | None = None
    stop_requested: bool = False
    #: Set on stop (and at shutdown), so that a clone or environment build in progress gives
    #: up at once: it is handed to GitCache.checkout and EnvironmentCache.acquire.
    cancel: threading.Event = field(default_factory=threading.Event)
    lease: EnvironmentLease | None = None
    #: The git checkout the procedure runs from, leased (never evicted) until it ends.
    checkout: Checkout | None = None
    has_main: bool = False
    #: Grace period of the stop asked for (None: the configured one).
    stop_grace: float | None = None
    #: A pause was sent and the script has not reached a checkpoint yet.
    pause_requested: bool = False
    #: Paused with SIGSTOP (an immediate pause): resumed with SIGCONT, not a message.
    frozen: bool = False
    #: The request an answer is on its way to (its id), so that a second answer is refused.
    answering: str | None = None
    #: Verdicts of the worker on answers, by request id (answered, refused, timeout).
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    driver: threading.Thread | None = field(default=None, repr=False)

    @property
    def id(self) -> int:
        return self.procedure.id

    @property
    def state(self) -> ProcedureState:
        return self.procedure.state


class ScriptExecutionService:
    """Runs user scripts in child processes; one service per subarray."""

    def __init__(
        self,
        config: OetConfig | None = None,
        launcher: WorkerLauncher | None = None,
        bus: EventBus | None = None,
    ):
        self.config = config or OetConfig()
        self.events = bus or EventBus()
        self._owns_launcher = launcher is None
        self._launcher = launcher or WorkerLauncher(
            self.config.preload_modules, self.config.warm_workers, nice=self.config.worker_nice
        )
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._runs: dict[int, _Run] = {}
        self._next_id = self.config.next_id(0)
        self._closed = False
        #: Called before each script message is published, with no lock held; returns False
        #: while the consumer of our events is too far behind (back-pressure, see
        #: :meth:`set_throttle`).
        self._has_room: Callable[[float], bool] | None = None
        self._store = ProcedureStore(self.config.state_database, owner=self.config.name)
        try:
            self._recover()
        except BaseException:
            self._store.close()
            raise

    # -- queries ---------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self._launcher.healthy and not self._closed

    @property
    def degraded(self) -> str | None:
        """Why the engine works impaired right now (e.g. its fork server is restarting)."""
        return self._launcher.degraded

    @property
    def launcher(self) -> WorkerLauncher:
        return self._launcher

    def set_throttle(self, has_room: Callable[[float], bool] | None) -> None:
        """Back-pressure from whoever consumes our events: ``has_room(timeout)`` blocks up to
        ``timeout`` seconds until the consumer can take more and says whether it can. While
        it cannot, the driver stops reading the worker's channel, the socket fills and the
        script's next print, log or event blocks: the script is slowed, nothing is lost, and
        memory stays bounded by the consumer's limit plus one socket buffer."""
        self._has_room = has_room

    def get(self, procedure_id: int) -> dict[str, Any]:
        with self._lock:
            return self._find(procedure_id).procedure.summary()

    def summaries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [run.procedure.summary() for run in self._runs.values()]

    def procedure_ids(self) -> list[int]:
        """Ids of the procedures in the history window (no summaries built: cheap)."""
        with self._lock:
            return list(self._runs)

    def running_id(self) -> int | None:
        with self._lock:
            running = self._running()
            return running.id if running else None

    def wait_for_state(
        self, procedure_id: int, states: Iterable[ProcedureState | str], timeout: float
    ) -> dict[str, Any]:
        wanted = {State(s) for s in states}
        with self._lock:
            run = self._find(procedure_id)
            if not self._changed.wait_for(lambda: run.state in wanted, timeout):
                raise TimeoutError(
                    f"procedure {procedure_id} is {run.state} after {timeout} s, not {sorted(wanted)}"
                )
            return run.procedure.summary()

    # -- commands --------------------------------------------------------------------------
    def prepare(self, request: PrepareRequest) -> dict[str, Any]:
        """Create a procedure (CREATING) and load it in the background."""
        request = self._with_default_repository(request)
        self._check_source(request.script)
        return self._create(request)

    def start(
        self,
        procedure_id: int | None = None,
        main_args: FunctionArgs | None = None,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        """Call ``main`` of a READY procedure (default: the newest READY one); ``requested_by``
        goes into its audit trail."""
        args = main_args or FunctionArgs()
        with self._lock:
            if procedure_id is None:
                ready = [r for r in self._runs.values() if r.state is State.READY]
                if not ready:
                    raise StateConflict("no procedure is READY to start")
                run = ready[-1]
            else:
                run = self._find(procedure_id)
            if run.state is not State.READY or run.stop_requested:
                raise StateConflict(
                    f"procedure {run.id} is {run.state}; only a READY procedure can be started"
                )
            running = self._running()
            if running is not None:
                raise StateConflict(
                    f"procedure {running.id} is already running on this subarray; "
                    "stop it before starting another"
                )
            assert run.worker is not None
            run.procedure.script_args["main"] = args
            run.procedure.note("started", requested_by)
            LOGGER.info("procedure %d started by %s", run.id, run.procedure.audit[-1]["user"])
            self._transition(run, State.RUNNING)
            summary = run.procedure.summary()
            worker = run.worker
        worker.send(protocol.call("main", list(args.args), dict(args.kwargs)))
        return summary

    def stop(
        self,
        procedure_id: int | None = None,
        run_abort: bool = False,
        grace: float | None = None,
        requested_by: str | None = None,
    ) -> list[dict[str, Any]]:
        """Stop a procedure (default: the running one); with ``run_abort`` then run the abort
        script for its subarray as a procedure of its own. ``requested_by`` goes into the
        audit trails of both.

        The script gets SIGTERM and ``grace`` seconds (default: ``stop_grace_seconds``; 0 kills
        at once) before SIGKILL; the procedure ends STOPPED as soon as its processes are gone,
        whatever the script does with SIGTERM."""
        if run_abort and not self.config.abort_script:
            raise InvalidRequest("no abort script is configured (device property AbortScript)")
        if grace is not None:
            if isinstance(grace, bool) or not isinstance(grace, int | float) or not grace >= 0:
                raise InvalidRequest(f"grace must be a number of seconds >= 0, got {grace!r}")
            grace = float(grace)
        with self._lock:
            if procedure_id is None:
                run = self._running()
                if run is None:
                    raise StateConflict("no procedure is running")
            else:
                run = self._find(procedure_id)
            if run.state.is_final:
                raise StateConflict(f"procedure {run.id} has already finished ({run.state})")
            first_request = not run.stop_requested
            run.procedure.note("aborted" if run_abort else "stopped", requested_by)
            LOGGER.info(
                "procedure %d %s by %s",
                run.id,
                run.procedure.audit[-1]["action"],
                run.procedure.audit[-1]["user"],
            )
            run.stop_requested = True
            run.stop_grace = grace
            run.cancel.set()
            worker = run.worker
            summaries = [run.procedure.summary()]
            subarray = run.procedure.script_args.get("init", FunctionArgs()).kwargs.get(
                "subarray_id", self.config.subarray_id
            )
        if worker is not None and first_request:
            self._terminate(worker, grace)
            if run.frozen:
                # A frozen group keeps SIGTERM pending until it runs again.
                worker.signal_group(signal.SIGCONT)
        if run_abort:
            abort = PrepareRequest(
                FileSystemScript(self.config.abort_script),
                init_args=FunctionArgs(kwargs={"subarray_id": subarray}),
                autostart_args=FunctionArgs(),
                requested_by=requested_by,
            )
            summaries.append(self._create(abort))
        return summaries

    def abort(
        self, when_idle: bool = True, requested_by: str | None = None
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Abort on this subarray: stop the running procedure and then run the abort script
        when one is configured; with nothing running, run the abort script alone (when
        ``when_idle``). Returns the summaries of the procedure stopped and of the abort
        procedure, each None when there is none. ``requested_by`` goes into the audit
        trails."""
        with self._lock:
            running = self._running()
        if running is not None:
            try:
                summaries = self.stop(
                    running.id, run_abort=bool(self.config.abort_script), requested_by=requested_by
                )
            except StateConflict:
                pass  # it ended in the meantime: nothing runs now
            else:
                return summaries[0], (summaries[1] if len(summaries) > 1 else None)
        if not (when_idle and self.config.abort_script):
            return None, None
        abort = PrepareRequest(
            FileSystemScript(self.config.abort_script),
            init_args=FunctionArgs(kwargs={"subarray_id": self.config.subarray_id}),
            autostart_args=FunctionArgs(),
            requested_by=requested_by,
        )
        return None, self._create(abort)

    # -- operator control ------------------------------------------------------------------
    def pause(
        self, procedure_id: int | None = None, immediate: bool = False, user: str | None = None
    ) -> dict[str, Any]:
        """Pause a running procedure (default: the running one).

        The script stops at its next checkpoint (``checkpoint()``, an event it publishes, an
        ``ask`` or ``progress``) and the procedure becomes PAUSED then. ``immediate`` freezes
        its whole process group with SIGSTOP instead: PAUSED at once, wherever the script is
        (see docs/scripts.md for why that is dangerous)."""
        with self._lock:
            run = self._active(procedure_id)
            if run.state is State.PAUSED and not (immediate and not run.frozen):
                return run.procedure.summary()
            if run.state not in (State.RUNNING, State.PAUSED):
                raise StateConflict(
                    f"procedure {run.id} is {run.state}; only a RUNNING procedure can be paused"
                )
            worker = run.worker
            assert worker is not None
            run.procedure.note("frozen" if immediate else "paused", user)
            LOGGER.info("procedure %d: pause%s asked by %s", run.id, " (freeze)" * immediate, user)
            if immediate:
                worker.signal_group(signal.SIGSTOP)
                run.frozen = True
                run.pause_requested = False
                if run.state is State.RUNNING:
                    self._transition(run, State.PAUSED)
                return run.procedure.summary()
            run.pause_requested = True
            summary = run.procedure.summary()
        worker.send(protocol.pause())
        return summary

    def resume(self, procedure_id: int | None = None, user: str | None = None) -> dict[str, Any]:
        """Resume a PAUSED procedure where it stopped (or withdraw a pause not yet reached)."""
        with self._lock:
            run = self._active(procedure_id)
            worker = run.worker
            if run.state is State.RUNNING and not run.pause_requested:
                raise StateConflict(f"procedure {run.id} is RUNNING; it is not paused")
            if run.state not in (State.RUNNING, State.PAUSED):
                raise StateConflict(
                    f"procedure {run.id} is {run.state}; only a PAUSED procedure can be resumed"
                )
            assert worker is not None
            run.procedure.note("resumed", user)
            LOGGER.info("procedure %d: resume asked by %s", run.id, user)
            run.pause_requested = False
            if run.frozen:
                run.frozen = False
                worker.signal_group(signal.SIGCONT)
                # A checkpoint pause may be under the freeze: the resume message lifts it too.
                self._transition(run, State.RUNNING)
            summary = run.procedure.summary()
        worker.send(protocol.resume())
        return summary

    def pending_request(self, procedure_id: int) -> dict[str, Any] | None:
        """The question procedure ``procedure_id`` waits on (None: there is none)."""
        with self._lock:
            request = self._find(procedure_id).procedure.request
            return dict(request) if request else None

    def answer(
        self, procedure_id: int, request_id: str, value: Any, user: str | None = None
    ) -> dict[str, Any]:
        """Answer the script's pending question; returns the closed request as recorded.

        Refused (StateConflict) when ``request_id`` is not the pending one (answered, timed
        out, or never asked), and (InvalidRequest) when the value is not one of its choices."""
        request_id = str(request_id)
        with self._lock:
            run = self._find(procedure_id)
            pending = run.procedure.request
            if pending is None or pending["id"] != request_id or run.answering == request_id:
                raise StateConflict(self._stale_reason(run, request_id))
            ok, _ = protocol.match_choice(value, pending.get("choices"))
            if not ok:
                raise InvalidRequest(
                    f"{value!r} is not an answer to request {request_id} of procedure {run.id}; "
                    f"choose one of {pending['choices']!r}"
                )
            worker = run.worker
            assert worker is not None
            run.answering = request_id
            run.verdicts.pop(request_id, None)
        try:
            worker.send(protocol.answer(request_id, value, user))
        except OSError as exc:
            with self._lock:
                run.answering = None
            raise StateConflict(f"procedure {run.id} has ended: {exc}") from None
        with self._lock:
            arrived = self._changed.wait_for(
                lambda: request_id in run.verdicts or run.state.is_final, _ANSWER_TIMEOUT
            )
            if run.answering == request_id:
                run.answering = None
            verdict = run.verdicts.pop(request_id, None)
            if verdict is None:
                if not arrived:
                    raise EngineUnavailable(
                        f"procedure {run.id} did not take the answer within {_ANSWER_TIMEOUT} s"
                    )
                raise StateConflict(f"procedure {run.id} ended before it took the answer")
            if verdict["outcome"] == "refused":
                raise InvalidRequest(f"procedure {run.id} refused the answer: {verdict['reason']}")
            if verdict["outcome"] != "answered":
                raise StateConflict(self._stale_reason(run, request_id))
            run.procedure.note("answered", user)
            self._persist(run)
            return verdict

    def _stale_reason(self, run: _Run, request_id: str) -> str:
        for record in reversed(run.procedure.requests):
            if record["id"] == request_id:
                if record["outcome"] == "answered":
                    how = (
                        f"it was answered {record['value']!r} by {record.get('user') or 'someone'}"
                    )
                else:
                    how = f"it timed out after {record.get('timeout')} s"
                return f"request {request_id} of procedure {run.id} is no longer pending: {how}"
        if run.answering == request_id:
            return f"request {request_id} of procedure {run.id} is already being answered"
        pending = run.procedure.request
        now = f"; the pending request is {pending['id']}" if pending else "; none is pending"
        return f"procedure {run.id} has no pending request {request_id}{now}"

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every active procedure (recorded as STOPPED), cancel clones and environment
        builds in progress, wait for the driver threads, then close the store."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            active = [r for r in self._runs.values() if not r.state.is_final]
            for run in active:
                run.stop_requested = True
                run.cancel.set()  # a clone or environment build in progress ends now
            self._changed.notify_all()
        grace = min(self.config.stop_grace_seconds, 1.0)
        for run in active:
            if run.worker is not None:
                self._terminate(run.worker, grace)
        deadline = time.monotonic() + timeout
        for run in active:
            if run.driver is not None and run.driver is not threading.current_thread():
                run.driver.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            for run in active:
                if not run.state.is_final:  # a driver stuck beyond the timeout
                    LOGGER.error("procedure %d did not end during shutdown", run.id)
                    self._transition(run, State.STOPPED)
            self._store.close()
        if self._owns_launcher:
            self._launcher.close()

    # -- lifecycle -------------------------------------------------------------------------
    def _create(self, request: PrepareRequest) -> dict[str, Any]:
        with self._lock:
            if self._closed:
                raise EngineUnavailable("the script execution service is shut down")
            if not self._launcher.healthy:
                raise EngineUnavailable("worker processes cannot be started")
            unfinished = sum(1 for r in self._runs.values() if not r.state.is_final)
            if unfinished >= self.config.max_prepared:
                raise LimitExceeded(
                    f"{unfinished} procedures are prepared or running on this subarray, the "
                    f"most allowed (MaxPrepared / OET_MAX_PREPARED = {self.config.max_prepared})"
                    "; stop or start some first"
                )
            run = _Run(Procedure.new(self._next_id, request), autostart=request.autostart_args)
            self._next_id = self.config.next_id(self._next_id)
            self._runs[run.id] = run
            summary = run.procedure.summary()
            LOGGER.info("procedure %d created by %s", run.id, run.procedure.audit[0]["user"])
            self._publish(topics.PROCEDURE_CREATED, run.id, result=summary)
            self._persist(run)
            run.driver = threading.Thread(
                target=self._drive, args=(run,), name=f"oet-procedure-{run.id}", daemon=True
            )
            run.driver.start()
        return summary

    def _drive(self, run: _Run) -> None:
        worker = None
        try:
            self._transition(run, State.IDLE)
            path, python, extras = self._materialise(run)
            with self._lock:
                if run.stop_requested:
                    self._transition(run, State.STOPPED)
                    return
                self._transition(run, State.LOADING)
            worker = self._launcher.spawn(python)
            with contextlib.suppress(psutil.Error):
                run.worker_started = psutil.Process(worker.pid).create_time()
            with self._lock:
                run.worker = worker
                self._persist(run)
                stopping = run.stop_requested
            if stopping:
                worker.kill()
            else:
                limits: protocol.Limits = {
                    "memory_bytes": self.config.script_memory_bytes,
                    "max_line_length": self.config.max_line_length,
                }
                worker.send(protocol.load(path, limits, **extras))
            self._pump(run, worker)
        except OetError as exc:  # an expected failure (git, environment): its message says why
            with self._lock:
                if run.stop_requested and not run.state.is_final:
                    self._transition(run, State.STOPPED)
            self._fail(run, str(exc), None)
        except Exception as exc:  # a broken procedure must never break the service
            LOGGER.exception("procedure %d failed in the engine", run.id)
            self._fail(run, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        finally:
            if run.lease is not None:
                run.lease.release()
            if run.checkout is not None:
                run.checkout.release()
            if worker is not None:
                # Nothing of a finished procedure may outlive it, grandchildren included.
                if worker.group_alive():
                    worker.kill()
                worker.close()

    def _pump(self, run: _Run, worker: WorkerConnection) -> None:
        while (messages := worker.receive()) is not None:
            for message in messages:
                if message.get("msg") in _SCRIPT_MESSAGES:
                    self._wait_for_room()
                self._handle(run, worker, message)
        code = worker.exit_code()
        with self._lock:
            if run.state.is_final:
                return
            if run.stop_requested:
                self._transition(run, State.STOPPED)
                return
            state = run.state
        self._fail(
            run,
            f"The script process exited unexpectedly (exit code {code}) while {state}",
            None,
        )

    def _wait_for_room(self) -> None:
        has_room = self._has_room
        if has_room is None:
            return
        while not has_room(1.0):
            if self._closed:
                return

    def _handle(self, run: _Run, worker: WorkerConnection, message: dict[str, Any]) -> None:
        kind = message.get("msg")
        if kind == "output":
            self._publish(
                topics.SCRIPT_STDOUT,
                run.id,
                message.get("ts"),
                stream=message["stream"],
                line=message["line"],
            )
        elif kind == "log":
            self._publish(
                topics.SCRIPT_LOG,
                run.id,
                message.get("ts"),
                level=message["level"],
                logger=message["logger"],
                message=message["message"],
            )
        elif kind == "event":
            payload = dict(message.get("payload") or {})
            msg_src = str(payload.pop("msg_src", None) or f"{self.config.name}/procedure/{run.id}")
            payload["procedure_id"] = run.id
            self.events.publish(message["topic"], msg_src, payload, message.get("ts"))
        elif kind == protocol.PAUSED:
            with self._lock:
                run.pause_requested = False
                if run.state is State.RUNNING and not run.stop_requested:
                    self._transition(run, State.PAUSED)
        elif kind == protocol.RESUMED:
            with self._lock:
                if run.state is State.PAUSED and not run.frozen and not run.stop_requested:
                    self._transition(run, State.RUNNING)
        elif kind == protocol.REQUEST:
            self._on_request(run, message)
        elif kind == protocol.CLOSED:
            self._on_closed(run, message)
        elif kind == protocol.PROGRESS:
            progress = {k: message.get(k) for k in ("done", "total", "message", "ts")}
            with self._lock:
                run.procedure.progress = progress
                self._publish(topics.PROCEDURE_PROGRESS, run.id, message.get("ts"), **progress)
        elif kind == "done":
            self._on_done(run, worker, message)
        elif kind == "error":
            error = message.get("error") or "script failed"
            with self._lock:
                stopping = run.stop_requested
            if stopping:
                # e.g. a SIGTERM handler that raises: the stop asked for still decides the
                # outcome; STOPPED follows as soon as the worker is gone.
                LOGGER.info("procedure %d raised while stopping: %s", run.id, error)
            else:
                self._fail(run, error, message.get("traceback"))
            worker.close_channel()

    def _on_request(self, run: _Run, message: dict[str, Any]) -> None:
        request = {
            "id": str(message["id"]),
            "procedure_id": run.id,
            "prompt": message.get("prompt"),
            "choices": message.get("choices"),
            "default": message.get("default"),
            "timeout": message.get("timeout"),
            "asked_at": message.get("ts"),
        }
        with self._lock:
            run.procedure.request = request
            self._publish(topics.REQUEST_OPENED, run.id, request=request)
            self._persist(run)
            self._changed.notify_all()

    def _on_closed(self, run: _Run, message: dict[str, Any]) -> None:
        request_id = str(message.get("id"))
        outcome = message.get("outcome")
        with self._lock:
            if request_id == run.answering:
                run.verdicts[request_id] = message
            if outcome == "refused":
                self._changed.notify_all()
                return
            pending = run.procedure.request
            record = dict(pending) if pending and pending["id"] == request_id else {}
            record.update(
                id=request_id,
                outcome=outcome,
                value=message.get("value"),
                user=message.get("user"),
                closed_at=message.get("ts"),
            )
            if pending and pending["id"] == request_id:
                run.procedure.request = None
            requests = run.procedure.requests
            requests.append(record)
            del requests[:-_MAX_RECORDED_REQUESTS]
            LOGGER.info(
                "procedure %d: request %s %s (%r by %s)",
                run.id,
                request_id,
                outcome,
                record["value"],
                record["user"],
            )
            self._publish(topics.REQUEST_CLOSED, run.id, request=record)
            self._persist(run)
            self._changed.notify_all()

    def _on_done(self, run: _Run, worker: WorkerConnection, message: dict[str, Any]) -> None:
        with self._lock:
            if run.stop_requested or run.state.is_final:
                # A script that returned (or called sys.exit()) on SIGTERM: let the worker go
                # now rather than after the grace period.
                worker.close_channel()
                return
            run.has_main = bool(message.get("has_main", run.has_main))
            if message["cmd"] == "load":
                self._transition(run, State.IDLE)
                if message.get("has_init"):
                    self._transition(run, State.INITIALISING)
                    init = run.procedure.script_args.get("init", FunctionArgs())
                    worker.send(protocol.call("init", list(init.args), dict(init.kwargs)))
                    return
            elif message.get("fn") == "main":
                self._transition(run, State.COMPLETE)
                worker.close_channel()
                return
            if not run.has_main:
                self._fail(run, "the script defines no main() function", None)
                worker.close_channel()
                return
            self._transition(run, State.READY)
        if run.autostart is not None:
            threading.Thread(target=self._autostart, args=(run,), daemon=True).start()

    def _autostart(self, run: _Run) -> None:
        timeout = self.config.stop_grace_seconds + _AUTOSTART_MARGIN
        with self._lock:
            self._changed.wait_for(lambda: self._running() is None, timeout)
        try:
            # Started on behalf of whoever created it (an activity, an abort request).
            self.start(run.id, run.autostart, requested_by=run.procedure.audit[0]["user"])
        except StateConflict as exc:
            self._fail(run, f"could not start automatically: {exc}", None)
            if run.worker is not None:
                run.worker.close_channel()

    def _terminate(self, worker: WorkerConnection, grace: float | None = None) -> None:
        worker.terminate(self.config.stop_grace_seconds if grace is None else grace)

    def _fail(self, run: _Run, reason: str, stacktrace: str | None) -> None:
        with self._lock:
            if run.state.is_final:
                return
            if run.stop_requested:
                # Whatever the script did on its way out, a stop that was asked for ends STOPPED.
                LOGGER.info("procedure %d stopped (%s)", run.id, reason)
                self._transition(run, State.STOPPED)
                return
            run.procedure.stacktrace = stacktrace or reason
            self._publish(topics.PROCEDURE_STACKTRACE, run.id, stacktrace=run.procedure.stacktrace)
            self._transition(run, State.FAILED)

    def _transition(self, run: _Run, state: ProcedureState) -> None:
        with self._lock:
            previous = run.state
            run.procedure.record(state)
            summary = run.procedure.summary()
            # The summary travels with the change, so that views never look it up (it may
            # already be further on) nor replay history.
            self._publish(
                topics.PROCEDURE_STATECHANGE,
                run.id,
                new_state=str(state),
                previous_state=str(previous),
                summary=summary,
            )
            if previous is State.PAUSED and state is State.RUNNING:
                self._publish(topics.PROCEDURE_RESUMED, run.id, result=summary)
            elif state in _LIFECYCLE_TOPICS:
                self._publish(_LIFECYCLE_TOPICS[state], run.id, result=summary)
            self._persist(run, summary)
            if state.is_final:
                self._evict()
            self._changed.notify_all()

    # -- helpers ---------------------------------------------------------------------------
    def _publish(
        self, topic: str, procedure_id: int, timestamp: float | None = None, **payload: Any
    ) -> None:
        self.events.publish(
            topic, self.config.name, {"procedure_id": procedure_id, **payload}, timestamp
        )

    def _persist(self, run: _Run, summary: dict[str, Any] | None = None) -> None:
        self._store.save(
            summary or run.procedure.summary(),
            pid=run.worker.pid if run.worker else None,
            pid_started=run.worker_started,
        )

    def _find(self, procedure_id: int) -> _Run:
        try:
            return self._runs[int(procedure_id)]
        except (KeyError, ValueError, TypeError):
            raise ProcedureNotFound(procedure_id) from None

    def _running(self) -> _Run | None:
        """The procedure that holds the subarray: RUNNING or PAUSED."""
        return next(
            (r for r in self._runs.values() if r.state in (State.RUNNING, State.PAUSED)), None
        )

    def _active(self, procedure_id: int | None) -> _Run:
        if procedure_id is None:
            run = self._running()
            if run is None:
                raise StateConflict("no procedure is running")
            return run
        run = self._find(procedure_id)
        if run.state.is_final or run.stop_requested:
            raise StateConflict(f"procedure {run.id} is {run.state}; it is not running")
        return run

    def _evict(self) -> None:
        finished = [r.id for r in self._runs.values() if r.state.is_final]
        excess = finished[: max(0, len(finished) - self.config.history_size)]
        for procedure_id in excess:
            del self._runs[procedure_id]
        if excess:
            self._store.delete(excess)

    def _check_source(self, script: FileSystemScript | GitScript) -> None:
        if isinstance(script, GitScript):
            self._git.check_allowed(script.git_args.git_repo)
            return
        path = os.path.realpath(script.path)
        roots = [os.path.realpath(root) for root in self.config.script_roots]
        if not any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots):
            raise InvalidRequest(
                f"script {script.script_uri} is outside the allowed script roots "
                f"({', '.join(str(r) for r in self.config.script_roots)})"
            )

    def _with_default_repository(self, request: PrepareRequest) -> PrepareRequest:
        """A git script asked for without ``git_repo`` comes from the configured default
        repository (and branch), recorded in the request so the summary says which."""
        script = request.script
        if not isinstance(script, GitScript) or script.git_args.git_repo:
            return request
        if not self.config.default_git_repo:
            raise InvalidRequest("git scripts need git_args.git_repo (no default is configured)")
        args = script.git_args
        branch = args.git_branch
        if branch is None and args.git_commit is None:
            branch = self.config.default_git_branch
        git_args = GitArgs(self.config.default_git_repo, branch, args.git_commit)
        return replace(request, script=replace(script, git_args=git_args))

    def _materialise(self, run: _Run) -> tuple[str, str | None, dict[str, Any]]:
        """The script's local path, the interpreter to run it with (None: the default) and
        what else the worker's ``load`` needs. For a git script: check out its commit and,
        with ``create_env``, lease the environment of its dependencies (PREP_ENV); the
        repository's own code is imported from this commit's checkout, placed in front of
        the environment for this procedure only, and the checkout is the working folder."""
        script = run.procedure.script
        if isinstance(script, FileSystemScript):
            return os.path.realpath(script.path), None, {}

        def progress(report: Progress) -> None:
            payload: dict[str, Any] = {"step": report.step, "line": report.line}
            if report.seconds is not None:
                payload["seconds"] = round(report.seconds, 3)
            self._publish(topics.SCRIPT_ENV, run.id, **payload)

        started = time.monotonic()
        checkout = run.checkout = self._git.checkout_script(script, run.cancel, hold=True)
        how = "cached" if checkout.reused else "checked out"
        progress(
            Progress(
                "checkout",
                f"{how} {checkout.repo} at {checkout.commit}",
                time.monotonic() - started,
            )
        )
        with self._lock:
            run.procedure.details["git_commit_used"] = checkout.commit
            self._persist(run)
            if run.stop_requested:
                return str(checkout.script), None, {}
            if script.create_env:
                self._transition(run, State.PREP_ENV)
        try:
            spec = self._environments.spec_for_checkout(checkout.path, immutable=True)
        except DependencySpecError:
            if script.create_env:
                raise
            spec = None  # the environment is the OET's: only the code's location matters
        local = list(spec.local_paths) if spec else import_roots(checkout.path)
        extras = {"cwd": str(checkout.path), "sys_path": [str(p) for p in local]}
        if not script.create_env:
            return str(checkout.script), None, extras
        run.lease = self._environments.acquire(spec, progress, run.cancel)
        with self._lock:
            run.procedure.details["environment"] = run.lease.key
            if not run.stop_requested:
                self._transition(run, State.IDLE)
        return str(checkout.script), str(run.lease.python), extras

    @functools.cached_property
    def _git(self) -> GitCache:
        config = self.config
        return GitCache(
            config.git_cache_dir,
            config.allowed_repositories,
            config.git_timeout,
            max_checkouts=config.git_max_checkouts,
            max_bytes=config.git_max_bytes,
        )

    @functools.cached_property
    def _environments(self) -> EnvironmentCache:
        config = self.config
        return EnvironmentCache(
            config.environments_dir,
            pip_options=config.pip_options,
            build_timeout=config.env_build_timeout,
            max_count=config.env_max_count,
            max_total_bytes=config.env_max_bytes,
            installer=config.env_installer,
            inherit=config.env_inherit_packages,
            groups=config.env_groups,
            extras=config.env_extras,
        )

    def _recover(self) -> None:
        """Load stored history; procedures that were active when the previous service died
        are recorded as FAILED with the reason, and their orphaned processes are killed."""
        for stored in self._store.load():
            try:
                procedure = Procedure.from_summary(stored.summary)
            except Exception as exc:  # one bad row must never keep the engine from starting
                LOGGER.error(
                    "skipping stored procedure %r that cannot be read: %s: %s",
                    stored.summary.get("id"),
                    type(exc).__name__,
                    exc,
                )
                continue
            if not procedure.state.is_final:
                was = procedure.state
                killed = _reap_orphan(stored.pid, stored.pid_started)
                procedure.record(State.FAILED)
                procedure.stacktrace = (
                    f"The OET service stopped while this procedure was {was}; "
                    + (
                        "its orphaned script process was killed."
                        if killed
                        else "no script process was left."
                    )
                )
                self._store.save(procedure.summary())
            self._runs[procedure.id] = _Run(procedure)
            self._next_id = max(self._next_id, self.config.next_id(procedure.id))
        self._evict()


def _reap_orphan(pid: int | None, started: float | None) -> bool:
    """Kill the process group of a worker left by a previous service, if it is still ours."""
    if pid is None or started is None:
        return False
    try:
        leader = psutil.Process(pid)
        if abs(leader.create_time() - started) > 0.05:
            return False  # the pid now belongs to another process
    except psutil.NoSuchProcess:
        # The leader is gone; members of its group started after it are still its children.
        members = []
        for proc in psutil.process_iter(["pid", "create_time"]):
            with contextlib.suppress(ProcessLookupError, psutil.Error):
                if os.getpgid(proc.pid) == pid and proc.info["create_time"] >= started:
                    members.append(proc)
        for proc in members:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        return bool(members)
    except psutil.Error:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return True
