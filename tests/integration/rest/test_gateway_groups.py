"""Linked observation groups end to end: four subarrays in four device servers, the OETGroups
device in a server of its own and one gateway in front, all real processes.

A group links subarrays 1-3; subarray 4 runs an independent procedure throughout. One member's
script fails, or one member's device server is killed: the other members end STOPPED (with
their abort scripts when the group asks), the group HALTED with its history, seen through
REST, the CLI, ``/stream`` and a Tango subscription of the groups device.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import tango

from tests.support.oet_stack import RunningStack

from .conftest import (
    ABORT_SCRIPT,
    PYTHON,
    TIMEOUT,
    EventStream,
    ManagedProcess,
    Telescope,
    is_event,
    start_database,
    wait_for,
)
from .test_gateway_stack import create, oet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

GROUPS = "oso/oet/groups"
GROUPS_SERVER = "OETGroupsServer/test"

WAIT_SCRIPT = """
import os
import time
from pubsub import pub

def init(subarray_id=1):
    global SUBARRAY
    SUBARRAY = subarray_id

def main(fail_when=None, finish_when=None, **activity_kwargs):
    pub.sendMessage("user.script.announce", msg_src="linked", msg=f"observing on {SUBARRAY}")
    while True:
        if fail_when and os.path.exists(fail_when):
            raise RuntimeError(f"subarray {SUBARRAY} failed on purpose")
        if finish_when and os.path.exists(finish_when):
            return
        time.sleep(0.01)
"""


class Linked(Telescope):
    """Subarrays 1..4, one device server each, plus the groups device server."""

    def __init__(self, tmp, tango_host):
        super().__init__(tmp, tango_host, {f"s{n}": [n] for n in (1, 2, 3, 4)})
        self.groups_server = ManagedProcess(
            "groups-server",
            [PYTHON, "-m", "ska_oso_oet.tango.groups_server", GROUPS_SERVER.split("/")[1]],
            self.env,
            tmp,
        )

    def register_device(self) -> None:
        super().register_device()
        host, port = self.tango_host.split(":")
        db = tango.Database(host, int(port))
        info = tango.DbDevInfo()
        info.name, info._class, info.server = GROUPS, "OETGroups", GROUPS_SERVER
        db.add_device(info)
        db.put_device_property(
            GROUPS,
            {
                "OETDevices": [f"oso/oet/{n}" for n in self.subarrays],
                "StateDatabase": [str(self.tmp / "groups.sqlite")],
                "ReconcileSeconds": ["60"],  # halting must come from events and pings
            },
        )

    def groups_proxy(self) -> tango.DeviceProxy:
        return tango.DeviceProxy(f"tango://{self.tango_host}/{GROUPS}")

    def start_groups_server(self) -> None:
        self.groups_server.start()
        proxy = self.groups_proxy()

        def answering() -> bool:
            if self.groups_server.process.poll() is not None:
                raise AssertionError(f"groups server exited:\n{self.groups_server.output()}")
            try:
                return proxy.state() == tango.DevState.ON
            except tango.DevFailed:
                return False

        wait_for(answering, what="groups device answering")

    def stop(self) -> None:
        super().stop()
        self.groups_server.stop()


@pytest.fixture(scope="module")
def linked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linked]:
    tmp = tmp_path_factory.mktemp("linked")
    database, tango_host = start_database(tmp)
    stack = Linked(tmp, tango_host)
    (stack.scripts / "abort.py").write_text(ABORT_SCRIPT)
    (stack.scripts / "linked.py").write_text(WAIT_SCRIPT)
    try:
        stack.register_device()
        stack.start_groups_server()
        stack.start_device_server()
        stack.start_gateway()
        yield stack
    finally:
        stack.stop()
        database.stop()


class GroupEvents:
    """The groups device's lastEvent change events, collected by a Tango subscription."""

    def __init__(self, proxy: tango.DeviceProxy):
        self.proxy = proxy
        self.values: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._id = proxy.subscribe_event("lastEvent", tango.EventType.CHANGE_EVENT, self._on)

    def _on(self, event: Any) -> None:
        if not event.err:
            with self._changed:
                self.values.append(json.loads(event.attr_value.value))
                self._changed.notify_all()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        with self._changed:
            if not self._changed.wait_for(lambda: any(map(predicate, self.values)), TIMEOUT):
                topics = [(v.get("topic"), v.get("reason")) for v in self.values[-8:]]
                raise AssertionError(f"no such group event; last: {topics}")
            return next(v for v in self.values if predicate(v))

    def close(self) -> None:
        self.proxy.unsubscribe_event(self._id)


