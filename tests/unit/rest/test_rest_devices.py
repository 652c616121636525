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
    return {"oso/oet/1": FakeDevice(), "oso/oet/2": FakeDevice()}


@pytest.fixture
def app(devices):
    settings = RestSettings(device="oso/oet/1", devices=["oso/oet/2"])
    return create_app(settings, client=devices["oso/oet/1"], extra_clients=devices)


def test_each_device_has_its_own_api(app, devices):
    with TestClient(app) as client:
        response = client.post("/subarray/2/api/v1.0/procedures", json=BODY)
        assert response.status_code == 201
        assert response.json()["procedure"]["uri"] == (
            "http://testserver/subarray/2/api/v1.0/procedures/1"
        )
        assert [c[0] for c in devices["oso/oet/2"].calls] == ["Prepare"]
        assert devices["oso/oet/1"].calls == []
        assert client.get("/api/v1.0/procedures").json() == {"procedures": []}
        assert len(client.get("/subarray/2/api/v1.0/procedures").json()["procedures"]) == 1
        missing = client.get("/subarray/2/api/v1.0/procedures/9")
        assert missing.status_code == 404 and missing.json()["type"] == "ResourceNotFound"
        document = client.get("/subarray/2/api/v1.0/openapi.json").json()
        assert document["info"]["title"] == "OET REST API of oso/oet/2"


def test_streams_are_per_device(app, devices):
    with (
        serve_in_thread(app) as url,
        httpx.Client(timeout=10) as http,
        connect_sse(http, "GET", f"{url}/subarray/2/api/v1.0/stream") as source,
    ):
        events = source.iter_sse()
        next(events)  # subscribed
        devices["oso/oet/1"].announce(1, "for subarray 1")
        devices["oso/oet/2"].announce(1, "for subarray 2")
        received = next(events)
    assert json.loads(received.data)["msg"] == "for subarray 2"


def test_prefix_comes_from_the_device_number():
    assert subarray_prefix("oso/oet/12") == "/subarray/12"
    assert subarray_prefix("tango://db:10000/oso/oet/3") == "/subarray/3"
    assert subarray_prefix("test/oet/x") == "/subarray/test-oet-x"
    for name in ("oso/oet/12", "test/oet/x"):  # oet-stack prints URLs by the same rule
        assert stack_service.subarray_prefix(name) == subarray_prefix(name)
