"""The engine's audit trail: who created, started, stopped or aborted a procedure (issue 13)."""

from __future__ import annotations

import dataclasses
import logging

from ska_oso_oet.procedure.domain import ProcedureState

from ..conftest import TIMEOUT, EventRecorder, prepare_request

READY, FINAL = ["READY"], ["STOPPED", "COMPLETE", "FAILED"]


def trail(summary: dict) -> list[tuple[str, str]]:
    return [(entry["action"], entry["user"]) for entry in summary["audit"]]


def test_users_are_recorded_logged_and_survive_a_restart(make_service, caplog):
    caplog.set_level(logging.INFO, logger="ska_oso_oet.procedure.service")
    service = make_service()
    recorder = EventRecorder()
    service.events.subscribe(recorder)
    request = dataclasses.replace(prepare_request("loop_forever.py"), requested_by="alice")
    pid = service.prepare(request)["id"]
    service.wait_for_state(pid, READY, TIMEOUT)
    service.start(pid, requested_by="bob")
    summaries = service.stop(pid, run_abort=True, requested_by="carol")
    service.wait_for_state(pid, FINAL, TIMEOUT)
    assert trail(service.get(pid)) == [
        ("created", "alice"),
        ("started", "bob"),
        ("aborted", "carol"),
    ]
    # the abort procedure is created (and started by itself) on behalf of the same user
    abort_id = summaries[1]["id"]
    service.wait_for_state(abort_id, FINAL, TIMEOUT)
    assert trail(service.get(abort_id)) == [("created", "carol"), ("started", "carol")]
    assert f"procedure {pid} started by bob" in caplog.text
    assert f"procedure {pid} aborted by carol" in caplog.text
    started = [e for e in recorder.events if e.topic.endswith("lifecycle.started")]
    assert started and trail(started[0].payload["result"])[-1] == ("started", "bob")
    service.shutdown()
    again = make_service()
    assert trail(again.get(pid))[:2] == [("created", "alice"), ("started", "bob")]


def test_engine_requests_without_a_user_say_so(service):
    pid = service.prepare(prepare_request("success.py"))["id"]
    assert trail(service.get(pid)) == [("created", "oet")]
    assert service.get(pid)["state"] in {str(s) for s in ProcedureState}
