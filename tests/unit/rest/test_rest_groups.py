"""``/groups`` over an in-memory groups device: shapes, roles and error bodies."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from ska_oso_oet.rest.app import create_app
from ska_oso_oet.rest.settings import RestSettings
from tests.unit.rest.gateway_fakes import FakeDevice
from tests.unit.rest.group_fakes import FakeGroups

BASE = "/api/v1.0"


@pytest.fixture
def groups() -> FakeGroups:
    return FakeGroups({101: "RUNNING", 202: "READY", 303: "COMPLETE"})


@pytest.fixture
def http(groups):
    app = create_app(RestSettings(), client=FakeDevice(), groups_client=groups)
    with TestClient(app) as client:
        yield client


def test_create_list_get_and_disband(http, groups):
    created = http.post(f"{BASE}/groups", json={"procedures": [101, 202], "abort": True})
    assert created.status_code == 201, created.text
    group = created.json()["group"]
    assert group["state"] == "ACTIVE" and group["policy"] == {"abort": True, "force": False}
    assert [m["procedure_id"] for m in group["members"]] == [101, 202]
    assert http.get(f"{BASE}/groups").json()["groups"][0]["id"] == group["id"]
    assert http.get(f"{BASE}/groups/{group['id']}").json()["group"]["name"] == group["name"]

    disbanded = http.put(f"{BASE}/groups/{group['id']}", json={"state": "DISBANDED"})
    assert disbanded.json()["group"]["state"] == "DISBANDED"
    again = http.delete(f"{BASE}/groups/{group['id']}")
    assert again.status_code == 409 and again.json()["type"] == "StateConflict"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"procedures": [101]}, 400, "at least 2"),
        ({"procedures": [101, 404]}, 404, "procedure 404 is not known"),
        ({"procedures": [101, 303]}, 409, "already finished"),
        ({"procedures": [101, 0]}, 400, "procedures"),
        ({"procedures": [101, 202], "colour": 1}, 400, "colour"),
    ],
)
def test_bad_groups_get_the_documented_error_body(http, body, status, words):
    response = http.post(f"{BASE}/groups", json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "type", "Message"}
    assert words in response.json()["Message"]


def test_members_are_added_to_active_groups_only(http, groups):
    groups.procedures[404] = "RUNNING"
    gid = http.post(f"{BASE}/groups", json={"procedures": [101, 202]}).json()["group"]["id"]
    added = http.post(f"{BASE}/groups/{gid}/members", json={"procedure_id": 404})
    assert [m["procedure_id"] for m in added.json()["group"]["members"]] == [101, 202, 404]
    both = http.post(f"{BASE}/groups/{gid}/members", json={"procedure_id": 1, "activity_id": 2})
    assert both.status_code == 400


def test_without_a_groups_device_the_routes_answer_503():
    with TestClient(create_app(RestSettings(), client=FakeDevice())) as http:
        response = http.get(f"{BASE}/groups")
    assert response.status_code == 503
    assert "Linked groups are unavailable" in response.json()["Message"]
