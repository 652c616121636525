"""/health and /metrics of a real gateway in front of a real OETDevice (PyDatabaseds on sqlite,
OETDeviceServer and oet-gateway, each its own process)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import tango
from prometheus_client.parser import text_string_to_metric_families

from .conftest import DEVICE, TIMEOUT, EventStream, is_event, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
#: /health must answer well within Kubernetes' probe timeout, whatever the device does.
HEALTH_DEADLINE = 5.0


def root(stack: Any) -> str:
    return stack.url.removesuffix("/api/v1.0")


def get_health(stack: Any, path: str = "/health") -> httpx.Response:
    started = time.monotonic()
    response = httpx.get(f"{root(stack)}{path}", timeout=30)
    assert time.monotonic() - started < HEALTH_DEADLINE, "health took too long"
    return response


def wait_for_health(stack: Any, status: int) -> dict[str, Any]:
    """The /health body once it answers ``status`` (results are reused for a second)."""
    seen: list[Any] = []

    def answered() -> dict[str, Any] | None:
        response = get_health(stack)
        seen[:] = [response.status_code, response.text]
        return response.json() if response.status_code == status else None

    return wait_for(answered, TIMEOUT, f"/health answering {status} (last: {seen})")


def samples(stack: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{root(stack)}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def metric(values: dict, name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted({"device": DEVICE, **labels}.items()))), 0.0)


def test_health_is_200_with_the_device_up(stack) -> None:
    for path in ("/health", "/api/v1.0/health"):
        response = get_health(stack, path)
        assert response.status_code == 200, response.text
        (device,) = response.json()["devices"]
        assert (device["state"], device["admin_mode"], device["health_state"]) in (
            ("ON", "ONLINE", "OK"),
            ("RUNNING", "ONLINE", "OK"),
        )
        assert device["reachable"] and device["connected"] and device["ping_ms"] > 0


def test_metrics_move_after_a_procedure_runs(stack) -> None:
    before = samples(stack)
    with stack.http() as http, EventStream(stack.url) as events:
        body = {"script": {"script_type": "filesystem", "script_uri": stack.script_uri("hello.py")}}
        created = http.post("/procedures", json=body)
        assert created.status_code == 201, created.text
        pid = created.json()["procedure"]["id"]
        started = http.put(f"/procedures/{pid}", json={"state": "RUNNING"})
        assert started.status_code == 200, started.text
        events.wait_for(is_event("procedure.lifecycle.complete", pid))

        def moved() -> dict | None:
            after = samples(stack)
            return after if metric(after, "oet_procedures", state="COMPLETE") >= 1 else None

        after = wait_for(moved, TIMEOUT, "procedures by state following the device")
        assert metric(after, "oet_gateway_sse_clients") >= 1  # our EventStream
    for command in ("prepare", "start"):
        name = "oet_gateway_device_command_seconds_count"
        assert metric(after, name, command=command) == metric(before, name, command=command) + 1
    ready = "oet_gateway_prepare_to_ready_seconds_count"
    assert metric(after, ready) == metric(before, ready) + 1
    relayed = "oet_gateway_events_relayed_total"
    assert metric(after, relayed) >= metric(before, relayed) + len(events.of(pid))
    assert metric(after, "oet_device_reachable") == 1 and metric(after, "oet_device_usable") == 1
    assert metric(after, "oet_device_admin_mode", mode="ONLINE") == 1


def test_health_is_503_while_the_device_is_offline(stack) -> None:
    proxy = tango.DeviceProxy(f"tango://{stack.tango_host}/{DEVICE}")
    proxy.adminMode = 1  # OFFLINE
    try:
        body = wait_for_health(stack, 503)
        device = body["devices"][0]
        assert device["admin_mode"] == "OFFLINE" and device["reachable"] and not device["usable"]
        assert metric(samples(stack), "oet_device_usable") == 0
    finally:
        proxy.adminMode = 0  # ONLINE
    wait_for_health(stack, 200)


def test_health_is_503_fast_while_the_device_server_is_down(stack) -> None:
    stack.device_server.stop()
    try:
        body = wait_for_health(stack, 503)
        device = body["devices"][0]
        assert not device["reachable"] and device["error"]
        for _ in range(3):  # every check answers quickly (bounded by get_health)
            assert get_health(stack).status_code == 503
        assert metric(samples(stack), "oet_device_reachable") == 0
    finally:
        stack.device_server.start()
    wait_for_health(stack, 200)
