"""The rules of linked groups (GroupCoordinator), without Tango: what halts whom, when."""

from __future__ import annotations

from pathlib import Path

import pytest

from ska_oso_oet.groups import (
    GROUP_STATECHANGE,
    GroupCoordinator,
    GroupState,
    GroupStore,
    HaltOrder,
    HaltPolicy,
    MemberSpec,
)
from ska_oso_oet.procedure.errors import InvalidRequest, StateConflict


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def members(*specs: tuple[int, str]) -> list[MemberSpec]:
    return [MemberSpec(pid, f"oso/oet/{pid % 100}", state) for pid, state in specs]


@pytest.fixture
def orders() -> list[HaltOrder]:
    return []


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def coordinator(orders, clock) -> GroupCoordinator:
    return GroupCoordinator(None, orders.append, clock=clock, halt_timeout=30)


def test_a_failing_member_halts_every_unfinished_other(coordinator, orders, clock):
    events = []
    coordinator.events.subscribe(events.append)
    group = coordinator.create(
        members((101, "RUNNING"), (202, "RUNNING"), (303, "READY")), HaltPolicy(abort=True)
    )
    independent = 404
    coordinator.observe(independent, "FAILED")  # not a member: nothing happens
    assert orders == []

    coordinator.observe(101, "FAILED", when=clock.now)
    assert {(o.procedure_id, o.device, o.policy.abort) for o in orders} == {
        (202, "oso/oet/2", True),
        (303, "oso/oet/3", True),  # READY members are stopped too
    }
    assert all(o.requested_by == f"group:{group['id']}" for o in orders)
    assert coordinator.get(group["id"])["state"] == "HALTING"

    clock.now += 0.012
    coordinator.observe(202, "STOPPED", when=clock.now)
    coordinator.observe(303, "STOPPED", when=clock.now)
    halted = coordinator.get(group["id"])
    assert halted["state"] == "HALTED"
    reasons = [h["reason"] for h in halted["history"]]
    assert "member 101 on oso/oet/1 FAILED" in reasons
    assert "halted 202 on oso/oet/2: STOPPED in 12 ms" in reasons
    changes = [e.payload["new_state"] for e in events if e.topic == GROUP_STATECHANGE]
    assert changes == ["HALTING", "HALTED"]
    assert coordinator.watched() == {}


def test_every_member_complete_completes_the_group_and_stops_nothing(coordinator, orders):
    group = coordinator.create(members((101, "RUNNING"), (202, "RUNNING")), HaltPolicy())
    coordinator.observe(101, "COMPLETE")
    assert coordinator.get(group["id"])["state"] == "ACTIVE"
    coordinator.observe(202, "COMPLETE")
    assert coordinator.get(group["id"])["state"] == "COMPLETE"
    assert orders == []


def test_an_unreachable_device_loses_its_member_and_halts_the_others(coordinator, orders):
    group = coordinator.create(members((101, "RUNNING"), (202, "RUNNING")), HaltPolicy())
    coordinator.device_unreachable("oso/oet/1", "connection refused")
    assert [o.procedure_id for o in orders] == [202]
    summary = coordinator.get(group["id"])
    assert summary["members"][0]["state"] == "UNKNOWN"
    assert "device oso/oet/1 unreachable" in summary["history"][-1]["reason"]


def test_a_halted_member_that_never_confirms_is_given_up_after_the_timeout(
    coordinator, orders, clock
):
    group = coordinator.create(members((101, "RUNNING"), (202, "RUNNING")), HaltPolicy())
    coordinator.observe(101, "STOPPED")  # stopped by somebody else: halts the group
    clock.now += 31
    coordinator.check_deadlines()
    summary = coordinator.get(group["id"])
    assert summary["state"] == "HALTED"
    assert "202 (RUNNING)" in summary["history"][-1]["reason"]


@pytest.mark.parametrize(
    ("specs", "error", "words"),
    [
        (((101, "RUNNING"),), InvalidRequest, "at least 2"),
        (((101, "RUNNING"), (101, "RUNNING")), InvalidRequest, "more than once"),
        (((101, "RUNNING"), (202, "COMPLETE")), StateConflict, "already finished"),
    ],
)
def test_bad_groups_are_refused_by_name(coordinator, specs, error, words):
    with pytest.raises(error, match=words):
        coordinator.create(members(*specs), HaltPolicy())
    assert coordinator.summaries() == []


def test_a_procedure_is_in_one_watching_group_at_a_time(coordinator):
    first = coordinator.create(members((101, "RUNNING"), (202, "RUNNING")), HaltPolicy())
    with pytest.raises(StateConflict, match=f"already in group {first['id']}"):
        coordinator.create(members((101, "RUNNING"), (303, "RUNNING")), HaltPolicy())
    coordinator.disband(first["id"])
    coordinator.create(members((101, "RUNNING"), (303, "RUNNING")), HaltPolicy())


def test_a_disbanded_group_touches_nothing(coordinator, orders):
    group = coordinator.create(members((101, "RUNNING"), (202, "RUNNING")), HaltPolicy())
    coordinator.disband(group["id"], "alice")
    coordinator.observe(101, "FAILED")
    assert orders == []
    assert coordinator.get(group["id"])["history"][-1]["reason"] == "disbanded by alice"
    with pytest.raises(StateConflict):
        coordinator.disband(group["id"])


def test_groups_survive_a_restart_and_owed_halts_are_sent_again(tmp_path: Path, orders):
    path = tmp_path / "groups.sqlite"
    first = GroupCoordinator(GroupStore(path), orders.append)
    halting = first.create(members((101, "RUNNING"), (202, "RUNNING")), HaltPolicy(force=True))
    active = first.create(members((303, "RUNNING"), (404, "READY")), HaltPolicy())
    first.observe(101, "FAILED")
    first.close()
    orders.clear()

    again = GroupCoordinator(GroupStore(path), orders.append)
    assert [g["state"] for g in again.summaries()] == ["HALTING", "ACTIVE"]
    assert [(o.procedure_id, o.policy.force) for o in again.reconcile()] == [(202, True)]
    again.observe(303, "FAILED")  # while down, say: read at restart
    assert [o.procedure_id for o in orders] == [202, 404]
    assert again.get(active["id"])["state"] == "HALTING"
    assert again.get(halting["id"])["members"][1]["halted"] is True
    created = again.create(members((505, "RUNNING"), (606, "RUNNING")), HaltPolicy())
    assert created["id"] == active["id"] + 1  # ids go on from the stored ones
    again.close()


def test_the_store_is_used_by_one_coordinator_at_a_time(tmp_path: Path):
    store = GroupStore(tmp_path / "groups.sqlite")
    try:
        with pytest.raises(Exception, match="already used"):
            GroupStore(tmp_path / "groups.sqlite")
    finally:
        store.close()


def test_finished_groups_beyond_the_history_size_are_dropped(orders):
    coordinator = GroupCoordinator(None, orders.append, history_size=2)
    ids = []
    for n in range(4):
        group = coordinator.create(
            members((100 * n + 1, "RUNNING"), (100 * n + 2, "RUNNING")), HaltPolicy()
        )
        coordinator.disband(group["id"])
        ids.append(group["id"])
    assert [g["id"] for g in coordinator.summaries()] == ids[-2:]
    assert GroupState.DISBANDED.is_final
