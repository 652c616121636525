"""GET /procedures through the fast path (fastpath.py): the same bytes as the route, the same
roles, and the route whenever the fast path cannot answer."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ska_oso_oet.rest.app import create_app
from ska_oso_oet.rest.auth import hash_token
from ska_oso_oet.rest.client import TangoDeviceClient
from ska_oso_oet.rest.hub import EventHub
from ska_oso_oet.rest.settings import RestSettings
from tests.unit.rest.gateway_fakes import FakeDevice
from tests.unit.rest.test_rest_client import FakeProxy, dev_failed

BASE = "/api/v1.0"
CREATE = {"script": {"script_uri": "file:///scripts/hello.py"}}
TOKENS = {"viewer": "v" * 32, "operator": "o" * 32}


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    entries = [
        {"sha256": hash_token(t), "user": f"{r}-user", "roles": [r]} for r, t in TOKENS.items()
    ]
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": entries}))
    return path


def gateway(device: FakeDevice, **settings) -> TestClient:
    return TestClient(create_app(RestSettings(**settings), client=device))


def listed_calls(device: FakeDevice) -> int:
    return sum(1 for name, _ in device.calls if name == "procedures")


def test_the_fast_path_sends_the_routes_bytes():
    cached, read = FakeDevice(), FakeDevice()
    cached.listing_current = True
    with gateway(cached) as fast, gateway(read) as slow:
        for http in (fast, slow):
            for _ in range(2):
                assert http.post(f"{BASE}/procedures", json=CREATE).status_code == 201
        read.procedures = copy.deepcopy(cached.procedures)  # same history, same times
        before = listed_calls(cached)
        answer = fast.get(f"{BASE}/procedures")
        assert listed_calls(cached) == before  # answered from the copy: no device read
        routed = slow.get(f"{BASE}/procedures")
        assert listed_calls(read) > 0
        assert answer.status_code == routed.status_code == 200
        assert answer.content == routed.content
        assert answer.headers["content-type"] == routed.headers["content-type"]
        assert answer.headers["content-length"] == routed.headers["content-length"]
        # a query string, another method or path: the route, same body
        assert fast.get(f"{BASE}/procedures?x=1").content == answer.content
        assert fast.head(f"{BASE}/procedures").status_code in (200, 405)


def test_viewers_still_need_their_role(tokens_file: Path):
    device = FakeDevice()
    device.listing_current = True
    with gateway(device, auth_tokens_file=tokens_file) as http:
        assert (
            http.post(
                f"{BASE}/procedures",
                json=CREATE,
                headers={"Authorization": f"Bearer {TOKENS['operator']}"},
            ).status_code
            == 201
        )
        missing = http.get(f"{BASE}/procedures")
        assert missing.status_code == 401 and missing.json()["type"] == "Unauthorized"
        wrong = http.get(f"{BASE}/procedures", headers={"Authorization": "Bearer " + "x" * 32})
        assert wrong.status_code == 401
        basic = http.get(f"{BASE}/procedures", headers={"Authorization": "Basic dXNlcjpwdw=="})
        assert basic.status_code == 401
        before = listed_calls(device)
        viewer = http.get(
            f"{BASE}/procedures", headers={"Authorization": f"Bearer {TOKENS['viewer']}"}
        )
        assert viewer.status_code == 200 and len(viewer.json()["procedures"]) == 1
        assert listed_calls(device) == before


def test_without_a_current_copy_the_route_reads_the_device():
    device = FakeDevice()
    device.listing_current = True
    with gateway(device) as http:
        assert http.post(f"{BASE}/procedures", json=CREATE).status_code == 201
        assert len(http.get(f"{BASE}/procedures").json()["procedures"]) == 1
        device.listing_current = False
        before = listed_calls(device)
        assert len(http.get(f"{BASE}/procedures").json()["procedures"]) == 1
        assert listed_calls(device) == before + 1
        device.unreachable = True
        down = http.get(f"{BASE}/procedures")
        assert down.status_code == 503 and down.json()["type"] == "DeviceUnavailable"


def test_one_procedure_through_the_fast_path():
    fast_device, route_device = FakeDevice(), FakeDevice()
    with gateway(fast_device) as http:
        pid = http.post(f"{BASE}/procedures", json=CREATE).json()["procedure"]["id"]
        answer = http.get(f"{BASE}/procedures/{pid}")
        route_device.procedures = copy.deepcopy(fast_device.procedures)
        assert ("GetProcedure", pid) in fast_device.calls
        missing = http.get(f"{BASE}/procedures/999")
        malformed = http.get(f"{BASE}/procedures/12x")  # not digits: the route's 400
        fast_device.unreachable = True
        down = http.get(f"{BASE}/procedures/{pid}")
    # The route's answers (a query string leaves the fast path aside).
    with gateway(route_device) as http:
        routed = http.get(f"{BASE}/procedures/{pid}?via=route")
        routed_missing = http.get(f"{BASE}/procedures/999?via=route")
        route_device.unreachable = True
        routed_down = http.get(f"{BASE}/procedures/{pid}?via=route")
    assert answer.status_code == routed.status_code == 200
    assert answer.content == routed.content
    assert answer.headers["content-type"] == routed.headers["content-type"]
    assert missing.status_code == routed_missing.status_code == 404
    assert missing.content == routed_missing.content
    assert down.status_code == routed_down.status_code == 503
    assert down.content == routed_down.content
    assert malformed.status_code == 400 and malformed.json()["type"] == "Malformed Request"


def test_one_procedure_needs_a_viewer(tokens_file: Path):
    device = FakeDevice()
    with gateway(device, auth_tokens_file=tokens_file) as http:
        operator = {"Authorization": f"Bearer {TOKENS['operator']}"}
        pid = http.post(f"{BASE}/procedures", json=CREATE, headers=operator).json()["procedure"]
        before = len(device.calls)
        assert http.get(f"{BASE}/procedures/{pid['id']}").status_code == 401
        assert len(device.calls) == before  # refused before the device is asked
        viewer = {"Authorization": f"Bearer {TOKENS['viewer']}"}
        one = http.get(f"{BASE}/procedures/{pid['id']}", headers=viewer)
        assert one.status_code == 200 and one.json()["procedure"]["uri"] == pid["uri"]


def test_one_procedure_is_answered_from_the_kept_copy_until_its_procedure_changes():
    """A real TangoDeviceClient (stand-in proxy): GETs of one procedure read it once per
    change, and every answer is the route's, byte for byte (v1.0 and v7)."""
    summary = {
        "id": 1, "script": {"script_type": "filesystem", "script_uri": "file:///s/a.py"},
        "script_args": {}, "history": {"process_states": [["CREATING", 1.5], ["RUNNING", 2.5]],
                                       "stacktrace": None, "requests": []},
        "state": "RUNNING", "progress": None, "request": None, "command_id": "c1", "audit": [],
    }  # fmt: skip
    proxy = FakeProxy({"GetProcedure": lambda _: json.dumps(summary)})
    client = TangoDeviceClient("oso/oet/1", EventHub())
    client._proxy = proxy  # connected: no Tango
    v7 = "/ska-oso-oet/oet/api/v7"
    seq = iter(range(100, 200))

    def reads() -> int:
        return sum(1 for name, *_ in proxy.calls if name == "GetProcedure")

    def publish(topic: str, **payload) -> None:
        raw = json.dumps({"seq": next(seq), "topic": topic, "procedure_id": 1, **payload})
        http.portal.call(client.hub.publish_raw, raw)  # on the app's loop, as Tango's events

    with TestClient(create_app(RestSettings(), client=client)) as http:
        for change in (
            None,
            ("procedure.progress", "progress", {"done": 1, "total": 4, "message": "a", "ts": 3.0}),
            ("procedure.request.opened", "request", {"id": "r1", "prompt": "go?", "choices": None}),
            ("procedure.request.closed", "request", None),
            ("procedure.lifecycle.statechange", "state", "PAUSED"),
        ):
            if change is not None:
                topic, field, value = change
                summary[field] = value
                publish(topic, **({"new_state": value} if field == "state" else {}))
            before = reads()
            fast = [http.get(f"{BASE}/procedures/1") for _ in range(3)]
            assert reads() == before + 1  # read once for the change, then the copy
            routed = http.get(f"{BASE}/procedures/1?via=route")
            assert all(a.content == routed.content for a in fast)
            assert fast[0].headers["content-type"] == routed.headers["content-type"]
            assert (
                json.loads(fast[0].content)["procedure"][field if change else "state"]
                == (summary[field if change else "state"])
            )
            old_style = http.get(f"{v7}/procedures/1").json()  # v7's route, from the copy too
            assert old_style["uri"].endswith("/v7/procedures/1")
            assert old_style["state"] == summary["state"]
            if change is not None and field in old_style:
                assert old_style[field] == summary[field]
        publish("script.log", message="no change")  # not a change: still the copy
        before = reads()
        assert http.get(f"{BASE}/procedures/1").content == routed.content
        assert reads() == before
        proxy.replies["GetProcedure"] = dev_failed("OET_NOT_FOUND", desc="No information for 9")
        missing = http.get(f"{BASE}/procedures/9")
        assert missing.status_code == 404
        assert missing.content == http.get(f"{BASE}/procedures/9?via=route").content
