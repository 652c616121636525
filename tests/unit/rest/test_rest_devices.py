"""One gateway, several devices: the first at /api/v1.0, the others under /subarray/<n>."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi.testclient import TestClient
from httpx_sse import connect_sse

from ska_oso_oet.rest import stack_service
from ska_oso_oet.rest.app import create_app, subarray_prefix
from ska_oso_oet.rest.settings import RestSettings
from tests.unit.rest.gateway_fakes import FakeDevice, serve_in_thread

BODY = {"script": {"script_uri": "file:///scripts/a.py"}}


@pytest.fixture
def devices() -> dict[str, FakeDevice]:
    return {
        "oso/oet/1": FakeDevice(subarray=1, name="oso/oet/1"),
        "oso/oet/2": FakeDevice(subarray=2, name="oso/oet/2"),
    }


@pytest.fixture
def app(devices):
    settings = RestSettings(device="oso/oet/1", devices=["oso/oet/2"])
    return create_app(settings, client=devices["oso/oet/1"], extra_clients=devices)


def on_subarray(n: int | None, **extra) -> dict:
    kwargs = {} if n is None else {"subarray_id": n}
    return {**BODY, "script_args": {"init": {"args": [], "kwargs": kwargs}}, **extra}


def test_each_device_has_its_own_api(app, devices):
    with TestClient(app) as client:
        response = client.post("/subarray/2/api/v1.0/procedures", json=BODY)
        assert response.status_code == 201
        assert response.json()["procedure"]["uri"] == (
            "http://testserver/subarray/2/api/v1.0/procedures/2"
        )
        assert [c[0] for c in devices["oso/oet/2"].calls] == ["Prepare"]
        assert devices["oso/oet/1"].calls == []
        assert client.get("/subarray/2/api/v1.0/procedures").json()["procedures"][0]["id"] == 2
        missing = client.get("/subarray/2/api/v1.0/procedures/9")
        assert missing.status_code == 404 and missing.json()["type"] == "ResourceNotFound"
        document = client.get("/subarray/2/api/v1.0/openapi.json").json()
        assert document["info"]["title"] == "OET REST API of oso/oet/2"


def test_default_url_routes_a_create_by_subarray_id(app, devices):
    with TestClient(app) as client:
        on_two = client.post("/api/v1.0/procedures", json=on_subarray(2)).json()["procedure"]
        on_one = client.post("/api/v1.0/procedures", json=on_subarray(None)).json()["procedure"]
        assert (on_two["id"], on_one["id"]) == (2, 1)
        assert [c[0] for c in devices["oso/oet/2"].calls] == ["Prepare"]
        assert [c[0] for c in devices["oso/oet/1"].calls] == ["Prepare"]
        assert on_two["uri"] == "http://testserver/api/v1.0/procedures/2"

        refused = client.post("/api/v1.0/procedures", json=on_subarray(5))
        assert refused.status_code == 400
        assert "subarray 5 is not served" in refused.json()["Message"]
        assert "serves subarrays 1, 2" in refused.json()["Message"]
        wrong = client.post("/api/v1.0/procedures", json=on_subarray("two"))
        assert wrong.status_code == 400 and "subarray_id must be an integer" in wrong.text
        assert len(devices["oso/oet/1"].procedures) + len(devices["oso/oet/2"].procedures) == 2


def test_ids_lead_to_their_device_and_lists_cover_every_device(app, devices):
    with TestClient(app) as client:
        first = client.post("/api/v1.0/procedures", json=on_subarray(2)).json()["procedure"]
        second = client.post("/api/v1.0/procedures", json=on_subarray(1)).json()["procedure"]
        third = client.post("/api/v1.0/procedures", json=on_subarray(2)).json()["procedure"]
        assert [first["id"], second["id"], third["id"]] == [2, 1, 102]
        listed = client.get("/api/v1.0/procedures").json()["procedures"]
        assert [p["id"] for p in listed] == [2, 1, 102]  # oldest first, across devices

        devices["oso/oet/1"].calls.clear()
        got = client.get("/api/v1.0/procedures/102").json()["procedure"]
        assert got["id"] == 102 and devices["oso/oet/1"].calls == []
        started = client.put("/api/v1.0/procedures/102", json={"state": "RUNNING"})
        assert started.status_code == 200, started.text
        assert devices["oso/oet/2"].procedures[102]["state"] == "RUNNING"
        stopped = client.put("/api/v1.0/procedures/102", json={"state": "STOPPED"})
        assert stopped.json() == {"abort_message": "Successfully stopped script with ID 102"}
        assert not any(c[0] in ("Start", "Stop") for c in devices["oso/oet/1"].calls)

        missing = client.get("/api/v1.0/procedures/77")
        assert missing.status_code == 404
        assert missing.json()["Message"] == "No information available for PID=77"

        devices["oso/oet/1"].unreachable = True  # the others are still listed
        assert [p["id"] for p in client.get("/api/v1.0/procedures").json()["procedures"]] == [
            2,
            102,
        ]
        assert client.get("/api/v1.0/procedures/1").status_code == 503  # not a false 404


def test_default_stream_merges_every_device_and_per_device_streams_stay_apart(app, devices):
    with (
        serve_in_thread(app) as url,
        httpx.Client(timeout=10) as http,
        connect_sse(http, "GET", f"{url}/api/v1.0/stream") as merged,
        connect_sse(http, "GET", f"{url}/subarray/2/api/v1.0/stream") as second,
    ):
        merged_events, second_events = merged.iter_sse(), second.iter_sse()
        next(merged_events), next(second_events)  # subscribed
        devices["oso/oet/1"].announce(1, "for subarray 1")
        devices["oso/oet/2"].announce(2, "for subarray 2")
        devices["oso/oet/1"].announce(1, "again for 1")
        received = [next(merged_events) for _ in range(3)]
        alone = next(second_events)
    # Each device's events in its order; devices are not ordered among themselves.
    data = [json.loads(e.data) for e in received]
    assert [d["msg"] for d in data if d["msg_src"] == "oso/oet/1"] == [
        "for subarray 1",
        "again for 1",
    ]
    assert [d["msg"] for d in data if d["msg_src"] == "oso/oet/2"] == ["for subarray 2"]
    ids = [int(e.id) for e in received]
    assert ids == sorted(set(ids)) and [d["seq"] for d in data] == ids
    assert json.loads(alone.data)["msg"] == "for subarray 2"


def test_prefix_comes_from_the_device_number():
    assert subarray_prefix("oso/oet/12") == "/subarray/12"
    assert subarray_prefix("tango://db:10000/oso/oet/3") == "/subarray/3"
    assert subarray_prefix("test/oet/x") == "/subarray/test-oet-x"
    for name in ("oso/oet/12", "test/oet/x"):  # oet-stack prints URLs by the same rule
        assert stack_service.subarray_prefix(name) == subarray_prefix(name)
