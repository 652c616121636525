"""The trust boundary through the real stack (issue 13): PyDatabaseds, OETDeviceServer and
oet-gateway with a tokens file, plus a local HTTP git server holding an allowed and a
forbidden repository.

Proves through real processes: 401/403 by role, the audit trail written by the device with the
token's user, the repository allow-list for procedures and SBD activities (the forbidden
repository is never fetched), and bad input answered with a 4xx.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import httpx
import pytest
import tango

from ska_oso_oet.rest.auth import hash_token
from tests.support.githttp import GitHttpServer, git_http_server
from tests.support.gitrepos import make_script_repo

from .conftest import DEVICE, TIMEOUT, ManagedProcess, Stack, start_database, wait_for

pytestmark = pytest.mark.timeout(300)

TOKENS = {"viewer": "v" * 40, "operator": "o" * 40, "admin": "a" * 40}
USERS = {"viewer": "vera", "operator": "otto", "admin": "ada"}
FORBIDDEN_TAILS = [
    "ska-telescope/../attacker/repo.git",
    "ska-telescope/%2e%2e/attacker/repo.git",
    "ska-telescope/%2E%2E/attacker/repo.git",
    "ska-telescope/./../attacker/repo.git",
    "ska-telescope//../attacker/repo.git",
]


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHttpServer]:
    tmp = tmp_path_factory.mktemp("git")
    good = make_script_repo(tmp / "good", requirements=None)
    evil = make_script_repo(tmp / "evil", requirements=None)
    evil.commit({"scripts/hello.py": "raise SystemExit('attacker code ran')\n"}, "evil")
    with git_http_server(tmp / "www") as server:
        server.publish(good, "ska-telescope/scripts.git")
        server.publish(evil, "attacker/repo.git")
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, git_server: GitHttpServer) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    tokens = tmp / "tokens.json"
    tokens.write_text(
        json.dumps(
            {
                "tokens": [
                    {"sha256": hash_token(TOKENS[r]), "user": USERS[r], "roles": [r]}
                    for r in TOKENS
                ]
            }
        )
    )
    database, tango_host = start_database(tmp)
    stack = Stack(tmp, tango_host)
    stack.gateway = ManagedProcess(
        "gateway",
        [
            *stack.gateway.command,
            "--auth-tokens-file",
            str(tokens),
        ],
        stack.gateway.env,
        tmp,
    )
    try:
        stack.register_device()
        host, port = tango_host.split(":")
        tango.Database(host, int(port)).put_device_property(
            DEVICE,
            {
                "AllowedRepositories": [f"{git_server.url}/ska-telescope/*"],
                "SBStore": [str(tmp / "sbds")],
            },
        )
        stack.start_device_server()
        stack.gateway.start()
        match = stack.gateway.wait_for_output(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")
        stack.url = match.group(1) + "/api/v1.0"

        def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(f"{stack.url}/procedures", headers=auth("viewer"), timeout=5)
                return response.status_code == 200
            return False

        wait_for(ready, TIMEOUT, "gateway reaching the device")
        yield stack
    finally:
        stack.gateway.stop()
        stack.device_server.stop()
        database.stop()


def wait_state(http: httpx.Client, pid: int, states: set[str]) -> dict:
    found: dict = {}

    def reached() -> bool:
        found.update(http.get(f"/procedures/{pid}", headers=auth("viewer")).json()["procedure"])
        return found["state"] in states

    wait_for(reached, TIMEOUT, f"procedure {pid} in {states}")
    return found


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "type", "Message"}
    return body["Message"]


def test_roles_through_the_real_gateway(stack):
    body = {"script": {"script_uri": stack.script_uri("hello.py")}}
    with stack.http() as http:
        error_of(http.get("/procedures"), 401)
        error_of(http.get("/procedures", headers={"Authorization": "Bearer nope" * 4}), 401)
        assert http.get("/procedures", headers=auth("viewer")).status_code == 200
        error_of(http.post("/procedures", json=body, headers=auth("viewer")), 403)
        sbd = {"sbd_id": "sbd-x", "activities": {}}
        error_of(http.post("/sbds", json=sbd, headers=auth("operator")), 403)


def test_the_device_records_the_token_user(stack):
    body = {"script": {"script_uri": stack.script_uri("hello.py")}}
    with stack.http() as http:
        created = http.post("/procedures", json=body, headers=auth("operator"))
        assert created.status_code == 201, created.text
        pid = created.json()["procedure"]["id"]
        wait_state(http, pid, {"READY"})
        started = http.put(f"/procedures/{pid}", json={"state": "RUNNING"}, headers=auth("admin"))
        assert started.status_code == 200, started.text
        done = wait_state(http, pid, {"COMPLETE"})
    assert [(a["action"], a["user"]) for a in done["audit"]] == [
        ("created", "otto"),
        ("started", "ada"),
    ]


@pytest.mark.parametrize("tail", FORBIDDEN_TAILS)
def test_forbidden_repository_is_refused_and_never_fetched(stack, git_server, tail):
    body = {
        "script": {
            "script_type": "git",
            "script_uri": "git://scripts/hello.py",
            "git_args": {"git_repo": f"{git_server.url}/{tail}", "git_branch": "main"},
        }
    }
    with stack.http() as http:
        response = http.post("/procedures", json=body, headers=auth("operator"))
    assert "refused" in error_of(response, 400) or "not allowed" in response.text
    assert not any(p.startswith("/attacker/") for p in git_server.requests)


def test_allowed_repository_over_http_runs(stack, git_server):
    body = {
        "script": {
            "script_type": "git",
            "script_uri": "git://scripts/hello.py",
            "git_args": {
                "git_repo": f"{git_server.url}/ska-telescope/scripts.git",
                "git_branch": "main",
            },
        }
    }
    with stack.http() as http:
        response = http.post("/procedures", json=body, headers=auth("operator"))
        assert response.status_code == 201, response.text
        ready = wait_state(http, response.json()["procedure"]["id"], {"READY", "FAILED"})
    assert ready["state"] == "READY", ready["history"]
    assert any(p.startswith("/ska-telescope/") for p in git_server.requests)
    assert not any(p.startswith("/attacker/") for p in git_server.requests)


def test_sbd_activity_with_a_forbidden_repository_is_refused(stack, git_server):
    sbd = {
        "sbd_id": "sbd-trust-1",
        "activities": {
            "observe": {
                "kind": "git",
                "repo": f"{git_server.url}/{FORBIDDEN_TAILS[1]}",
                "path": "git://scripts/hello.py",
                "branch": "main",
            }
        },
    }
    with stack.http() as http:
        stored = http.post("/sbds", json=sbd, headers=auth("admin"))
        assert stored.status_code == 201, stored.text
        run = http.post(
            "/activities",
            json={"sbd_id": "sbd-trust-1", "activity_name": "observe"},
            headers=auth("operator"),
        )
    error_of(run, 400)
    assert not any(p.startswith("/attacker/") for p in git_server.requests)


def test_bad_input_is_a_4xx_and_the_device_lives_on(stack):
    headers = {**auth("admin"), "Content-Type": "application/json"}
    deep = "[" * 10_000 + "]" * 10_000
    with stack.http() as http:
        error_of(http.get("/sbds/%E2%9C%93", headers=auth("viewer")), 400)
        error_of(http.post("/procedures", content=deep, headers=headers), 400)
        nul = {"script": {"script_uri": stack.script_uri("hello.py") + "\x00"}}
        error_of(http.post("/procedures", json=nul, headers=auth("operator")), 400)
        huge = {"script": {"script_uri": stack.script_uri("hello.py")},
                "script_args": {"init": {"args": ["x" * 5_000_000]}}}  # fmt: skip
        error_of(http.post("/procedures", json=huge, headers=auth("operator")), 413)
        big = {"script": {"script_uri": stack.script_uri("hello.py")},
               "script_args": {"init": {"args": ["x" * 1_500_000]}}}  # fmt: skip
        message = error_of(http.post("/procedures", json=big, headers=auth("operator")), 400)
        assert len(message) < 2100
        assert http.get("/procedures", headers=auth("viewer")).status_code == 200
    # and straight on Tango: 10,000-deep JSON is OET_INVALID_REQUEST, not a RecursionError
    proxy = tango.DeviceProxy(f"tango://{stack.tango_host}/{DEVICE}")
    with pytest.raises(tango.DevFailed) as info:
        proxy.command_inout("Prepare", deep)
    assert info.value.args[0].reason == "OET_INVALID_REQUEST"
