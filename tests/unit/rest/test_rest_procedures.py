"""Procedure routes over a fake device: bodies, wrapping, uri, status codes and error bodies."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from tests.unit.rest.gateway_fakes import FakeDevice

BASE = "/api/v1.0"
CREATE = {
    "script": {"script_type": "filesystem", "script_uri": "file:///scripts/hello.py"},
    "script_args": {"init": {"args": [1], "kwargs": {"subarray_id": 1}}},
}


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def create(client: TestClient, body: dict | None = None) -> dict:
    response = client.post(f"{BASE}/procedures", json=body or CREATE)
    assert response.status_code == 201, response.text
    return response.json()["procedure"]


def test_create_answers_201_with_uri_from_the_request_and_first_state(client, device):
    procedure = create(client)
    assert procedure["uri"] == f"http://testserver{BASE}/procedures/{procedure['id']}"
    assert procedure["history"]["process_states"][0][0] == "CREATING"
    assert procedure["state"] == "CREATING"
    assert procedure["script_args"]["init"] == {"args": [1], "kwargs": {"subarray_id": 1}}
    assert device.calls[0] == ("Prepare", CREATE)


def test_uri_follows_the_host_the_client_used(client):
    response = client.post(f"{BASE}/procedures", json=CREATE, headers={"host": "oet.example:8080"})
    assert response.json()["procedure"]["uri"].startswith(
        "http://oet.example:8080/api/v1.0/procedures/"
    )


def test_create_accepts_the_older_script_uri_form(client, device):
    body = {"script_uri": "file:///scripts/hello.py", "script_args": {"init": {"kwargs": {"x": 2}}}}
    procedure = create(client, body)
    assert procedure["script"]["script_uri"] == "file:///scripts/hello.py"
    assert device.calls[-1] == ("Prepare", body)


def test_create_drops_the_empty_run_arguments_older_clients_send(client, device):
    body = {**CREATE, "script_args": {**CREATE["script_args"], "run": {"args": [], "kwargs": {}}}}
    create(client, body)
    assert device.calls[-1] == ("Prepare", CREATE)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "needs 'script'"),
        ({"script": {"script_type": "filesystem"}}, "script_uri"),
        ({"script": {"script_uri": "file:///a.py", "script_type": "svn"}}, "script_type"),
        ({"script": {"script_uri": "file:///a.py"}, "script_args": {"init": {"argz": []}}}, "argz"),
        ({"script": {"script_uri": "file:///a.py"}, "script_args": "init"}, "script_args"),
        ({"script": {"script_uri": "file:///a.py"}, "bogus": 1}, "bogus"),
    ],
)
def test_malformed_create_bodies_are_400_with_the_documented_body(client, device, body, fragment):
    response = client.post(f"{BASE}/procedures", json=body)
    assert response.status_code == 400
    error = response.json()
    assert error["error"] == "400 Bad Request"
    assert error["type"] == "Malformed Request"
    assert fragment in error["Message"]
    assert not [c for c in device.calls if c[0] == "Prepare"]


def test_invalid_json_is_400(client):
    response = client.post(
        f"{BASE}/procedures", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["type"] == "Malformed Request"


def test_device_refusal_of_a_request_is_400_with_its_reason(client):
    body = {"script": {"script_uri": "file:///forbidden/x.py"}}
    response = client.post(f"{BASE}/procedures", json=body)
    assert response.status_code == 400
    assert response.json()["Message"] == "file:///forbidden/x.py is outside the script roots"


def test_script_uri_of_an_unknown_scheme_is_400_before_the_device(client, device):
    response = client.post(f"{BASE}/procedures", json={"script": {"script_uri": "http://x.py"}})
    assert response.status_code == 400
    assert "script_uri" in response.json()["Message"]
    assert device.calls == []


def test_list_and_get_are_wrapped_and_carry_uris(client):
    first, second = create(client), create(client)
    listed = client.get(f"{BASE}/procedures").json()["procedures"]
    assert [p["id"] for p in listed] == [first["id"], second["id"]]
    assert all(p["uri"].endswith(f"/procedures/{p['id']}") for p in listed)
    one = client.get(f"{BASE}/procedures/{second['id']}").json()
    assert one["procedure"]["id"] == second["id"]
    assert client.get(f"{BASE}/procedures/").status_code in (200, 307)


def test_unknown_procedure_is_404_with_the_documented_body(client):
    response = client.get(f"{BASE}/procedures/4")
    assert response.status_code == 404
    assert response.json() == {
        "error": "404 Not Found",
        "type": "ResourceNotFound",
        "Message": "No information available for PID=4",
    }
    assert client.put(f"{BASE}/procedures/4", json={"state": "RUNNING"}).status_code == 404


def test_non_numeric_procedure_id_is_400(client):
    response = client.get(f"{BASE}/procedures/abc")
    assert response.status_code == 400
    assert "procedure_id" in response.json()["Message"]


def test_start_runs_a_ready_procedure_with_main_arguments(client, device):
    pid = create(client)["id"]
    body = {"state": "RUNNING", "script_args": {"main": {"args": ["bob"], "kwargs": {"n": 3}}}}
    response = client.put(f"{BASE}/procedures/{pid}", json=body)
    assert response.status_code == 200, response.text
    procedure = response.json()["procedure"]
    assert procedure["state"] == "RUNNING"
    assert procedure["script_args"]["main"] == {"args": ["bob"], "kwargs": {"n": 3}}
    assert ("Start", {"procedure_id": pid, "script_args": body["script_args"]}) in device.calls


def test_start_accepts_run_as_alias_and_ignores_whole_procedure_bodies(client, device):
    procedure = create(client)
    body = {**procedure, "state": "RUNNING", "script_args": {"run": {"kwargs": {"d": 14.0}}}}
    response = client.put(procedure["uri"].removeprefix("http://testserver"), json=body)
    assert response.status_code == 200, response.text
    assert response.json()["procedure"]["script_args"]["main"]["kwargs"] == {"d": 14.0}


def test_start_while_another_runs_is_409(client):
    first, second = create(client)["id"], create(client)["id"]
    assert client.put(f"{BASE}/procedures/{first}", json={"state": "RUNNING"}).status_code == 200
    response = client.put(f"{BASE}/procedures/{second}", json={"state": "RUNNING"})
    assert response.status_code == 409
    assert response.json()["type"] == "StateConflict"
    assert response.json()["error"] == "409 Conflict"


def test_start_of_a_procedure_still_preparing_waits_for_ready(client, device):
    device.auto_ready = False
    pid = create(client)["id"]

    def become_ready() -> None:
        wait_until(lambda: device.hub.subscriber_count > 0)  # the gateway is waiting now
        for state in ("IDLE", "LOADING", "IDLE", "READY"):
            device.set_state(pid, state)

    helper = threading.Thread(target=become_ready)
    helper.start()
    response = client.put(f"{BASE}/procedures/{pid}", json={"state": "RUNNING"})
    helper.join()
    assert response.status_code == 200, response.text
    assert response.json()["procedure"]["state"] == "RUNNING"


def test_start_of_a_failed_procedure_is_409(client, device):
    pid = create(client)["id"]
    device.finish(pid, "FAILED", stacktrace="Traceback ...")
    response = client.put(f"{BASE}/procedures/{pid}", json={"state": "RUNNING"})
    assert response.status_code == 409
    assert "FAILED" in response.json()["Message"]


def test_stop_answers_once_stopped_with_the_documented_message(client, device):
    pid = create(client)["id"]
    client.put(f"{BASE}/procedures/{pid}", json={"state": "RUNNING"})
    response = client.put(f"{BASE}/procedures/{pid}", json={"state": "STOPPED", "abort": False})
    assert response.json() == {"abort_message": f"Successfully stopped script with ID {pid}"}
    assert device.procedures[pid]["state"] == "STOPPED"
    assert ("Stop", {"procedure_id": pid, "run_abort": False}) in device.calls


def test_stop_with_abort_says_so(client, device):
    pid = create(client)["id"]
    client.put(f"{BASE}/procedures/{pid}", json={"state": "RUNNING"})
    response = client.put(f"{BASE}/procedures/{pid}", json={"state": "STOPPED", "abort": True})
    assert response.json()["abort_message"].endswith("and aborted subarray activity")
    assert ("Stop", {"procedure_id": pid, "run_abort": True}) in device.calls


def test_stop_of_a_finished_procedure_is_a_message_not_an_error(client, device):
    pid = create(client)["id"]
    device.finish(pid, "FAILED", stacktrace="boom")
    response = client.put(f"{BASE}/procedures/{pid}", json={"state": "STOPPED"})
    assert response.status_code == 200
    assert response.json() == {
        "abort_message": f"Cannot stop script with ID {pid}: Script is not running"
    }


@pytest.mark.parametrize("body", [{"state": "bogus"}, {"abort": True}, []])
def test_put_with_an_unusable_state_is_400(client, device, body):
    pid = create(client)["id"]
    response = client.put(f"{BASE}/procedures/{pid}", json=body)
    assert response.status_code == 400
    assert response.json()["type"] == "Malformed Request"


def test_put_of_a_state_the_procedure_cannot_be_moved_to_is_409(client, device):
    # a valid body (any state may be PUT back), in conflict with the procedure's state
    pid = create(client)["id"]
    response = client.put(f"{BASE}/procedures/{pid}", json={"state": "COMPLETE"})
    assert response.status_code == 409
    assert "only RUNNING, PAUSED and STOPPED" in response.json()["Message"]


def test_unreachable_device_is_503(client, device):
    device.unreachable = True
    for response in (
        client.get(f"{BASE}/procedures"),
        client.post(f"{BASE}/procedures", json=CREATE),
    ):
        assert response.status_code == 503
        assert response.json()["type"] == "DeviceUnavailable"
        assert response.json()["error"] == "503 Service Unavailable"


def test_unknown_route_is_a_json_404(client):
    response = client.get(f"{BASE}/nothing-here")
    assert response.status_code == 404
    assert response.json()["type"] == "ResourceNotFound"


def test_openapi_document_describes_the_api(client):
    document = client.get(f"{BASE}/openapi.json").json()
    assert {f"{BASE}/procedures", f"{BASE}/procedures/{{procedure_id}}", f"{BASE}/stream"} <= set(
        document["paths"]
    )
    assert client.get(f"{BASE}/docs").status_code == 200


def test_fake_device_is_reused_across_requests(device: FakeDevice, client):
    create(client)
    assert len(device.procedures) == 1


def test_waiting_for_ready_survives_a_flood_of_events_without_polling(client, device):
    device.auto_ready = False
    device.hub._queue_size = 5
    pid = create(client)["id"]

    def chatty_init_then_ready() -> None:
        wait_until(lambda: device.hub.subscriber_count > 0)
        for n in range(200):  # script output is not a reason to ask the device
            device.emit("script.stdout", procedure_id=pid, stream="stdout", line=str(n))
        for _ in range(12):  # intermediate states overflow the waiting subscription
            device.emit("procedure.lifecycle.statechange", procedure_id=pid, new_state="LOADING")
        wait_until(lambda: device.hub.subscriber_count > 0)  # subscribed again
        for state in ("IDLE", "LOADING", "IDLE", "READY"):
            device.set_state(pid, state)

    helper = threading.Thread(target=chatty_init_then_ready)
    helper.start()
    response = client.put(f"{BASE}/procedures/{pid}", json={"state": "RUNNING"})
    helper.join()
    assert response.status_code == 200, response.text
    reads = [c for c in device.calls if c == ("GetProcedure", pid)]
    assert len(reads) <= 6  # driven by lifecycle events, not by output or a polling loop
