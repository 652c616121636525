"""Git scripts (with their own environments) and SBD activities through the real gateway and the
``oet`` CLI: PyDatabaseds, OETDeviceServer and oet-gateway as separate processes.

Everything is offline: the repository is a local one the test creates, allowed through the
device property ``AllowedRepositories``, and the only dependency is a wheel the test builds,
found through ``PipOptions``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
import tango

from tests.support.gitrepos import LocalRepo, build_wheel, make_repo

from .conftest import BIN, DEVICE, TIMEOUT, EventStream, Stack, is_event, start_database

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FINAL = {"COMPLETE", "FAILED", "STOPPED"}
SBD_ID = "sbd-git-00001"
GREETER = (
    "import oettiny\n\n\ndef init(subarray_id=1):\n    pass\n\n\n"
    "def main(*args, sb_json=None, sbi_id=None, **kwargs):\n"
    "    print(oettiny.greet(f'{sbi_id} {sorted(kwargs.items())}'))\n"
)
ECHO = """
import json
from pubsub import pub

def main(*args, sb_json=None, sbi_id=None, **kwargs):
    with open(sb_json) as stream:
        sbd_id = json.load(stream)["sbd_id"]
    pub.sendMessage("user.script.announce", msg_src="echo",
                    msg=json.dumps({"sbd_id": sbd_id, "args": list(args), "kwargs": kwargs}))
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> LocalRepo:
    repo = make_repo(tmp_path_factory.mktemp("repo") / "scripts-repo")
    repo.commit({"scripts/greet.py": GREETER, "requirements.txt": "oettiny==1.0\n"}, "greeter")
    return repo


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, repo: LocalRepo) -> Iterator[Stack]:
    """The conftest's stack, with the device allowed to use ``repo`` and the test wheel."""
    tmp = tmp_path_factory.mktemp("stack")
    build_wheel(tmp / "wheels", "oettiny", "1.0")
    database, tango_host = start_database(tmp)
    stack = Stack(tmp, tango_host)
    (stack.scripts / "echo.py").write_text(ECHO)
    try:
        stack.register_device()
        host, port = tango_host.split(":")
        tango.Database(host, int(port)).put_device_property(
            DEVICE,
            {
                "AllowedRepositories": [repo.url],
                "PipOptions": [f"--no-index --find-links {tmp / 'wheels'}"],
                "SBStore": [str(tmp / "sbds")],
            },
        )
        stack.start_device_server()
        stack.start_gateway()
        yield stack
    finally:
        stack.gateway.stop()
        stack.device_server.stop()
        database.stop()


def sbd_document(stack: Stack, repo: LocalRepo) -> dict:
    return {
        "sbd_id": SBD_ID,
        "telescope": "ska_low",
        "metadata": {"version": 1},
        "activities": {
            "observe": {
                "kind": "filesystem",
                "path": stack.script_uri("echo.py"),
                "function_args": {"main": {"args": [1], "kwargs": {"a": "sbd", "b": "sbd"}}},
            },
            "greet": {
                "kind": "git",
                "repo": repo.url,
                "path": "git://scripts/greet.py",
                "branch": "main",
                "function_args": {"main": {"kwargs": {"scans": 1}}},
            },
        },
    }


@pytest.fixture(scope="module")
def sbd(stack: Stack, repo: LocalRepo) -> dict:
    document = sbd_document(stack, repo)
    with stack.http() as http:
        response = http.post("/sbds", json=document)
    assert response.status_code == 201, response.text
    return document


def oet(stack: Stack, *args: str, timeout: float = TIMEOUT * 2) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "oet"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**stack.env, "OET_REST_URI": stack.url},
    )


def git_body(repo: LocalRepo, create_env: bool = False, **git_args: str) -> dict:
    return {
        "script": {
            "script_type": "git",
            "script_uri": "git://scripts/greet.py",
            "git_args": {"git_repo": repo.url, **git_args},
            "create_env": create_env,
        }
    }


def wait_final(events: EventStream, pid: int) -> dict:
    return events.wait_for(
        lambda e: (
            e.get("procedure_id") == pid
            and e.get("topic") == "procedure.lifecycle.statechange"
            and e.get("new_state") in FINAL
        ),
        timeout=TIMEOUT * 2,
    )


def test_git_script_with_its_own_environment_through_rest(stack: Stack, repo: LocalRepo) -> None:
    with stack.http() as http, EventStream(stack.url) as events:
        response = http.post("/procedures", json=git_body(repo, create_env=True, git_branch="main"))
        assert response.status_code == 201, response.text
        pid = response.json()["procedure"]["id"]
        events.wait_for(is_event("procedure.lifecycle.statechange", pid, new_state="READY"), 120)
        started = http.put(f"/procedures/{pid}", json={"state": "RUNNING"})
        assert started.status_code == 200, started.text
        events.wait_for(is_event("procedure.lifecycle.statechange", pid, new_state="COMPLETE"))
        printed = [
            e["line"]
            for e in events.of(pid)
            if e["topic"] == "script.stdout" and e["stream"] == "stdout"
        ]
        pip_lines = [
            e for e in events.of(pid) if e["topic"] == "script.env" and e["step"] == "install"
        ]
        procedure = http.get(f"/procedures/{pid}").json()["procedure"]
    assert printed == ["hello None [] from oettiny 1.0"]
    assert pip_lines, "the installer's output reaches REST clients as script.env events"
    assert any("seconds" in e for e in pip_lines), "with the time the step took"
    assert procedure["script"]["git_args"]["git_commit"] == repo.head()
    assert procedure["script"]["create_env"] is True
    assert "PREP_ENV" in [s for s, _ in procedure["history"]["process_states"]]


