"""One OET for the telescope: one gateway in front of subarrays 1, 2 (one device server) and 3
(another), all real processes."""

from __future__ import annotations

import json

import pytest

from .conftest import EventStream, Telescope, is_event
from .test_gateway_stack import create, oet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def running_on(telescope: Telescope, subarray: int) -> list[int]:
    return [p["id"] for p in json.loads(telescope.proxy(subarray).procedures)]


def test_a_create_runs_on_the_device_of_its_subarray(telescope):
    with telescope.http() as http, EventStream(telescope.url) as events:
        created = {n: create(http, telescope, "hello.py", subarray_id=n) for n in (3, 2)}
        default = create(http, telescope, "hello.py")  # no subarray_id: subarray 1
        for n, procedure in created.items():
            assert procedure["id"] % 100 == n  # ids name their subarray
            assert procedure["id"] in running_on(telescope, n)
        assert default["id"] % 100 == 1 and default["id"] in running_on(telescope, 1)

        pid = created[3]["id"]
        events.wait_for(is_event("procedure.lifecycle.statechange", pid, new_state="READY"))
        started = http.put(f"/procedures/{pid}", json={"state": "RUNNING"})
        assert started.status_code == 200, started.text
        announced = events.wait_for(
            lambda e: e.get("topic") == "user.script.announce" and e.get("procedure_id") == pid
        )
        assert announced["msg"] == "hello from subarray 3 #0"
        events.wait_for(is_event("procedure.lifecycle.complete", pid))

        listed = {p["id"] for p in http.get("/procedures").json()["procedures"]}
        assert {default["id"], *(p["id"] for p in created.values())} <= listed

        refused = http.post(
            "/procedures",
            json={
                "script": {"script_uri": telescope.script_uri("hello.py")},
                "script_args": {"init": {"kwargs": {"subarray_id": 9}}},
            },
        )
        assert refused.status_code == 400
        assert "serves subarrays 1, 2, 3" in refused.json()["Message"]

    described = oet(telescope, "describe", f"--pid={pid}")
    assert described.returncode == 0, described.stderr
    assert "COMPLETE" in described.stdout and "hello.py" in described.stdout
    # The per-subarray URL still serves its device alone.
    with telescope.http() as http:
        alone = http.get(telescope.url.replace("/api/v1.0", "/subarray/3/api/v1.0/procedures"))
        assert {p["id"] % 100 for p in alone.json()["procedures"]} == {3}


def test_ids_stay_unique_and_stable_across_a_device_server_restart(telescope):
    with telescope.http() as http:
        before = create(http, telescope, "hello.py", subarray_id=3)["id"]
        telescope.device_servers["second"].stop()
        telescope.start_device_server("second")
        telescope.wait_gateway_connected()
        kept = http.get(f"/procedures/{before}")
        assert kept.status_code == 200, kept.text  # found again, at the same id
        after = create(http, telescope, "hello.py", subarray_id=3)["id"]
        assert after % 100 == 3 and after > before
        on_two = create(http, telescope, "hello.py", subarray_id=2)["id"]
        ids = [p["id"] for p in http.get("/procedures").json()["procedures"]]
        assert len(ids) == len(set(ids)) and {before, after, on_two} <= set(ids)
