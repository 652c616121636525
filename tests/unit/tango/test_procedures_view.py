"""ProcedureView: attribute values that follow the events, and when LRCs complete."""

from __future__ import annotations

import copy
import json

import pytest

from ska_oso_oet.events import Event, dumps
from ska_oso_oet.tango.procedures import ProcedureView, as_of
from ska_oso_oet.tango.ska import ResultCode, TaskStatus

PATH = ["CREATING", "IDLE", "LOADING", "IDLE", "READY", "RUNNING", "COMPLETE"]


def summary(
    pid: int, states: list[str], stacktrace: str | None = None, command_id: str | None = None
) -> dict:
    return {
        "id": pid,
        "script": {"script_type": "filesystem", "script_uri": "file:///s/x.py"},
        "script_args": {"init": {"args": [], "kwargs": {}}},
        "history": {
            "process_states": [[s, 100.0 + i] for i, s in enumerate(states)],
            "stacktrace": stacktrace,
        },
        "state": states[-1],
        "command_id": command_id,
    }


class Engine:
    """The engine's side: current summaries, and the events it published (in order)."""

    def __init__(self) -> None:
        self.now: dict[int, dict] = {}
        self.seq = 0

    def lookup(self, pid: int) -> dict | None:
        return copy.deepcopy(self.now.get(pid))

    def event(self, topic: str, pid: int, **payload: object) -> Event:
        self.seq += 1
        return Event(topic, "oso/oet/1", 1.0, self.seq, {"procedure_id": pid, **payload})


def created(engine: Engine, pid: int, command_id: str | None = None) -> Event:
    engine.now[pid] = summary(pid, ["CREATING"], command_id=command_id)
    return engine.event("procedure.lifecycle.created", pid, result=copy.deepcopy(engine.now[pid]))


def statechange(engine: Engine, pid: int, index: int) -> Event:
    return engine.event(
        "procedure.lifecycle.statechange",
        pid,
        new_state=PATH[index],
        previous_state=PATH[index - 1],
    )


def test_as_of_cuts_the_history_at_the_nth_transition() -> None:
    full = summary(1, PATH)
    first_idle = as_of(full, 1, "IDLE")
    assert [s for s, _ in first_idle["history"]["process_states"]] == ["CREATING", "IDLE"]
    assert (
        first_idle["state"] == "IDLE" and full["state"] == "COMPLETE"
    )  # the original is untouched
    assert as_of(full, 4, "READY")["state"] == "READY"
    assert as_of(full, 6, "COMPLETE") is full


def test_attributes_never_run_ahead_of_the_events() -> None:
    engine, view = Engine(), ProcedureView()
    view.update([])
    view.observe(created(engine, 1), engine.lookup)
    engine.now[1] = summary(1, PATH[:6])  # the engine is RUNNING already ...
    states_seen = []
    for index in range(1, 6):  # ... while the device publishes the events one by one
        view.observe(statechange(engine, 1, index), engine.lookup)
        view.update([engine.now[1]])
        states_seen.append(view.states[-1])
    assert states_seen == PATH[1:6]
    assert json.loads(view.procedures_json)[0]["history"]["process_states"][-1][0] == "RUNNING"
    assert view.running_id == 1


def test_procedures_dropped_by_the_history_window_disappear() -> None:
    view = ProcedureView()
    view.update([summary(1, PATH), summary(2, PATH)])  # recovered history
    assert view.ids == [1, 2]
    assert dict(view.update([summary(2, PATH)]))["procedureIds"] == [2]


def test_the_list_is_encoded_as_a_whole_and_only_changed_summaries_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine, view = Engine(), ProcedureView()
    view.update([summary(1, PATH), summary(2, PATH[:2])])
    assert view.procedures_json == dumps(
        [summary(1, PATH), summary(2, PATH[:2])]
    )  # byte for byte what encoding the list at once gives
    encoded: list[int] = []

    def counting(data: object) -> str:
        encoded.append(data["id"])  # type: ignore[index]
        return dumps(data)

    monkeypatch.setattr("ska_oso_oet.tango.procedures.dumps", counting)
    change = engine.event(
        "procedure.lifecycle.statechange", 2, new_state="LOADING", summary=summary(2, PATH[:3])
    )
    view.observe(change, engine.lookup)
    changed = dict(view.update_listed([1, 2]))
    assert encoded == [2]  # procedure 1 did not change: its encoding is reused
    assert changed["procedureStates"] == ["COMPLETE", "LOADING"]
    assert view.procedures_json == dumps([summary(1, PATH), summary(2, PATH[:3])])
    encoded.clear()
    assert view.update_listed([2]) != [] and encoded == []  # 1 left the history window
    assert json.loads(view.procedures_json) == [summary(2, PATH[:3])]
    assert view.update_listed([2]) == [] and encoded == []  # nothing new: nothing encoded


