"""The LRC tracker: attribute values and update order of SKA LRC protocol v1 and v2."""

from __future__ import annotations

import json

import pytest

from ska_oso_oet.tango.lrc import (
    LRC_FINISHED_MAX_LENGTH,
    STATUS_QUEUE_SIZE,
    LrcTracker,
)
from ska_oso_oet.tango.ska import ResultCode, TaskStatus, command_name_of, generate_command_id


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[tuple[str, object]]] = []

    def __call__(self, updates: list[tuple[str, object]]) -> None:
        self.batches.append(list(updates))

    def names(self, batch: int = -1) -> list[str]:
        return [name for name, _ in self.batches[batch]]

    def last(self, name: str) -> object:
        for batch in reversed(self.batches):
            for n, value in reversed(batch):
                if n == name:
                    return value
        raise KeyError(name)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def tracker(recorder: Recorder, clock: FakeClock) -> LrcTracker:
    return LrcTracker(recorder, removal_time=10.0, clock=clock)


def run_to_completion(tracker: LrcTracker, name: str = "Prepare") -> str:
    cid = generate_command_id(name)
    tracker.new_command(cid, name)
    tracker.update(cid, status=TaskStatus.IN_PROGRESS)
    tracker.update(cid, status=TaskStatus.COMPLETED, result=(ResultCode.OK, "done"))
    return cid


class TestCommandIds:
    def test_id_has_epoch_unique_int_and_name(self) -> None:
        cid = generate_command_id("Prepare")
        epoch, unique, name = cid.split("_", 2)
        assert float(epoch) > 1.7e9 and int(unique) >= 0 and name == "Prepare"
        assert command_name_of(cid) == "Prepare"

    def test_ids_are_unique(self) -> None:
        assert len({generate_command_id("Start") for _ in range(1000)}) == 1000


