"""/health, /metrics and the SKA log format of the gateway and oet-stack (no Tango device)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from ska_oso_oet.rest.app import create_app
from ska_oso_oet.rest.metrics import _ReadyTimer
from ska_oso_oet.rest.monitor import DeviceStatus, Probe
from ska_oso_oet.rest.settings import RestSettings
from tests.unit.rest.gateway_fakes import FakeDevice

pytestmark = pytest.mark.timeout(60)

SKA_LINE = re.compile(
    r"^1\|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\|(DEBUG|INFO|WARNING|ERROR|CRITICAL)\|"
    r"[^|]*\|[^|]*\|[^|]+#\d+\|[^|]*\|.*$"
)
SCRIPT = {"script": {"script_type": "filesystem", "script_uri": "file:///scripts/hello.py"}}


class StubProbe(Probe):
    """A probe answering what the test says, counting calls; ``hang`` never answers."""

    def __init__(self, hang: bool = False, **status: Any):
        self.status = {"reachable": True, "state": "ON", "admin_mode": "ONLINE",
                       "health_state": "OK", **status}  # fmt: skip
        self.hang = hang
        self.calls = 0

    async def probe(self) -> DeviceStatus:
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()
        return DeviceStatus("oso/oet/1", **self.status)


def use_probe(client: TestClient, probe: Probe, timeout: float = 1.5) -> None:
    monitor = client.app.state.monitor
    monitor.devices["oso/oet/1"].probe = probe
    monitor.devices["oso/oet/1"].last = None
    monitor.max_age, monitor.timeout = 0.0, timeout


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted({"device": "oso/oet/1", **labels}.items())))]


# ----- /health ---------------------------------------------------------------------------------
def test_health_is_served_at_the_root_and_under_the_base_path(client: TestClient) -> None:
    for path in ("/health", "/api/v1.0/health"):
        response = client.get(path)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "ok" and body["gateway"]["status"] == "ok"
        (device,) = body["devices"]
        assert device["device"] == "oso/oet/1" and device["path"] == "/api/v1.0"
        assert device["usable"] and device["reachable"] and device["connected"]
    assert "/api/v1.0/health" in client.app.openapi()["paths"]


def test_health_reports_the_device_state_admin_mode_and_health_state(client) -> None:
    use_probe(client, StubProbe(state="RUNNING", admin_mode="ENGINEERING", ping_seconds=0.002))
    device = client.get("/health").json()["devices"][0]
    assert (device["state"], device["admin_mode"], device["health_state"]) == (
        "RUNNING", "ENGINEERING", "OK",
    )  # fmt: skip
    assert device["usable"] and device["ping_ms"] == 2.0


@pytest.mark.parametrize(
    "status",
    [
        {"admin_mode": "OFFLINE", "state": "DISABLE"},
        {"state": "FAULT", "health_state": "FAILED"},
        {"admin_mode": "NOT_FITTED"},
        {"reachable": False, "state": None, "error": "connection refused"},
        {"error": "cannot read adminMode"},
    ],
)
def test_health_is_503_when_the_device_is_not_usable(client: TestClient, status: dict) -> None:
    use_probe(client, StubProbe(**status))
    response = client.get("/api/v1.0/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and not body["devices"][0]["usable"]
    assert body["gateway"]["status"] == "ok"  # the gateway itself is fine


def test_an_unreachable_device_gives_503_with_the_reason(client, device: FakeDevice) -> None:
    device.unreachable = True
    client.app.state.monitor.max_age = 0
    response = client.get("/health")
    assert response.status_code == 503
    entry = response.json()["devices"][0]
    assert not entry["reachable"] and "cannot be reached" in entry["error"]


def test_health_is_503_until_the_gateway_client_is_connected(settings) -> None:
    class Connecting(FakeDevice):
        connected = False

    with TestClient(create_app(settings, client=Connecting())) as client:
        response = client.get("/health")
    assert response.status_code == 503
    entry = response.json()["devices"][0]
    assert entry["reachable"] and not entry["connected"]


def test_a_hanging_device_does_not_hang_health(client: TestClient) -> None:
    probe = StubProbe(hang=True)
    use_probe(client, probe, timeout=0.3)
    for _ in range(3):
        started = time.monotonic()
        response = client.get("/health")
        assert time.monotonic() - started < 5
        assert response.status_code == 503
        assert "no answer within 0.3 s" in response.json()["devices"][0]["error"]
    assert probe.calls == 1  # later checks wait for the same probe: nothing piles up


def test_results_are_reused_for_a_second(client: TestClient) -> None:
    probe = StubProbe()
    use_probe(client, probe)
    client.app.state.monitor.max_age = 60
    for path in ("/health", "/api/v1.0/health", "/metrics"):
        assert client.get(path).status_code == 200
    assert probe.calls == 1


def test_health_covers_every_device_of_the_gateway(settings: RestSettings) -> None:
    second = FakeDevice()
    second.unreachable = True
    app = create_app(
        settings.model_copy(update={"devices": ["oso/oet/2"]}),
        client=FakeDevice(),
        extra_clients={"oso/oet/2": second},
    )
    with TestClient(app) as client:
        response = client.get("/health")
    assert response.status_code == 503
    by_name = {d["device"]: d for d in response.json()["devices"]}
    assert by_name["oso/oet/1"]["usable"] and not by_name["oso/oet/2"]["usable"]
    assert by_name["oso/oet/2"]["path"] == "/subarray/2/api/v1.0"


# ----- /metrics --------------------------------------------------------------------------------
def test_metrics_count_requests_latencies_events_and_procedures(client, device) -> None:
    client.app.state.monitor.max_age = 0  # no reuse of the first scrape's device reading
    emitted: list[int] = []
    emit = device.emit
    device.emit = lambda *args, **kwargs: emitted.append(emit(*args, **kwargs)) or emitted[-1]
    empty = metric_values(client.get("/metrics").text)
    assert value(empty, "oet_gateway_device_command_seconds_count", command="prepare") == 0
    first = client.post("/api/v1.0/procedures", json=SCRIPT).json()["procedure"]["id"]
    second = client.post("/api/v1.0/procedures", json=SCRIPT).json()["procedure"]["id"]
    started = client.put(f"/api/v1.0/procedures/{first}", json={"state": "RUNNING"})
    assert started.status_code == 200, started.text
    stopped = client.put(f"/api/v1.0/procedures/{first}", json={"state": "STOPPED"})
    assert stopped.status_code == 200, stopped.text
    # refused by the device (a URI the gateway's schema refuses never reaches it)
    bad = client.post(
        "/api/v1.0/procedures", json={"script": {"script_uri": "file:///forbidden/x.py"}}
    )
    assert bad.status_code == 400

    response = client.get("/api/v1.0/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = metric_values(response.text)
    for command, count in (("prepare", 3), ("start", 1), ("stop", 1)):
        assert value(samples, "oet_gateway_device_command_seconds_count", command=command) == count
    assert value(samples, "oet_gateway_device_command_errors_total",
                 command="prepare", code="OET_INVALID_REQUEST") == 1  # fmt: skip
    assert value(samples, "oet_gateway_prepare_to_ready_seconds_count") == 2
    assert value(samples, "oet_gateway_events_relayed_total") == len(emitted) > 10
    assert value(samples, "oet_procedures", state="STOPPED") == 1
    assert value(samples, "oet_procedures", state="READY") == 1
    assert value(samples, "oet_procedures", state="RUNNING") == 0
    assert value(samples, "oet_device_reachable") == 1 and value(samples, "oet_device_usable") == 1
    assert second != first


def test_metrics_export_the_device_enums_and_drop_stale_values(client: TestClient) -> None:
    use_probe(client, StubProbe(admin_mode="OFFLINE", state="DISABLE",
                                procedure_states=("COMPLETE", "COMPLETE", "FAILED")))  # fmt: skip
    samples = metric_values(client.get("/metrics").text)
    assert value(samples, "oet_device_admin_mode", mode="OFFLINE") == 1
    assert value(samples, "oet_device_admin_mode", mode="ONLINE") == 0
    assert value(samples, "oet_device_state", state="DISABLE") == 1
    assert value(samples, "oet_device_usable") == 0
    assert value(samples, "oet_procedures", state="COMPLETE") == 2
    use_probe(client, StubProbe(reachable=False, state=None, error="gone"))
    samples = metric_values(client.get("/metrics").text)
    assert value(samples, "oet_device_reachable") == 0
    assert not any(name == "oet_procedures" for name, _ in samples)  # no stale counts


def test_ready_is_timed_whichever_arrives_first() -> None:
    observed: list[float] = []

    class Histogram:
        observe = staticmethod(observed.append)

    timer = _ReadyTimer(Histogram())

    async def prepare(procedure_id: int, ready_first: bool) -> dict:
        if ready_first:
            timer.on_ready(procedure_id)  # the event overtook the answer
        return {"id": procedure_id}

    async def scenario() -> None:
        tracked = timer.wrap_prepare(prepare)
        await tracked(1, ready_first=True)
        await tracked(2, ready_first=False)
        assert len(observed) == 1
        timer.on_ready(2)
        timer.on_ready(3)  # not prepared through this gateway: remembered, never observed

    asyncio.run(scenario())
    assert len(observed) == 2 and all(0 <= v < 5 for v in observed)
    assert timer.posted == {} and list(timer.ready) == [3]


def test_sse_clients_are_counted_while_connected(server_url: str) -> None:
    def sse_clients() -> float:
        samples = metric_values(httpx.get(f"{server_url}/metrics", timeout=10).text)
        return value(samples, "oet_gateway_sse_clients")

    assert sse_clients() == 0
    with httpx.stream("GET", f"{server_url}/api/v1.0/stream", timeout=10) as stream:
        lines = stream.iter_lines()  # kept: a discarded iterator closes the stream
        assert next(lines).startswith("retry:")  # the subscription is in place
        assert sse_clients() == 1
        assert httpx.get(f"{server_url}/health", timeout=10).json()["gateway"]["sse_clients"] == 1
    deadline = time.monotonic() + 10
    while sse_clients() != 0:
        assert time.monotonic() < deadline, "the closed stream is still counted"
        time.sleep(0.05)  # the server notices the disconnection asynchronously


# ----- SKA log format --------------------------------------------------------------------------
def _drain(process: subprocess.Popen, lines: list[str]) -> threading.Thread:
    thread = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")))
    thread.start()
    return thread


def test_the_gateway_logs_every_line_in_the_ska_format(tmp_path) -> None:
    """A real oet-gateway whose Tango database does not exist: startup, the connection
    warnings, /health (503, fast) and uvicorn's access lines are all SKA lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OET_")}
    env.update(TANGO_HOST="127.0.0.1:9", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "ska_oso_oet.rest.server", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    lines: list[str] = []
    reader = _drain(process, lines)
    try:
        deadline = time.monotonic() + 30
        while not any("Uvicorn running on" in line for line in lines):
            assert process.poll() is None and time.monotonic() < deadline, lines
            time.sleep(0.05)  # waiting for a child process's start-up line
        url = (
            next(line for line in lines if "Uvicorn running on" in line).split("on ")[1].split()[0]
        )
        started = time.monotonic()
        response = httpx.get(f"{url}/health", timeout=10)
        assert response.status_code == 503 and time.monotonic() - started < 5
        assert not response.json()["devices"][0]["reachable"]
        while not any('"GET /health HTTP/1.1" 503' in line for line in lines):
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(20)
        reader.join(10)
    assert lines and all(SKA_LINE.match(line.rstrip("\n")) for line in lines), lines
    assert all("|service:oet-gateway|" in line for line in lines)


def test_oet_stack_logs_its_own_messages_in_the_ska_format(tmp_path) -> None:
    code = (
        "import sys, ska_oso_oet.stack as stack\n"
        "def fail(options, s):\n"
        "    raise RuntimeError('PyDatabaseds exited with code 1; see x.log')\n"
        "stack.start = fail\n"
        f"sys.exit(stack.main(['--data-dir', {str(tmp_path)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    errors = done.stderr.strip().splitlines()
    assert errors and all(SKA_LINE.match(line) for line in errors), errors
    assert "|ERROR|" in errors[-1] and "|service:oet-stack|" in errors[-1]
    assert errors[-1].endswith("cannot start: PyDatabaseds exited with code 1; see x.log")
    assert done.stdout.strip().splitlines() == ["oet-stack stopped"]  # stdout: output only
