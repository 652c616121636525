"""GET /stream on a real uvicorn: SSE framing, order, ids, resume, keep-alive, many clients."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from httpx_sse import connect_sse

from ska_oso_oet.rest.settings import RestSettings

STREAM = "/api/v1.0/stream"


@pytest.fixture
def settings() -> RestSettings:
    return RestSettings(keepalive_seconds=0.3, sse_retry_ms=1500)


def events_after_ready(url: str, count: int, headers: dict | None = None, on_ready=None) -> list:
    """Open the stream, call ``on_ready`` once subscribed, collect ``count`` events."""
    received = []
    with (
        httpx.Client(timeout=20) as http,
        connect_sse(http, "GET", url, headers=dict(headers or {})) as source,
    ):
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for sse in source.iter_sse():
            if not sse.data:  # the first message only carries retry:
                assert sse.retry == 1500
                if on_ready:
                    on_ready()
                continue
            received.append(sse)
            if len(received) == count:
                return received
    raise AssertionError("stream ended early")


def test_events_arrive_in_order_with_their_seq_as_id(server_url, device):
    def produce():
        pid = 7
        device.procedures[pid] = {"id": pid, "state": "READY"}
        for n in range(5):
            device.announce(pid, f"hello {n}")

    received = events_after_ready(server_url + STREAM, 5, on_ready=produce)
    payloads = [json.loads(sse.data) for sse in received]
    assert [p["msg"] for p in payloads] == [f"hello {n}" for n in range(5)]
    assert all(p["topic"] == "user.script.announce" for p in payloads)
    assert [int(sse.id) for sse in received] == [p["seq"] for p in payloads]
    assert sorted(p["seq"] for p in payloads) == [p["seq"] for p in payloads]


def test_last_event_id_resumes_after_the_given_event(server_url, device):
    seqs = [device.emit("user.script.announce", procedure_id=1, msg=str(n)) for n in range(6)]
    received = events_after_ready(server_url + STREAM, 3, headers={"Last-Event-ID": str(seqs[2])})
    assert [int(sse.id) for sse in received] == seqs[3:]
    query = events_after_ready(f"{server_url}{STREAM}?last_event_id={seqs[4]}", 1)
    assert int(query[0].id) == seqs[5]


def test_keep_alive_comments_flow_while_idle(server_url):
    with httpx.Client(timeout=10) as http, http.stream("GET", server_url + STREAM) as response:
        seen = ""
        for chunk in response.iter_text():
            seen += chunk
            if seen.count(": keep-alive") >= 2:
                break
    assert seen.startswith("retry: 1500")


def test_a_stalled_client_does_not_hold_back_the_others(server_url, device):
    """A client that stops reading fills its socket, then its queue, and is dropped; a healthy
    client keeps receiving every event in order meanwhile."""
    device.hub._queue_size = 50
    total, batch = 3000, 50
    received: list[int] = []
    progress = threading.Condition()
    ready = threading.Event()

    def healthy() -> None:
        with httpx.Client(timeout=30) as http, connect_sse(http, "GET", server_url + STREAM) as src:
            for sse in src.iter_sse():
                if not sse.data:
                    ready.set()
                    continue
                with progress:
                    received.append(int(json.loads(sse.data)["n"]))
                    progress.notify_all()
                if len(received) == total:
                    return

    stalled = httpx.Client(timeout=30)
    stalled_response = stalled.send(stalled.build_request("GET", server_url + STREAM), stream=True)
    reader = threading.Thread(target=healthy)
    reader.start()
    try:
        assert ready.wait(10)
        wait_for(lambda: device.hub.subscriber_count == 2)
        for start in range(0, total, batch):
            for n in range(start, start + batch):
                device.emit("script.stdout", procedure_id=1, stream="stdout", line="x" * 2000, n=n)
            with progress:  # pace like a real device: the healthy client keeps up
                target = start + batch
                assert progress.wait_for(lambda t=target: len(received) >= t, timeout=20)
        reader.join(20)
        assert received == list(range(total))
        assert device.hub.subscriber_count <= 1  # the stalled client was dropped
    finally:
        stalled_response.close()
        stalled.close()
        reader.join(5)


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_the_first_message_gives_the_position_so_a_quick_reconnect_misses_nothing(
    server_url, device
):
    before = device.emit("user.script.announce", procedure_id=1, msg="old")
    with httpx.Client(timeout=10) as http:
        with connect_sse(http, "GET", server_url + STREAM) as source:
            first = next(iter(source.iter_sse()))
        assert (first.data, first.id) == ("", str(before))
        missed = device.emit("user.script.announce", procedure_id=1, msg="while away")
        received = events_after_ready(server_url + STREAM, 1, headers={"Last-Event-ID": first.id})
    assert int(received[0].id) == missed
