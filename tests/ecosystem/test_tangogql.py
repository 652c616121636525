"""Taranta's backend, tangogql, reads the OET device and follows its change events.

tangogql (from PyPI) runs as its own service, as it does beside Taranta, from a separate
virtualenv (``tests/ecosystem/make_tangogql_venv.sh``; its ariadne pin conflicts with the
gateway's FastAPI). The test queries it over HTTP like Taranta's device view, and subscribes
over its WebSocket API like a Taranta dashboard, then runs a procedure and checks that the
dashboard would see every ``procedureStates`` change and every ``lastEvent`` in order.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ska_oso_oet import stack

from .conftest import DEVICE, REPO, EcosystemStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
TIMEOUT = 60.0
SUBSCRIBER = Path(__file__).with_name("tangogql_subscriber.py")


@pytest.fixture(scope="module")
def tangogql_python() -> str:
    venv = Path(os.environ.get("OET_TANGOGQL_VENV", REPO / ".venv" / "ecosystem-tangogql"))
    python = venv / "bin" / "python"
    if not python.exists():
        pytest.skip(
            f"tangogql is not installed in {venv}: run tests/ecosystem/make_tangogql_venv.sh"
        )
    check = subprocess.run(
        [str(python), "-c", "import tangogql.main, websockets"], capture_output=True, timeout=120
    )
    if check.returncode != 0:
        pytest.skip(f"tangogql in {venv} does not import: {check.stderr.decode()[-300:]}")
    return str(python)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lines:
    """Collects a child's stdout lines (JSON) on a thread; waits on a condition, no sleeps."""

    def __init__(self, process: subprocess.Popen[str]):
        self.items: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self.items.append(json.loads(line))
                self._changed.notify_all()

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], what: str
    ) -> list[dict[str, Any]]:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.items), TIMEOUT):
                raise AssertionError(f"tangogql subscription: no {what}; got {self.items}")
            return list(self.items)