def group_became(group_id: int, state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: (
        e.get("topic") == "group.lifecycle.statechange"
        and e.get("group_id") == group_id
        and e.get("new_state") == state
    )


def ready(http, stack: Linked, events: EventStream, subarray: int) -> int:
    pid = create(http, stack, "linked.py", subarray_id=subarray)["id"]
    events.wait_for(is_event("procedure.lifecycle.statechange", pid, new_state="READY"))
    return pid


def start(http, events: EventStream, pid: int, **kwargs: Any) -> None:
    body = {"state": "RUNNING", "script_args": {"main": {"args": [], "kwargs": kwargs}}}
    response = http.put(f"/procedures/{pid}", json=body)
    assert response.status_code == 200, response.text
    events.wait_for(
        lambda e: e.get("topic") == "user.script.announce" and e.get("procedure_id") == pid
    )


def state_of(http, pid: int) -> str:
    return http.get(f"/procedures/{pid}").json()["procedure"]["state"]


def stop_quietly(http, pid: int) -> None:
    if state_of(http, pid) not in ("COMPLETE", "STOPPED", "FAILED"):
        http.put(f"/procedures/{pid}", json={"state": "STOPPED"})


def test_a_failing_member_halts_the_others_with_their_abort_scripts(linked):
    trigger = linked.tmp / "fail-1"
    tango_events = GroupEvents(linked.groups_proxy())
    try:
        with linked.http() as http, EventStream(linked.url) as events:
            a, b, c, independent = (ready(http, linked, events, n) for n in (1, 2, 3, 4))
            response = http.post(
                "/groups", json={"procedures": [a, b, c], "abort": True, "name": "triple"}
            )
            assert response.status_code == 201, response.text
            group = response.json()["group"]
            gid = group["id"]
            assert group["state"] == "ACTIVE" and group["name"] == "triple"
            assert [m["device"] for m in group["members"]] == ["oso/oet/1", "oso/oet/2",
                                                               "oso/oet/3"]  # fmt: skip
            start(http, events, a, fail_when=str(trigger))
            for pid in (b, c, independent):
                start(http, events, pid)

            trigger.touch()
            events.wait_for(is_event("procedure.lifecycle.failed", a))
            for pid in (b, c):
                events.wait_for(is_event("procedure.lifecycle.stopped", pid))
            halted = events.wait_for(group_became(gid, "HALTED"))  # group events on /stream
            tango_events.wait_for(group_became(gid, "HALTED"))  # and on the Tango device
            for n in (2, 3):  # with abort: each halted subarray ran its abort script
                events.wait_for(
                    lambda e, n=n: (
                        e.get("topic") == "user.script.announce"
                        and e.get("msg") == f"aborted subarray {n}"
                    )
                )
            assert state_of(http, independent) == "RUNNING"  # independent: untouched

            reasons = [h["reason"] for h in halted["group"]["history"]]
            assert f"member {a} on oso/oet/1 FAILED" in reasons
            assert any(r.startswith(f"halted {b} on oso/oet/2: STOPPED in ") for r in reasons)
            audit = http.get(f"/procedures/{b}").json()["procedure"]["audit"]
            assert any(e.get("user") == f"group:{gid}" for e in audit), audit

            listed = http.get("/groups").json()["groups"]
            assert [g["state"] for g in listed if g["id"] == gid] == ["HALTED"]
            assert http.get(f"/groups/{gid}").json()["group"]["state"] == "HALTED"
            stop_quietly(http, independent)
    finally:
        tango_events.close()

    described = oet(linked, "group", "describe", str(gid))
    assert described.returncode == 0, described.stderr
    assert "HALTED" in described.stdout and "FAILED" in described.stdout
    assert "STOPPED in" in described.stdout and "stop + abort script" in described.stdout
    listed = oet(linked, "group", "list")
    assert listed.returncode == 0 and "triple" in listed.stdout


def test_a_killed_member_device_server_halts_the_others(linked):
    with linked.http() as http, EventStream(linked.url) as events:
        a, b, c = (ready(http, linked, events, n) for n in (1, 2, 3))
        created = oet(linked, "group", "create", str(a), str(b), str(c), "--kill")
        assert created.returncode == 0, created.stderr
        gid = max(g["id"] for g in http.get("/groups").json()["groups"])
        for pid in (a, b):  # c stays READY: halted as well
            start(http, events, pid)

        os.kill(linked.device_servers["s2"].process.pid, signal.SIGKILL)  # kill -9
        for pid in (a, c):
            events.wait_for(is_event("procedure.lifecycle.stopped", pid))
        events.wait_for(group_became(gid, "HALTED"))
        group = http.get(f"/groups/{gid}").json()["group"]
        assert any("device oso/oet/2 unreachable" in h["reason"] for h in group["history"])
        assert [m["state"] for m in group["members"]] == ["STOPPED", "UNKNOWN", "STOPPED"]

    linked.device_servers["s2"].process.wait()
    linked.start_device_server("s2")
    linked.wait_gateway_connected()


def test_all_members_complete_completes_the_group_and_stops_nothing(linked):
    done = linked.tmp / "finish"
    with linked.http() as http, EventStream(linked.url) as events:
        a, b = (ready(http, linked, events, n) for n in (3, 4))
        gid = http.post("/groups", json={"procedures": [a, b]}).json()["group"]["id"]
        for pid in (a, b):
            start(http, events, pid, finish_when=str(done))
        done.touch()
        events.wait_for(group_became(gid, "COMPLETE"))
        assert [state_of(http, pid) for pid in (a, b)] == ["COMPLETE", "COMPLETE"]
        group = http.get(f"/groups/{gid}").json()["group"]
        assert not any(m["halted"] for m in group["members"])


def test_a_restarted_groups_device_reloads_and_halts_what_failed_meanwhile(linked):
    trigger = linked.tmp / "fail-3"
    with linked.http() as http, EventStream(linked.url) as events:
        a, b = (ready(http, linked, events, n) for n in (3, 4))
        gid = http.post("/groups", json={"procedures": [a, b]}).json()["group"]["id"]
        start(http, events, a, fail_when=str(trigger))
        start(http, events, b)
        linked.groups_server.stop()
        trigger.touch()  # member a fails while nobody watches
        events.wait_for(is_event("procedure.lifecycle.failed", a))
        assert state_of(http, b) == "RUNNING"

        linked.start_groups_server()
        events.wait_for(is_event("procedure.lifecycle.stopped", b))
        group = wait_for(
            lambda: (
                (g := http.get(f"/groups/{gid}").json().get("group"))
                and g["state"] == "HALTED"
                and g
            ),
            what="group HALTED after the restart",
        )
        assert f"member {a} on oso/oet/3 FAILED" in [h["reason"] for h in group["history"]]


def test_an_activity_stands_for_its_procedure(linked):
    sbd = {
        "sbd_id": "sbd-linked-1",
        "activities": {"observe": {"kind": "filesystem", "path": linked.script_uri("linked.py")}},
    }
    with linked.http() as http, EventStream(linked.url) as events:
        assert http.post("/sbds", json=sbd).status_code == 201
        activity = http.post(
            "/activities",
            json={"activity_name": "observe", "sbd_id": "sbd-linked-1", "prepare_only": True},
        ).json()["activity"]
        observed = activity["procedure_id"]
        events.wait_for(is_event("procedure.lifecycle.statechange", observed, new_state="READY"))
        partner = ready(http, linked, events, 2)
        created = http.post(
            "/groups", json={"procedures": [partner], "activities": [activity["id"]]}
        )
        assert created.status_code == 201, created.text
        members = created.json()["group"]["members"]
        assert [(m["procedure_id"], m["activity_id"]) for m in members] == [
            (partner, None),
            (observed, activity["id"]),
        ]
        http.put(f"/procedures/{partner}", json={"state": "STOPPED"})  # stopped by an operator
        events.wait_for(is_event("procedure.lifecycle.stopped", observed))  # halted with it
        group = events.wait_for(group_became(created.json()["group"]["id"], "HALTED"))["group"]
        assert f"member {partner} on oso/oet/2 STOPPED" in [h["reason"] for h in group["history"]]


def test_bad_groups_are_refused_clearly(linked):
    with linked.http() as http, EventStream(linked.url) as events:
        a, b = (ready(http, linked, events, n) for n in (1, 2))
        cases = [
            ({"procedures": [a]}, 400, "at least 2"),
            ({"procedures": [a, a]}, 400, "more than once"),
            ({"procedures": [a, 9901]}, 404, "procedure 9901 is not known"),
            ({"procedures": [a, b], "colour": "red"}, 400, "colour"),
            ({"procedures": [a, "x"]}, 400, "procedures"),
        ]
        for body, status, words in cases:
            response = http.post("/groups", json=body)
            assert response.status_code == status, (body, response.text)
            assert words in response.json()["Message"], (body, response.text)
        gid = http.post("/groups", json={"procedures": [a, b]}).json()["group"]["id"]
        again = http.post("/groups", json={"procedures": [b, a]})
        assert again.status_code == 409 and f"already in group {gid}" in again.json()["Message"]
        assert http.get("/groups/99999").status_code == 404
        c = ready(http, linked, events, 3)
        added = http.post(f"/groups/{gid}/members", json={"procedure_id": c})
        assert [m["device"] for m in added.json()["group"]["members"]][-1] == "oso/oet/3"
        unknown = http.post(f"/groups/{gid}/members", json={"procedure_id": 9903})
        assert unknown.status_code == 404, unknown.text
        assert http.delete(f"/groups/{gid}").json()["group"]["state"] == "DISBANDED"
        stop_quietly(http, c)  # disbanded: nothing else stops it
        assert http.delete(f"/groups/{gid}").status_code == 409

        http.put(f"/procedures/{a}", json={"state": "STOPPED"})
        finished = http.post("/groups", json={"procedures": [a, b]})
        assert finished.status_code == 409 and "already finished" in finished.json()["Message"]
        stop_quietly(http, b)

    with pytest.raises(tango.DevFailed) as refused:
        linked.groups_proxy().CreateGroup("not json")
    assert refused.value.args[0].reason == "OET_INVALID_REQUEST"
    cli = oet(linked, "group", "create", "9901", "9902")
    assert cli.returncode != 0 and "not known" in cli.stderr


def test_oet_stack_hosts_the_groups_device_beside_its_devices(tmp_path):
    """oet-stack: OETGroups in the same server as the members it halts."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "linked.py").write_text(WAIT_SCRIPT)
    with RunningStack(tmp_path, scripts=scripts, subarrays=2) as stack:
        url = stack.rest_urls["oso/oet/1"]
        trigger = tmp_path / "fail"
        with httpx.Client(base_url=url, timeout=30) as http, EventStream(url) as events:
            pids = []
            for n in (1, 2):
                body = {
                    "script": {"script_uri": f"file://{scripts / 'linked.py'}"},
                    "script_args": {"init": {"kwargs": {"subarray_id": n}}},
                }
                pid = http.post("/procedures", json=body).json()["procedure"]["id"]
                events.wait_for(is_event("procedure.lifecycle.statechange", pid,
                                         new_state="READY"))  # fmt: skip
                pids.append(pid)
            created = http.post("/groups", json={"procedures": pids})
            assert created.status_code == 201, created.text
            gid = created.json()["group"]["id"]
            start(http, events, pids[0], fail_when=str(trigger))
            start(http, events, pids[1])
            trigger.touch()
            events.wait_for(is_event("procedure.lifecycle.stopped", pids[1]))
            events.wait_for(group_became(gid, "HALTED"))