def test_git_errors_through_rest(stack: Stack, repo: LocalRepo) -> None:
    with stack.http() as http, EventStream(stack.url) as events:
        refused = http.post(
            "/procedures",
            json={**git_body(repo), "script": {**git_body(repo)["script"],
                  "git_args": {"git_repo": "https://evil.example/x.git"}}},
        )  # fmt: skip
        assert refused.status_code == 400, refused.text
        assert "not allowed" in json.dumps(refused.json())
        response = http.post("/procedures", json=git_body(repo, git_branch="no-such-branch"))
        assert response.status_code == 201, response.text
        pid = response.json()["procedure"]["id"]
        assert wait_final(events, pid)["new_state"] == "FAILED"
        failed = http.get(f"/procedures/{pid}").json()["procedure"]
    assert "no-such-branch" in failed["history"]["stacktrace"]


def test_git_procedure_through_the_cli(stack: Stack, repo: LocalRepo) -> None:
    created = oet(
        stack, "procedure", "create", "git://scripts/greet.py", f"--git_repo={repo.url}",
        "--git_branch=main", "--create_env=True",
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    assert "git://scripts/greet.py" in created.stdout
    started = oet(stack, "procedure", "start", "--listen=True")
    assert started.returncode == 0, started.stdout + started.stderr
    described = oet(stack, "procedure", "describe")
    assert described.returncode == 0, described.stderr
    assert repo.url in described.stdout and repo.head() in described.stdout
    assert "main" in described.stdout and "PREP_ENV" in described.stdout
    refused = oet(
        stack, "procedure", "create", "git://scripts/greet.py",
        "--git_repo=https://evil.example/x.git",
    )  # fmt: skip
    assert refused.returncode != 0 and "not allowed" in refused.stdout + refused.stderr


def test_activities_through_rest(stack: Stack, sbd: dict) -> None:
    with stack.http() as http, EventStream(stack.url) as events:
        response = http.post(
            "/activities",
            json={
                "activity_name": "observe",
                "sbd_id": SBD_ID,
                "script_args": {"main": {"kwargs": {"b": "request"}}},
                "prepare_only": True,
            },
        )
        assert response.status_code == 201, response.text
        activity = response.json()["activity"]
        assert activity["uri"].endswith(f"/activities/{activity['id']}")
        aid, pid = activity["id"], activity["procedure_id"]
        events.wait_for(
            lambda e: e.get("topic") == "activity.lifecycle.prepared" and e["activity_id"] == aid
        )
        started = http.put(f"/procedures/{pid}", json={"state": "RUNNING"})
        assert started.status_code == 200, started.text
        events.wait_for(
            lambda e: e.get("topic") == "activity.lifecycle.complete" and e["activity_id"] == aid
        )
        message = json.loads(
            events.wait_for(lambda e: e.get("procedure_id") == pid and "msg" in e)["msg"]
        )
        final = http.get(f"/activities/{aid}").json()["activity"]
        listed = http.get("/activities").json()["activities"]
    assert message["sbd_id"] == SBD_ID and message["args"] == [1]
    assert message["kwargs"] == {"a": "sbd", "b": "request"}
    assert [s for s, _ in final["activity_states"]] == [
        "TODO", "REQUESTED", "PREPARED", "RUNNING", "COMPLETE",
    ]  # fmt: skip
    kwargs = final["script_args"]["main"]["kwargs"]
    assert {k: kwargs[k] for k in "ab"} == {"a": "sbd", "b": "request"}
    assert kwargs["sbi_id"] == final["sbi_id"]
    assert final["prepare_only"] is True and final["uri"] == activity["uri"]
    assert aid in [a["id"] for a in listed]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/activities", {"activity_name": "observe", "sbd_id": "sbd-none"}, 404),
        ("/activities", {"activity_name": "nope", "sbd_id": SBD_ID}, 400),
        ("/activities", {"activity_name": "observe", "sbd_id": SBD_ID, "script_args": 3}, 400),
        ("/sbds", {"sbd_id": "bad id"}, 400),
        ("/sbds", {"sbd_id": "sbd-x", "activities": {"a": {"kind": "ftp", "path": "x"}}}, 400),
    ],
)
def test_bad_activity_requests_create_nothing(stack: Stack, sbd: dict, path, body, status) -> None:
    with stack.http() as http:
        before = http.get("/activities").json()["activities"]
        response = http.post(path, json=body)
        assert response.status_code == status, response.text
        assert response.json()["Message"]
        assert http.get("/activities").json()["activities"] == before


def test_git_activity_through_the_cli(stack: Stack, sbd: dict, repo: LocalRepo) -> None:
    ran = oet(
        stack, "activity", "run", "greet", SBD_ID, "--create-env=True",
        '--script-args={"main": {"kwargs": {"scans": 2}}}',
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "greet" in ran.stdout and SBD_ID in ran.stdout
    assert "from oettiny 1.0" in ran.stdout, ran.stdout
    listed = oet(stack, "activity", "list")
    assert listed.returncode == 0 and "greet" in listed.stdout
    described = oet(stack, "activity", "describe")
    assert described.returncode == 0, described.stderr
    for text in ("greet", SBD_ID, "COMPLETE", "Script Arguments", "'scans': 2", "Prepare Only"):
        assert text in described.stdout, (text, described.stdout)
    prepared = oet(stack, "activity", "run", "observe", SBD_ID, "--prepare-only=True")
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    missing = oet(stack, "activity", "run", "observe", "sbd-none")
    assert missing.returncode != 0 and "sbd-none" in missing.stdout + missing.stderr