class TestLrcTracker:
    def test_new_command_is_staging_on_v1_and_v2(
        self, tracker: LrcTracker, recorder: Recorder
    ) -> None:
        tracker.new_command("1_2_Prepare", "Prepare")
        assert recorder.last("longRunningCommandIDsInQueue") == ["1_2_Prepare"]
        assert recorder.last("longRunningCommandsInQueue") == ["Prepare"]
        assert recorder.last("longRunningCommandStatus") == ["1_2_Prepare", "STAGING"]
        cid, payload = recorder.last("_lrcEvent")
        event = json.loads(payload)
        assert cid == "1_2_Prepare" and event["status"] == TaskStatus.STAGING
        assert event["name"] == "Prepare" and "submitted_time" in event
        assert tracker.status_of("1_2_Prepare") is TaskStatus.STAGING

    def test_in_progress_moves_command_to_lrc_executing(
        self, tracker: LrcTracker, recorder: Recorder
    ) -> None:
        tracker.new_command("1_2_Start", "Start")
        tracker.update("1_2_Start", status=TaskStatus.IN_PROGRESS)
        assert recorder.last("longRunningCommandInProgress") == ["Start"]
        executing = [json.loads(v) for v in recorder.last("lrcExecuting")]
        assert executing[0]["uid"] == "1_2_Start" and executing[0]["name"] == "Start"
        assert "started_time" in executing[0]
        assert json.loads(recorder.last("_lrcEvent")[1])["status"] == TaskStatus.IN_PROGRESS

    def test_result_is_published_before_final_status(
        self, tracker: LrcTracker, recorder: Recorder
    ) -> None:
        cid = run_to_completion(tracker)
        names = recorder.names()
        assert names.index("longRunningCommandResult") < names.index("longRunningCommandStatus")
        assert names.index("longRunningCommandStatus") < names.index("_lrcEvent")
        assert recorder.last("longRunningCommandResult") == (cid, json.dumps([0, "done"]))
        event = json.loads(recorder.last("_lrcEvent")[1])
        assert event["status"] == TaskStatus.COMPLETED and event["result"] == [0, "done"]
        assert "finished_time" in event
        finished = json.loads(recorder.last("lrcFinished")[-1])
        assert finished["uid"] == cid and finished["status"] == "COMPLETED"
        assert finished["result"] == [0, "done"]
        assert recorder.last("lrcExecuting") == []
        assert recorder.last("longRunningCommandInProgress") == []

    def test_progress_is_reported_as_pairs(self, tracker: LrcTracker, recorder: Recorder) -> None:
        tracker.new_command("1_2_Start", "Start")
        tracker.update("1_2_Start", status=TaskStatus.IN_PROGRESS)
        tracker.update("1_2_Start", progress=40)
        assert recorder.last("longRunningCommandProgress") == ["1_2_Start", "40"]
        assert json.loads(recorder.last("_lrcEvent")[1]) == {"progress": 40}

    def test_finished_command_leaves_v1_spectra_after_removal_time(
        self, tracker: LrcTracker, recorder: Recorder, clock: FakeClock
    ) -> None:
        cid = run_to_completion(tracker)
        assert tracker.ids_in_queue == [cid]
        clock.now += 9.9
        tracker.expire()
        assert tracker.ids_in_queue == [cid]
        clock.now += 0.2
        tracker.expire()
        assert tracker.ids_in_queue == [] and recorder.last("longRunningCommandIDsInQueue") == []
        assert tracker.status_of(cid) is TaskStatus.COMPLETED  # still known for the client
        assert json.loads(tracker.lrc_finished[-1])["uid"] == cid

    def test_commands_expire_in_the_order_they_finished_each_once(
        self, tracker: LrcTracker, recorder: Recorder, clock: FakeClock
    ) -> None:
        first = run_to_completion(tracker)
        clock.now += 5.0
        running = generate_command_id("Start")
        tracker.new_command(running, "Start")
        tracker.update(running, status=TaskStatus.IN_PROGRESS)
        second = run_to_completion(tracker)
        count = len(recorder.batches)
        tracker.expire()  # nothing due: nothing published
        assert len(recorder.batches) == count
        clock.now += 5.0  # the first is due, the second (finished 5 s later) is not
        tracker.expire()
        assert tracker.ids_in_queue == [second, running]
        assert recorder.last("longRunningCommandStatus") == [
            second, "COMPLETED", running, "IN_PROGRESS",
        ]  # fmt: skip
        count = len(recorder.batches)
        tracker.expire()  # the first is hidden already: not again
        assert len(recorder.batches) == count
        clock.now += 5.0
        tracker.update(running, status=TaskStatus.COMPLETED, result=(ResultCode.OK, "done"))
        tracker.expire()
        assert tracker.ids_in_queue == [running]
        assert [json.loads(info)["uid"] for info in tracker.lrc_finished] == [
            first, second, running,
        ]  # fmt: skip

    def test_updates_after_the_end_are_ignored(
        self, tracker: LrcTracker, recorder: Recorder
    ) -> None:
        cid = run_to_completion(tracker)
        count = len(recorder.batches)
        tracker.update(cid, status=TaskStatus.FAILED, result=(ResultCode.FAILED, "late"))
        assert len(recorder.batches) == count and tracker.status_of(cid) is TaskStatus.COMPLETED

    def test_unknown_command_is_not_found(self, tracker: LrcTracker) -> None:
        assert tracker.status_of("nope") is TaskStatus.NOT_FOUND

    def test_spectra_stay_within_their_sizes(self, tracker: LrcTracker) -> None:
        for _ in range(LRC_FINISHED_MAX_LENGTH + 20):
            run_to_completion(tracker)
        assert len(tracker.ids_in_queue) <= STATUS_QUEUE_SIZE
        assert len(tracker.statuses) <= 2 * STATUS_QUEUE_SIZE
        assert len(tracker.lrc_finished) == LRC_FINISHED_MAX_LENGTH

    def test_many_executing_commands_are_never_dropped(self, tracker: LrcTracker) -> None:
        ids = [generate_command_id("Prepare") for _ in range(10)]
        for cid in ids:
            tracker.new_command(cid, "Prepare")
            tracker.update(cid, status=TaskStatus.IN_PROGRESS)
        run_to_completion(tracker)
        assert all(tracker.status_of(cid) is TaskStatus.IN_PROGRESS for cid in ids)
        assert len(tracker.lrc_executing) == 10