@pytest.fixture(scope="module")
def tangogql(
    oet_stack: EcosystemStack, tangogql_python: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Base URL of a running tangogql server on the embedded stack's Tango database."""
    port = _free_port()
    workdir = tmp_path_factory.mktemp("tangogql")
    env = {
        **oet_stack.env,
        "TANGOGQL_NO_AUTH": "true",
        "TANGOGQL_LOGGING_CONFIG": "",
    }
    log = (workdir / "tangogql.log").open("wb")
    server_options = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(
        [tangogql_python, "-m", "uvicorn", "tangogql.main:app", *server_options],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                reply = httpx.post(f"{url}/db", json={"query": "{ tangoHost }"}, timeout=5)
                if reply.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tangogql did not start; see {workdir / 'tangogql.log'}")
            time.sleep(0.1)  # waiting for a child server to listen
        yield url
    finally:
        stack.stop_process(process)
        log.close()


def graphql(url: str, query: str) -> dict[str, Any]:
    reply = httpx.post(f"{url}/db", json={"query": query}, timeout=30)
    reply.raise_for_status()
    body = reply.json()
    assert not body.get("errors"), body
    return body["data"]


def test_taranta_backend_reads_the_device(tangogql: str) -> None:
    query = (
        '{ device(name: "DEVICE") { name state deviceClass exported '
        'attributes(pattern: "*") { name datatype dataformat writable value description } '
        'commands(pattern: "*") { name intype } } }'
    )
    data = graphql(tangogql, query.replace("DEVICE", DEVICE))
    device = data["device"]
    assert device["name"] == DEVICE and device["deviceClass"] == "OETDevice"
    assert device["exported"] is True and device["state"] in ("ON", "RUNNING")
    attributes = {a["name"]: a for a in device["attributes"]}
    for name in ("procedures", "lastEvent", "procedureStates", "procedureIds", "scriptMessage"):
        assert name in attributes, sorted(attributes)
    assert attributes["procedureStates"]["dataformat"] == "SPECTRUM"
    assert attributes["adminMode"]["writable"] == "READ_WRITE"
    assert isinstance(json.loads(attributes["procedures"]["value"]), list)
    assert attributes["subarrayId"]["value"] == 1
    assert "change events" in attributes["lastEvent"]["description"]
    commands = {c["name"]: c["intype"] for c in device["commands"]}
    assert {"Prepare", "Start", "Stop", "Abort", "GetProcedure"} <= set(commands)
    assert commands["Prepare"] == "DevString"


def test_taranta_subscription_receives_states_and_every_event(
    oet_stack: EcosystemStack, tangogql: str, tangogql_python: str
) -> None:
    base = f"tango://{oet_stack.tango_host}/{DEVICE}"
    names = [f"{base}/procedurestates", f"{base}/lastevent"]
    ws_url = tangogql.replace("http://", "ws://") + "/socket"
    subscriber = subprocess.Popen(
        [tangogql_python, str(SUBSCRIBER), ws_url, *names],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        lines = Lines(subscriber)

        def frames(attribute: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [
                i["frame"]
                for i in items
                if i["type"] == "data" and i["frame"]["attribute"] == attribute
            ]

        # the initial values of both attributes arrive first, as a dashboard needs them
        lines.wait_for(
            lambda items: frames("procedurestates", items) and frames("lastevent", items),
            "initial frames",
        )
        assert not [i for i in lines.items if i["type"] == "error"], lines.items
        metrics = graphql(tangogql, "{ metrics { subscribedAttrs { name eventType } } }")
        kinds = {a["name"].lower(): a["eventType"] for a in metrics["metrics"]["subscribedAttrs"]}
        wanted = {f"{DEVICE}/procedurestates", f"{DEVICE}/lastevent"}
        assert kinds == dict.fromkeys(wanted, "CHANGE_EVENT"), kinds  # pushed events, no polling

        initial = len(frames("procedurestates", lines.items))
        proxy = oet_stack.proxy()
        (_,), (command_id,) = proxy.Prepare(oet_stack.prepare_body())
        pid = json.loads(proxy.GetProcedure(command_id))["id"]

        def event_frames(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [json.loads(f["value"]) for f in frames("lastevent", items) if f["value"]]

        def has_topic(topic: str) -> Callable[[list[dict[str, Any]]], bool]:
            return lambda items: any(
                e["topic"] == topic and e.get("procedure_id") == pid for e in event_frames(items)
            )

        lines.wait_for(
            lambda items: any(
                e["topic"] == "procedure.lifecycle.statechange"
                and e.get("procedure_id") == pid
                and e["new_state"] == "READY"
                for e in event_frames(items)
            ),
            "READY event",
        )
        body = {"procedure_id": pid, "script_args": {"main": {"kwargs": {"count": 3}}}}
        proxy.Start(json.dumps(body))
        items = lines.wait_for(has_topic("procedure.lifecycle.complete"), "complete event")

        events = event_frames(items)
        ours = [e for e in events if e.get("procedure_id") == pid]
        first = events.index(ours[0])
        seqs = [e["seq"] for e in events[first:]]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # none lost, in order
        announced = [e["msg"] for e in ours if e["topic"] == "user.script.announce"]
        assert announced == [f"scan {i} on subarray 1" for i in range(3)]
        transitions = [e["new_state"] for e in ours if e["topic"].endswith(".statechange")]
        assert transitions[-3:] == ["READY", "RUNNING", "COMPLETE"], transitions

        # procedureStates frames show the new procedure going through its states
        def newest_states(items: list[dict[str, Any]]) -> list[str]:
            later = frames("procedurestates", items)[initial:]
            return [f["value"][-1] for f in later if f["value"]]

        lines.wait_for(lambda items: "COMPLETE" in newest_states(items), "procedureStates COMPLETE")
        shown = newest_states(lines.items)
        for state in ("READY", "RUNNING", "COMPLETE"):
            assert state in shown, shown
        assert shown.index("READY") < shown.index("RUNNING") < shown.index("COMPLETE"), shown
    finally:
        stack.stop_process(subscriber, timeout=10)
