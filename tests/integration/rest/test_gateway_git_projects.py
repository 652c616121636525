"""git:// scripts from repositories that are Python projects, through the real gateway and the
``oet`` CLI (PyDatabaseds, OETDeviceServer and oet-gateway as separate processes), offline.

Repositories are local; their one dependency is a wheel named by a file:// URL; the device
allows every repository under the test's folder and installs with ``--no-index``.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import tango

from tests.support.gitrepos import (
    LocalRepo,
    build_wheel,
    close_hanging_server,
    editable_requirements_files,
    hanging_build_project,
    hanging_server,
    make_repo,
    pep621_files,
    poetry_files,
)

from .conftest import BIN, DEVICE, TIMEOUT, EventStream, Stack, is_event, start_database

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

FINAL = {"COMPLETE", "FAILED", "STOPPED"}


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("repos")


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheels"), "oetdep", "1.0")


@pytest.fixture(scope="module")
def project(repos: Path, dep: Path) -> LocalRepo:
    """The default repository: a PEP 621 src-layout project."""
    repo = make_repo(repos / "observing")
    repo.commit(pep621_files(dep.as_uri(), "v1"), "v1")
    return repo


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, repos: Path, project: LocalRepo):
    tmp = tmp_path_factory.mktemp("stack")
    database, tango_host = start_database(tmp)
    stack = Stack(tmp, tango_host)
    try:
        stack.register_device()
        host, port = tango_host.split(":")
        tango.Database(host, int(port)).put_device_property(
            DEVICE,
            {
                "AllowedRepositories": [f"{repos.as_uri()}/*", "git://127.0.0.1:*"],
                "DefaultGitRepo": [project.url],
                "PipOptions": ["--no-index"],
            },
        )
        stack.start_device_server()
        stack.start_gateway()
        yield stack
    finally:
        stack.gateway.stop()
        stack.device_server.stop()
        database.stop()


def body(url: str | None, path: str = "scripts/observe.py", create_env=True, **git_args) -> dict:
    args = {"git_repo": url, **git_args} if url else git_args
    return {
        "script": {
            "script_type": "git",
            "script_uri": f"git://{path}",
            "git_args": args,
            "create_env": create_env,
        }
    }


def prepare(http, events: EventStream, request: dict) -> int:
    response = http.post("/procedures", json=request)
    assert response.status_code == 201, response.text
    pid = response.json()["procedure"]["id"]
    final = events.wait_for(
        lambda e: (
            e.get("procedure_id") == pid
            and e.get("topic") == "procedure.lifecycle.statechange"
            and e.get("new_state") in {"READY", *FINAL}
        ),
        timeout=TIMEOUT * 3,
    )
    assert final["new_state"] == "READY", http.get(f"/procedures/{pid}").json()
    return pid


def run(http, events: EventStream, pid: int) -> list[str]:
    started = http.put(f"/procedures/{pid}", json={"state": "RUNNING"})
    assert started.status_code == 200, started.text
    events.wait_for(is_event("procedure.lifecycle.statechange", pid, new_state="COMPLETE"))
    events.wait_for(is_event("procedure.lifecycle.complete", pid))
    return [
        e["line"]
        for e in events.of(pid)
        if e["topic"] == "script.stdout" and e["stream"] == "stdout"
    ]


def final_state(http, events: EventStream, pid: int) -> dict:
    events.wait_for(
        lambda e: (
            e.get("procedure_id") == pid
            and e.get("topic") == "procedure.lifecycle.statechange"
            and e.get("new_state") in FINAL
        ),
        timeout=TIMEOUT * 2,
    )
    return http.get(f"/procedures/{pid}").json()["procedure"]


def test_two_commits_side_by_side_share_one_environment_through_rest(
    stack: Stack, project: LocalRepo
) -> None:
    first = project.head()
    second = project.commit({"src/obsproj/__init__.py": 'CODE = "v2"\n'}, "v2")
    with stack.http() as http, EventStream(stack.url) as events:
        pids = [prepare(http, events, body(project.url, git_commit=sha)) for sha in (first, second)]
        out2 = run(http, events, pids[1])
        out1 = run(http, events, pids[0])
        summaries = [http.get(f"/procedures/{pid}").json()["procedure"] for pid in pids]
        progress = [e for e in events.of(pids[0]) if e["topic"] == "script.env"]
        reused = [e for e in events.of(pids[1]) if e["topic"] == "script.env"]
    assert out1[0].startswith("code=v1 dep=1.0 cwd=") and out1[0].endswith(first)
    assert out2[0].startswith("code=v2 dep=1.0 cwd=") and out2[0].endswith(second)
    assert "pubsub visible" in out1
    assert summaries[0]["script"]["git_args"]["git_commit"] == first
    timed = [e["step"] for e in progress if "seconds" in e]
    assert timed[:3] == ["checkout", "venv", "install"], progress
    assert not any(e["topic"] == "script.stdout" and e["stream"] == "prep_env" for e in progress)
    assert any(e["step"] == "resolve" and "reusing" in e["line"] for e in reused), reused


@pytest.mark.parametrize("layout", ["poetry", "editable", "bare"])
def test_project_layouts_through_rest(stack: Stack, repos: Path, dep: Path, layout: str) -> None:
    repo = make_repo(repos / f"layout-{layout}")
    if layout == "poetry":
        files = poetry_files(str(dep))
    elif layout == "editable":
        files = editable_requirements_files(dep.as_uri())
    else:
        files = {
            "obsproj/__init__.py": 'CODE = "bare"\n',
            "scripts/observe.py": "import obsproj\n\n\ndef main():\n    print(obsproj.CODE)\n",
        }
    sha = repo.commit(files, layout)
    with stack.http() as http, EventStream(stack.url) as events:
        out = run(http, events, prepare(http, events, body(repo.url)))
    expected = "bare" if layout == "bare" else "code=v1 dep=1.0 cwd="
    assert out[0].startswith(expected), out
    if layout != "bare":
        assert out[0].endswith(sha)


def test_broken_pyproject_fails_with_a_clear_reason_through_rest(stack: Stack, repos: Path) -> None:
    repo = make_repo(repos / "broken")
    repo.commit({"pyproject.toml": "[project\n", "scripts/observe.py": "def main():\n  pass\n"})
    with stack.http() as http, EventStream(stack.url) as events:
        response = http.post("/procedures", json=body(repo.url))
        assert response.status_code == 201, response.text
        procedure = final_state(http, events, response.json()["procedure"]["id"])
    assert procedure["state"] == "FAILED"
    assert "cannot read pyproject.toml" in procedure["history"]["stacktrace"]


def stopped_within(stack: Stack, http, events: EventStream, pid: int) -> float:
    asked = time.monotonic()
    response = http.put(f"/procedures/{pid}", json={"state": "STOPPED", "abort": False})
    assert response.status_code == 200, response.text
    procedure = final_state(http, events, pid)
    assert procedure["state"] == "STOPPED", procedure["history"]
    return time.monotonic() - asked


def test_stop_during_clone_through_rest(stack: Stack) -> None:
    server, held, stop = hanging_server()
    try:
        url = f"git://127.0.0.1:{server.getsockname()[1]}/scripts.git"
        with stack.http() as http, EventStream(stack.url) as events:
            response = http.post("/procedures", json=body(url))
            assert response.status_code == 201, response.text
            pid = response.json()["procedure"]["id"]
            deadline = time.monotonic() + TIMEOUT
            while not held and time.monotonic() < deadline:  # git connected: cloning
                time.sleep(0.02)
            assert held, "git never connected"
            # Generous for a loaded machine: the engine itself stops within 50 ms of the
            # request (tests/unit/procedure/test_service_projects.py asserts under a second).
            assert stopped_within(stack, http, events, pid) < 5
    finally:
        close_hanging_server(server, held, stop)


def test_stop_during_build_through_rest(stack: Stack, repos: Path) -> None:
    hanging = hanging_build_project(repos.parent / "hangpkg")
    repo = make_repo(repos / "hanging-build")
    repo.commit(
        {
            "requirements.txt": f"hangpkg @ {hanging.as_uri()}\n",
            "scripts/x.py": "def main():\n  pass\n",
        }
    )
    with stack.http() as http, EventStream(stack.url) as events:
        response = http.post("/procedures", json=body(repo.url, "scripts/x.py"))
        assert response.status_code == 201, response.text
        pid = response.json()["procedure"]["id"]
        events.wait_for(
            lambda e: (
                e.get("procedure_id") == pid
                and e.get("topic") == "script.env"
                and e.get("step") == "install"
                and e["line"].startswith("$ ")
            ),
            timeout=TIMEOUT,
        )
        assert stopped_within(stack, http, events, pid) < 5
        states = [
            s
            for s, _ in http.get(f"/procedures/{pid}").json()["procedure"]["history"][
                "process_states"
            ]
        ]
    assert states[-2:] == ["PREP_ENV", "STOPPED"]


def oet(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "oet"), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        env={**stack.env, "OET_REST_URI": stack.url},
    )


def test_cli_git_script_from_the_default_repository(stack: Stack, project: LocalRepo) -> None:
    created = oet(stack, "procedure", "create", "git://scripts/observe.py", "--create_env=True")
    assert created.returncode == 0, created.stdout + created.stderr
    started = oet(stack, "procedure", "start", "--listen=True")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "code=v" in started.stdout and "dep=1.0" in started.stdout, started.stdout
    described = oet(stack, "procedure", "describe")
    assert described.returncode == 0, described.stderr
    assert project.url in described.stdout and project.head() in described.stdout
