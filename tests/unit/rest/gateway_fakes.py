"""Test doubles for the gateway: an in-memory OETDevice and uvicorn in a thread.

:class:`FakeDevice` follows the device contract (tango_api: Prepare returns with the procedure
in CREATING, the rest arrives as events; Start needs READY and no other RUNNING procedure; the
same ``OET_*`` error codes) closely enough to exercise the routes, the event stream and the CLI
without Tango. Tests drive the script's side (complete, fail, announce) explicitly.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from ska_oso_oet.rest import errors
from ska_oso_oet.rest.client import DeviceClient
from ska_oso_oet.rest.errors import GatewayError
from ska_oso_oet.rest.hub import EventHub
from ska_oso_oet.rest.listing import Snapshot
from ska_oso_oet.vocabulary import FINAL_STATES


def _audit(action: str, user: str | None) -> dict[str, Any]:
    """An audit entry as the device records it (``tango`` when no user was passed)."""
    return {"action": action, "user": user or "tango", "at": time.time()}


class FakeDevice(DeviceClient):
    """An in-memory OETDevice behind the :class:`DeviceClient` interface."""

    def __init__(
        self,
        hub: EventHub | None = None,
        *,
        auto_ready: bool = True,
        subarray: int | None = None,
        name: str = "oso/oet/1",
    ):
        super().__init__(hub or EventHub(replay_size=100, queue_size=50))
        #: With a subarray, ids are numbered as devices do (n * 100 + subarray).
        self.subarray = subarray
        self.name = name
        self.auto_ready = auto_ready
        self.unreachable = False
        self.procedures: dict[int, dict[str, Any]] = {}
        self.activities: dict[int, dict[str, Any]] = {}
        self.sbds: dict[str, dict[str, Any]] = {}
        #: False behaves like an older device without the activity commands.
        self.activity_support = True
        self.calls: list[tuple[str, Any]] = []
        #: True: the list is "at hand" (as a real client's copy kept by events), versioned by
        #: its content, so the gateway's fast path and encoded-answer cache apply.
        self.listing_current = False
        first, step = (subarray, 100) if subarray else (1, 1)
        self._ids = itertools.count(first, step)
        self._activity_ids = itertools.count(first, step)
        self._seq = itertools.count(1_000_000)
        self._lock = threading.Lock()

    @property
    def subarray_id(self) -> int | None:
        return self.subarray

    # --- what the gateway calls -------------------------------------------------------------
    def _check(self, name: str, argument: Any) -> None:
        self.calls.append((name, argument))
        if self.unreachable:
            raise GatewayError(errors.DEVICE_UNREACHABLE, "The OET device cannot be reached: fake")

    async def prepare(
        self, request: dict[str, Any], requested_by: str | None = None
    ) -> dict[str, Any]:
        self._check("Prepare", request)
        script = request.get("script") or {"script_uri": request.get("script_uri")}
        uri = script.get("script_uri") or ""
        if not uri.startswith(("file:///", "git://")):
            raise GatewayError(errors.INVALID_REQUEST, f"script URI not allowed: {uri!r}")
        if uri.startswith("file:///forbidden/"):  # as the device refuses paths outside its roots
            raise GatewayError(errors.INVALID_REQUEST, f"{uri} is outside the script roots")
        init = (request.get("script_args") or {}).get("init") or {}
        pid = next(self._ids)
        summary = {
            "id": pid,
            "script": {"script_type": script.get("script_type") or "filesystem", **script},
            "script_args": {
                "init": {"args": init.get("args", []), "kwargs": init.get("kwargs", {})}
            },
            "history": {"process_states": [["CREATING", time.time()]], "stacktrace": None},
            "state": "CREATING",
            "command_id": f"{time.time()}_{pid}_Prepare",
            "audit": [_audit("created", requested_by)],
        }
        self.procedures[pid] = summary
        created = copy.deepcopy(summary)  # the device answers in CREATING; the rest are events
        self.emit("procedure.lifecycle.created", procedure_id=pid, result=created)
        if self.auto_ready:
            for state in ("IDLE", "LOADING", "IDLE", "READY"):
                self.set_state(pid, state)
        return created

    async def start_procedure(
        self, procedure_id: int, script_args: Any, requested_by: str | None = None
    ) -> dict[str, Any]:
        self._check("Start", {"procedure_id": procedure_id, "script_args": script_args})
        summary = self._get(procedure_id)
        if any(p["state"] == "RUNNING" for p in self.procedures.values()):
            raise GatewayError(errors.STATE_CONFLICT, "another procedure is running")
        if summary["state"] != "READY":
            raise GatewayError(
                errors.STATE_CONFLICT, f"procedure {procedure_id} is {summary['state']}, not READY"
            )
        main = (script_args or {}).get("main") or (script_args or {}).get("run") or {}
        summary["script_args"]["main"] = {
            "args": main.get("args", []),
            "kwargs": main.get("kwargs", {}),
        }
        summary["audit"].append(_audit("started", requested_by))
        self.set_state(procedure_id, "RUNNING")
        self.emit(
            "procedure.lifecycle.started", procedure_id=procedure_id, result=copy.deepcopy(summary)
        )
        return copy.deepcopy(summary)

    async def stop_procedure(
        self, procedure_id: int, run_abort: bool, requested_by: str | None = None
    ) -> None:
        self._check("Stop", {"procedure_id": procedure_id, "run_abort": run_abort})
        if self._get(procedure_id)["state"] in FINAL_STATES:
            raise GatewayError(errors.STATE_CONFLICT, f"procedure {procedure_id} has finished")
        action = "aborted" if run_abort else "stopped"
        self._get(procedure_id)["audit"].append(_audit(action, requested_by))
        self.finish(procedure_id, "STOPPED")

    async def pause_procedure(
        self, procedure_id: int, immediate: bool, requested_by: str | None = None
    ) -> None:
        self._check("Pause", {"procedure_id": procedure_id, "immediate": immediate})
        if self._get(procedure_id)["state"] != "RUNNING":
            raise GatewayError(errors.STATE_CONFLICT, f"procedure {procedure_id} is not RUNNING")
        self.set_state(procedure_id, "PAUSED")

    async def resume_procedure(self, procedure_id: int, requested_by: str | None = None) -> None:
        self._check("Resume", {"procedure_id": procedure_id})
        if self._get(procedure_id)["state"] != "PAUSED":
            raise GatewayError(errors.STATE_CONFLICT, f"procedure {procedure_id} is not PAUSED")
        self.set_state(procedure_id, "RUNNING")

    async def answer_request(
        self, procedure_id: int, request_id: str, value: Any, requested_by: str | None = None
    ) -> dict[str, Any]:
        self._check("Answer", {"procedure_id": procedure_id, "request_id": request_id})
        summary = self._get(procedure_id)
        pending = summary.get("request")
        if not pending or pending["id"] != request_id:
            raise GatewayError(errors.STATE_CONFLICT, f"request {request_id} is not pending")
        summary["request"] = None
        return {**pending, "outcome": "answered", "value": value, "user": requested_by}

    async def switch(
        self,
        procedure_id: int,
        run_abort: bool,
        force: bool,
        script_args: Any = None,
        requested_by: str | None = None,
        timeout: float = 90.0,
    ) -> dict[str, Any]:
        self._check("Switch", {"procedure_id": procedure_id, "run_abort": run_abort})
        summary = self._get(procedure_id)
        if summary["state"] != "READY":
            raise GatewayError(
                errors.STATE_CONFLICT, f"procedure {procedure_id} is {summary['state']}, not READY"
            )
        stopped = []
        for pid, other in list(self.procedures.items()):
            if other["state"] == "RUNNING":
                self.finish(pid, "STOPPED")
                stopped.append(copy.deepcopy(self._get(pid)))
        started = await self.start_procedure(procedure_id, script_args)
        return {"stopped": stopped, "started": started}

    async def get_procedure(self, procedure_id: int) -> dict[str, Any]:
        self._check("GetProcedure", procedure_id)
        return copy.deepcopy(self._get(procedure_id))

    async def list_procedures(self) -> list[dict[str, Any]]:
        self._check("procedures", None)
        return [copy.deepcopy(p) for _, p in sorted(self.procedures.items())]

    def cached_procedures(self) -> Snapshot | None:
        if not self.listing_current or self.unreachable:
            return None
        summaries = [copy.deepcopy(p) for _, p in sorted(self.procedures.items())]
        return Snapshot(json.dumps(summaries, sort_keys=True), summaries)

    async def procedures_snapshot(self) -> Snapshot:
        return self.cached_procedures() or await super().procedures_snapshot()

    def _check_activities(self, name: str, argument: Any) -> None:
        self._check(name, argument)
        if not self.activity_support:
            raise GatewayError(errors.NOT_IMPLEMENTED, f"The OET device does not offer {name}")

    async def run_activity(
        self, request: dict[str, Any], requested_by: str | None = None
    ) -> dict[str, Any]:
        self._check_activities("RunActivity", request)
        sbd = await self.get_sbd(request["sbd_id"])
        spec = sbd["activities"].get(request["activity_name"])
        if spec is None:
            raise GatewayError(errors.INVALID_REQUEST, f"no activity {request['activity_name']!r}")
        init = (request.get("script_args") or {}).get("init") or {}
        procedure = await self.prepare(
            {"script": {"script_uri": spec["path"]}, "script_args": {"init": init}},
            requested_by=requested_by,
        )
        aid = next(self._activity_ids)
        now = time.time()
        summary = {
            "id": aid,
            "activity_name": request["activity_name"],
            "sbd_id": request["sbd_id"],
            "procedure_id": procedure["id"],
            "prepare_only": request.get("prepare_only", False),
            "script_args": {"init": {"args": [], "kwargs": {}}, "main": {"args": [], "kwargs": {}}},
            "activity_states": [["TODO", now], ["REQUESTED", now]],
            "state": "REQUESTED",
            "sbi_id": f"sbi-fake-{aid:05d}",
            "command_id": f"{now}_{aid}_RunActivity",
            "audit": [_audit("created", requested_by)],
        }
        self.activities[aid] = summary
        self.emit(
            "activity.lifecycle.requested",
            activity_id=aid,
            procedure_id=procedure["id"],
            new_state="REQUESTED",
            result=copy.deepcopy(summary),
        )
        return copy.deepcopy(summary)

    async def get_activity(self, activity_id: int) -> dict[str, Any]:
        self._check_activities("GetActivity", activity_id)
        if activity_id not in self.activities:
            raise GatewayError(errors.NOT_FOUND, f"no activity for '{activity_id}'")
        return copy.deepcopy(self.activities[activity_id])

    async def list_activities(self) -> list[dict[str, Any]]:
        self._check_activities("activities", None)
        return [copy.deepcopy(a) for _, a in sorted(self.activities.items())]

    async def add_sbd(self, sbd: dict[str, Any]) -> dict[str, Any]:
        self._check_activities("AddSbd", sbd)
        if not isinstance(sbd.get("sbd_id"), str) or not isinstance(sbd.get("activities"), dict):
            raise GatewayError(errors.INVALID_REQUEST, "an SBD needs sbd_id and activities")
        self.sbds[sbd["sbd_id"]] = copy.deepcopy(sbd)
        return copy.deepcopy(sbd)

    async def get_sbd(self, sbd_id: str) -> dict[str, Any]:
        self._check_activities("GetSbd", sbd_id)
        if sbd_id not in self.sbds:
            raise GatewayError(errors.NOT_FOUND, f"no SBD {sbd_id!r}")
        return copy.deepcopy(self.sbds[sbd_id])

    # --- what tests call (any thread) -------------------------------------------------------
    def _get(self, procedure_id: int) -> dict[str, Any]:
        try:
            return self.procedures[procedure_id]
        except KeyError:
            raise GatewayError(
                errors.NOT_FOUND, f"No information available for PID={procedure_id}"
            ) from None

    def emit(self, topic: str, **payload: Any) -> int:
        """Publish one event through the hub's thread-safe entry, as Tango callbacks do."""
        with self._lock:
            seq = next(self._seq)
            event = {
                **payload,
                "topic": topic,
                "msg_src": self.name,
                "timestamp": time.time(),
                "seq": seq,
            }
            self.hub.feed_threadsafe(json.dumps(event))
        return seq

    def set_state(self, procedure_id: int, state: str) -> None:
        summary = self._get(procedure_id)
        previous = summary["state"]
        summary["history"]["process_states"].append([state, time.time()])
        summary["state"] = state
        self.emit(
            "procedure.lifecycle.statechange",
            procedure_id=procedure_id,
            new_state=state,
            previous_state=previous,
        )

    def finish(
        self, procedure_id: int, state: str = "COMPLETE", stacktrace: str | None = None
    ) -> None:
        summary = self._get(procedure_id)
        if stacktrace:
            summary["history"]["stacktrace"] = stacktrace
            self.emit(
                "procedure.lifecycle.stacktrace", procedure_id=procedure_id, stacktrace=stacktrace
            )
        self.set_state(procedure_id, state)
        topic = {"COMPLETE": "complete", "FAILED": "failed", "STOPPED": "stopped"}[state]
        self.emit(
            f"procedure.lifecycle.{topic}", procedure_id=procedure_id, result=copy.deepcopy(summary)
        )

    def announce(self, procedure_id: int, msg: str) -> int:
        return self.emit("user.script.announce", procedure_id=procedure_id, msg=msg)


@contextlib.contextmanager
def serve_in_thread(app: Any, timeout: float = 20.0, **options: Any) -> Iterator[str]:
    """Run ``app`` with a real uvicorn on a free loopback port; yields the server's base URL.
    ``options`` go to :class:`uvicorn.Config` (e.g. the h11 limits ``oet-gateway`` sets)."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=1, **options
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