def completions_after(view: ProcedureView, engine: Engine, events: list[Event]) -> list:
    done = []
    for event in events:
        view.observe(event, engine.lookup)
        done += view.completions(engine.lookup)
    return done


def test_prepare_completes_at_ready_with_the_summary() -> None:
    engine, view = Engine(), ProcedureView()
    view.observe(created(engine, 1, "c1"), engine.lookup)
    view.track("c1", "Prepare", 1, [], engine.lookup)
    engine.now[1] = summary(1, PATH[:5], command_id="c1")
    done = completions_after(view, engine, [statechange(engine, 1, i) for i in range(1, 4)])
    assert done == []
    [(cid, status, code, message)] = completions_after(view, engine, [statechange(engine, 1, 4)])
    assert (cid, status, code) == ("c1", TaskStatus.COMPLETED, ResultCode.OK)
    assert json.loads(message)["state"] == "READY"
    assert view.procedure_of("c1") == 1


@pytest.mark.parametrize(
    ("final", "status", "code"),
    [
        ("FAILED", TaskStatus.FAILED, ResultCode.FAILED),
        ("STOPPED", TaskStatus.ABORTED, ResultCode.ABORTED),
    ],
)
def test_start_ends_failed_or_aborted(final: str, status: TaskStatus, code: ResultCode) -> None:
    engine, view = Engine(), ProcedureView()
    view.observe(created(engine, 1), engine.lookup)
    engine.now[1] = summary(
        1, [*PATH[:6], final], stacktrace="Traceback: boom" if final == "FAILED" else None
    )
    view.track("s1", "Start", 1, [], engine.lookup)
    events = [statechange(engine, 1, i) for i in range(1, 6)]
    events.append(
        engine.event(
            "procedure.lifecycle.statechange", 1, new_state=final, previous_state="RUNNING"
        )
    )
    [(cid, got_status, got_code, message)] = completions_after(view, engine, events)
    assert (cid, got_status, got_code) == ("s1", status, code)
    assert (
        ("Traceback: boom" in message)
        if final == "FAILED"
        else json.loads(message)["state"] == "STOPPED"
    )


def test_stop_completes_with_the_stopped_and_abort_summaries() -> None:
    engine, view = Engine(), ProcedureView()
    view.observe(created(engine, 1), engine.lookup)
    view.observe(created(engine, 2), engine.lookup)
    view.track("t1", "Stop", 1, [2], engine.lookup)
    assert view.completions(engine.lookup) == []
    engine.now[1] = summary(
        1, ["CREATING", "IDLE", "LOADING", "IDLE", "READY", "RUNNING", "STOPPED"]
    )
    stop = engine.event(
        "procedure.lifecycle.statechange", 1, new_state="STOPPED", previous_state="RUNNING"
    )
    [(cid, status, code, message)] = completions_after(view, engine, [stop])
    assert (cid, status, code) == ("t1", TaskStatus.COMPLETED, ResultCode.OK)
    assert [s["id"] for s in json.loads(message)] == [1, 2]


def test_a_command_tracked_after_its_outcome_completes_at_once() -> None:
    engine, view = Engine(), ProcedureView()
    engine.now[1] = summary(1, PATH[:5])
    for event in [created(engine, 1), *(statechange(engine, 1, i) for i in range(1, 5))]:
        view.observe(event, engine.lookup)
    engine.now[1] = summary(1, PATH[:5])
    view.track("c1", "Prepare", 1, [], engine.lookup)
    assert [c[0] for c in view.completions(engine.lookup)] == ["c1"]
