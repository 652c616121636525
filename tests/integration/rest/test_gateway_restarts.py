"""Restarts: the gateway survives a device server restart, and the device a gateway restart."""

from __future__ import annotations

import re
import subprocess
import threading
import time

import httpx
import pytest
import tango

from .conftest import BIN, DEVICE, TIMEOUT, EventStream, is_event, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def run_hello(http, stack, events: EventStream | None = None) -> int:
    body = {"script": {"script_type": "filesystem", "script_uri": stack.script_uri("hello.py")}}
    response = http.post("/procedures", json=body)
    assert response.status_code == 201, response.text
    pid = response.json()["procedure"]["id"]
    started = http.put(f"/procedures/{pid}", json={"state": "RUNNING"})
    assert started.status_code == 200, started.text
    if events is not None:
        events.wait_for(is_event("procedure.lifecycle.complete", pid))
    return pid


def test_gateway_follows_a_device_server_restart(stack):
    with stack.http() as http, EventStream(stack.url) as events:
        before = run_hello(http, stack, events)
        assert http.get("/procedures").status_code == 200  # the gateway's copy is current now

        stack.device_server.stop()
        # Served from the copy at most its max age (2 s), then the device is asked: 503.
        down = wait_for(
            lambda: (r := http.get("/procedures")).status_code == 503 and r,
            timeout=10,
            what="GET /procedures answering 503 once the device server is gone",
        )
        assert down.json()["type"] == "DeviceUnavailable"
        one = http.get(f"/procedures/{before}")
        assert one.status_code == 503, one.text  # one procedure is always asked of the device

        stack.device_server.start()
        stack.start_device_server_wait()
        listed = wait_for(
            lambda: http.get("/procedures").status_code == 200 and http.get("/procedures").json(),
            what="gateway answering again",
        )
        assert before in [p["id"] for p in listed["procedures"]]  # history survived

        # The stream opened before the restart carries the new run's events once Tango has
        # re-subscribed (its keep-alive thread notices the restart within ~10-20 s).
        deadline = time.monotonic() + TIMEOUT
        after = None
        while after is None and time.monotonic() < deadline:
            pid = run_hello(http, stack)
            try:
                events.wait_for(is_event("procedure.lifecycle.complete", pid), timeout=15)
                after = pid
            except AssertionError:
                continue
        assert after is not None, "events never resumed after the device server restart"
        seqs = events.ids
        assert seqs == sorted(set(seqs))


def test_device_is_unaffected_by_gateway_restarts_and_clients_resume(stack):
    port = int(re.search(r":(\d+)/", stack.url).group(1))
    with stack.http() as http:
        pid = run_hello(http, stack)
    streams_before = stack.gateway.output().count("GET /api/v1.0/stream")
    listener = subprocess.Popen(
        [str(BIN / "oet"), "listen", "--topics=user.script.announce"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**stack.env, "OET_REST_URI": stack.url},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(listener.stdout.readline, "")))
    reader.start()
    try:
        wait_for(
            lambda: stack.gateway.output().count("GET /api/v1.0/stream") > streams_before,
            what="oet listen connected",
        )
        started = time.monotonic()
        stack.gateway.stop()
        assert time.monotonic() - started < 15, "gateway did not stop promptly with a client"

        proxy = tango.DeviceProxy(f"tango://{stack.tango_host}/{DEVICE}")
        assert proxy.state() == tango.DevState.ON
        assert pid in [int(i) for i in proxy.procedureIds]

        stack.gateway.command[stack.gateway.command.index("--port") + 1] = str(port)
        stack.start_gateway()
        assert stack.url == f"http://127.0.0.1:{port}/api/v1.0"
        with stack.http() as http:
            assert pid in [p["id"] for p in http.get("/procedures").json()["procedures"]]
            again = run_hello(http, stack)
        wait_for(
            lambda: any("hello from subarray 1 #2" in line for line in lines),
            what=f"oet listen printing the run of {again} after the gateway restart: {lines}",
        )
    finally:
        listener.terminate()
        listener.wait(10)
        reader.join(10)
    assert any(line.startswith("- Script message: hello from subarray 1") for line in lines)


def test_gateway_started_before_the_device_answers_503_then_connects(stack):
    stack.gateway.stop()
    stack.device_server.stop()
    stack.gateway.command[stack.gateway.command.index("--port") + 1] = "0"
    stack.gateway.start()
    match = stack.gateway.wait_for_output(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")
    stack.url = match.group(1) + "/api/v1.0"
    response = httpx.get(f"{stack.url}/procedures", timeout=10)
    assert response.status_code == 503
    assert response.json()["type"] == "DeviceUnavailable"
    stack.device_server.start()
    stack.start_device_server_wait()
    stack.wait_gateway_connected()
    with stack.http() as http, EventStream(stack.url) as events:
        run_hello(http, stack, events)
