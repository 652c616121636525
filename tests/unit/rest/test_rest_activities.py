"""Activity and SBD routes over the fake device."""

from __future__ import annotations

import pytest

BASE = "/api/v1.0"
SBD = {
    "sbd_id": "sbd-t-1",
    "telescope": "ska_mid",
    "activities": {"observe": {"kind": "filesystem", "path": "file:///scripts/observe.py"}},
}
RUN = {
    "activity_name": "observe",
    "sbd_id": "sbd-t-1",
    "script_args": {"main": {"kwargs": {"n": 1}}},
}


def test_sbds_are_stored_and_read(client, device):
    response = client.post(f"{BASE}/sbds", json=SBD)
    assert response.status_code == 201 and response.json() == {"sbd": SBD}
    assert client.get(f"{BASE}/sbds/sbd-t-1").json() == {"sbd": SBD}
    missing = client.get(f"{BASE}/sbds/nope")
    assert missing.status_code == 404 and missing.json()["Message"] == "no SBD 'nope'"
    assert client.post(f"{BASE}/sbds", json={"x": 1}).status_code == 400


def test_run_activity_answers_201_with_its_procedure(client, device):
    client.post(f"{BASE}/sbds", json=SBD)
    response = client.post(f"{BASE}/activities", json=RUN)
    assert response.status_code == 201, response.text
    activity = response.json()["activity"]
    assert activity["uri"] == f"http://testserver{BASE}/activities/{activity['id']}"
    assert activity["state"] == "REQUESTED"
    assert activity["procedure_id"] in device.procedures
    sent = next(arg for name, arg in device.calls if name == "RunActivity")
    assert sent == {
        "activity_name": "observe",
        "sbd_id": "sbd-t-1",
        "script_args": {"main": {"args": [], "kwargs": {"n": 1}}},
        "prepare_only": False,
        "create_env": False,
    }
    listed = client.get(f"{BASE}/activities").json()["activities"]
    assert [a["id"] for a in listed] == [activity["id"]]
    assert client.get(f"{BASE}/activities/{activity['id']}").json()["activity"]["sbd_id"] == (
        "sbd-t-1"
    )


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"sbd_id": "sbd-t-1"}, 400),
        ({**RUN, "extra": 1}, 400),
        ({**RUN, "prepare_only": "maybe"}, 400),
        ({**RUN, "activity_name": "nothing"}, 400),
        ({**RUN, "sbd_id": "sbd-missing"}, 404),
    ],
)
def test_bad_activity_requests(client, body, status):
    client.post(f"{BASE}/sbds", json=SBD)
    response = client.post(f"{BASE}/activities", json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "type", "Message"}


def test_unknown_activity_is_404(client):
    response = client.get(f"{BASE}/activities/7")
    assert response.status_code == 404 and response.json()["type"] == "ResourceNotFound"


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/activities"), ("post", "/activities"), ("get", "/activities/1"),
     ("get", "/sbds/x")],
)  # fmt: skip
def test_a_device_without_activities_answers_501(client, device, method, path):
    device.activity_support = False
    response = client.request(method, f"{BASE}{path}", json=RUN if method == "post" else None)
    assert response.status_code == 501
    assert response.json()["type"] == "NotImplemented"
