"""git:// scripts from repositories that are Python projects, through the engine, offline.

The repository's own package comes from the procedure's exact commit; the shared environment
holds its dependencies only (here one wheel named by a file:// URL).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ska_oso_oet import events as topics
from ska_oso_oet.procedure.domain import PrepareRequest
from tests.support.gitrepos import (
    build_wheel,
    close_hanging_server,
    editable_requirements_files,
    hanging_server,
    make_repo,
    pep621_files,
    poetry_files,
)

from ..conftest import TIMEOUT, EventRecorder

FINAL = {"COMPLETE", "FAILED", "STOPPED"}


@pytest.fixture(scope="module")
def dep_wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheels"), "oetdep", "1.0")


@pytest.fixture
def make_git_service(make_service, tmp_path):
    def make(*repos: str, **overrides):
        settings = {
            "allowed_repositories": repos,
            "git_cache_dir": tmp_path / "git",
            "environments_dir": tmp_path / "envs",
            "pip_options": ("--no-index",),
            **overrides,
        }
        service = make_service(**settings)
        service.recorder = EventRecorder()
        service.events.subscribe(service.recorder)
        return service

    return make


def request(url: str, create_env: bool = True, path: str = "scripts/observe.py", **git_args):
    return PrepareRequest.from_dict(
        {
            "script": {
                "script_type": "git",
                "script_uri": f"git://{path}",
                "git_args": {"git_repo": url, **git_args},
                "create_env": create_env,
            }
        }
    )


def ready(service, req) -> int:
    pid = service.prepare(req)["id"]
    summary = service.wait_for_state(pid, {"READY", *FINAL}, TIMEOUT * 4)
    assert summary["state"] == "READY", summary["history"]
    return pid


def run(service, pid: int) -> list[str]:
    service.start(pid)
    summary = service.wait_for_state(pid, FINAL, TIMEOUT)
    assert summary["state"] == "COMPLETE", summary["history"]
    service.recorder.wait_for(
        lambda e: e.topic == topics.PROCEDURE_COMPLETE and e.payload["procedure_id"] == pid
    )
    return [
        e.payload["line"]
        for e in service.recorder.of(pid, topics.SCRIPT_STDOUT)
        if e.payload["stream"] == "stdout"
    ]


def env_lines(service, pid: int) -> list[dict]:
    return [e.payload for e in service.recorder.of(pid, topics.SCRIPT_ENV)]


def test_pep621_src_project_imports_its_own_commit_and_reuses_the_environment(
    make_git_service, tmp_path, dep_wheel
):
    repo = make_repo(tmp_path / "repo")
    first = repo.commit(pep621_files(dep_wheel.as_uri(), "v1"), "v1")
    service = make_git_service(repo.url)
    pid1 = ready(service, request(repo.url, git_commit=first))
    out1 = run(service, pid1)
    checkout1 = service.get(pid1)
    assert out1[0].startswith("code=v1 dep=1.0 cwd=")
    cwd1 = out1[0].split("cwd=")[1]
    assert cwd1.endswith(first), "the working folder is the commit's checkout"
    assert out1[1] == f"obsproj from {cwd1}/src/obsproj/__init__.py"
    assert "pubsub visible" in out1, "the OET's packages are visible in the environment"
    built = env_lines(service, pid1)
    assert [p["step"] for p in built if "seconds" in p][:3] == ["checkout", "venv", "install"]
    assert all(p["seconds"] >= 0 for p in built if "seconds" in p)

    second = repo.commit({"src/obsproj/__init__.py": 'CODE = "v2"\n'}, "package change only")
    pid2 = ready(service, request(repo.url, git_commit=second))
    out2 = run(service, pid2)
    assert out2[0].startswith("code=v2 dep=1.0") and out2[0].endswith(second)
    summary2 = service.get(pid2)
    assert summary2["details"]["environment"] == checkout1["details"]["environment"]
    assert any(p["step"] == "resolve" and "reusing" in p["line"] for p in env_lines(service, pid2))
    assert not any(p["step"] == "install" for p in env_lines(service, pid2))


def test_two_commits_prepared_side_by_side_each_import_their_own_code(
    make_git_service, tmp_path, dep_wheel
):
    repo = make_repo(tmp_path / "repo")
    first = repo.commit(pep621_files(dep_wheel.as_uri(), "v1", layout="flat"), "v1")
    second = repo.commit({"obsproj/__init__.py": 'CODE = "v2"\n'}, "v2")
    service = make_git_service(repo.url)
    pids = [ready(service, request(repo.url, git_commit=sha)) for sha in (first, second)]
    # Both are READY (their code imported) before either runs.
    assert run(service, pids[1])[0].startswith("code=v2")
    assert run(service, pids[0])[0].startswith("code=v1")


def test_two_subarrays_sharing_the_caches_each_run_their_own_commit(
    make_git_service, tmp_path, dep_wheel
):
    repo = make_repo(tmp_path / "repo")
    first = repo.commit(pep621_files(dep_wheel.as_uri(), "v1"), "v1")
    second = repo.commit({"src/obsproj/__init__.py": 'CODE = "v2"\n'}, "v2")
    one = make_git_service(repo.url, subarray_id=1, state_database=tmp_path / "one.sqlite")
    two = make_git_service(repo.url, subarray_id=2, state_database=tmp_path / "two.sqlite")
    pid_one = ready(one, request(repo.url, git_commit=first))
    pid_two = ready(two, request(repo.url, git_commit=second))
    assert run(two, pid_two)[0].startswith("code=v2")
    assert run(one, pid_one)[0].startswith("code=v1")
    assert one.get(pid_one)["details"]["environment"] == two.get(pid_two)["details"]["environment"]


def test_poetry_project_main_group_path_dependencies_and_local_library(
    make_git_service, tmp_path, dep_wheel
):
    repo = make_repo(tmp_path / "repo")
    files = poetry_files(str(dep_wheel))
    files["scripts/observe.py"] = (
        files["scripts/observe.py"].replace("import oetdep\n", "import oetdep\nimport helper\n")
        + "    print(helper.NAME)\n"
    )
    sha = repo.commit(files, "poetry project")
    service = make_git_service(repo.url)
    out = run(service, ready(service, request(repo.url)))
    assert out[0].startswith("code=v1 dep=1.0") and out[0].endswith(sha)
    assert out[-1] == "helper from the repository"


def test_requirements_with_editable_dot_never_install_the_checkout(
    make_git_service, tmp_path, dep_wheel
):
    repo = make_repo(tmp_path / "repo")
    first = repo.commit(editable_requirements_files(dep_wheel.as_uri(), "v1"), "v1")
    service = make_git_service(repo.url)
    pid1 = ready(service, request(repo.url, git_commit=first))
    assert run(service, pid1)[0].startswith("code=v1")
    second = repo.commit({"obsproj/__init__.py": 'CODE = "v2"\n'}, "v2")
    pid2 = ready(service, request(repo.url, git_commit=second))
    assert run(service, pid2)[0].startswith("code=v2"), "not commit v1's code from the env"
    assert (
        service.get(pid1)["details"]["environment"] == service.get(pid2)["details"]["environment"]
    )


def test_repository_without_dependency_file(make_git_service, tmp_path):
    repo = make_repo(tmp_path / "repo")
    repo.commit(
        {
            "mylib/__init__.py": "WHO = 'mylib of the repository'\n",
            "scripts/hello.py": "import mylib\nfrom pubsub import pub\n\n\ndef main():\n"
            "    print(mylib.WHO)\n",
        },
        "bare",
    )
    service = make_git_service(repo.url)
    for create_env in (True, False):
        out = run(service, ready(service, request(repo.url, create_env, "scripts/hello.py")))
        assert out == ["mylib of the repository"]


def test_isolated_environments_do_not_see_the_oet_packages(make_git_service, tmp_path, dep_wheel):
    repo = make_repo(tmp_path / "repo")
    repo.commit(pep621_files(dep_wheel.as_uri()), "v1")
    service = make_git_service(repo.url, env_inherit_packages=False)
    assert "pubsub missing" in run(service, ready(service, request(repo.url)))


def test_broken_pyproject_fails_with_a_clear_reason(make_git_service, tmp_path):
    repo = make_repo(tmp_path / "repo")
    repo.commit({"pyproject.toml": "[project\nname = 'x'\n", "scripts/observe.py": "x = 1\n"})
    service = make_git_service(repo.url)
    pid = service.prepare(request(repo.url))["id"]
    summary = service.wait_for_state(pid, FINAL, TIMEOUT)
    assert summary["state"] == "FAILED"
    assert "cannot read pyproject.toml" in summary["history"]["stacktrace"]


def test_git_repo_defaults_to_the_configured_repository(make_git_service, tmp_path):
    repo = make_repo(tmp_path / "repo")
    sha = repo.commit({"scripts/hi.py": "def main():\n    print('hi')\n"}, "hi")
    service = make_git_service(repo.url, default_git_repo=repo.url)
    req = PrepareRequest.from_dict({"script": {"script_uri": "git://scripts/hi.py"}})
    pid = ready(service, req)
    assert run(service, pid) == ["hi"]
    assert service.get(pid)["script"]["git_args"] == {
        "git_repo": repo.url, "git_branch": None, "git_commit": sha,
    }  # fmt: skip


def stop_within_a_second(service, pid: int) -> None:
    asked = time.monotonic()
    service.stop(pid)
    summary = service.wait_for_state(pid, FINAL, TIMEOUT)
    assert summary["state"] == "STOPPED", summary["history"]
    assert time.monotonic() - asked < 1.0


def test_stop_during_clone_ends_stopped_within_a_second(make_git_service):
    server, held, stop = hanging_server()
    try:
        url = f"git://127.0.0.1:{server.getsockname()[1]}/scripts.git"
        service = make_git_service("git://127.0.0.1:*", git_timeout=60)
        pid = service.prepare(request(url))["id"]
        deadline = time.monotonic() + TIMEOUT
        while not held and time.monotonic() < deadline:  # git has connected: it is cloning
            time.sleep(0.01)
        assert held, "git never connected"
        assert service.get(pid)["state"] == "IDLE"
        stop_within_a_second(service, pid)
    finally:
        close_hanging_server(server, held, stop)


def test_stop_during_build_ends_stopped_within_a_second(make_git_service, tmp_path):
    server, held, stop = hanging_server()
    try:
        index = f"http://127.0.0.1:{server.getsockname()[1]}/simple"
        repo = make_repo(tmp_path / "repo")
        repo.commit({"requirements.txt": "oettiny==1.0\n", "scripts/x.py": "def main():\n  pass\n"})
        service = make_git_service(repo.url, pip_options=("--index-url", index))
        pid = service.prepare(request(repo.url, path="scripts/x.py"))["id"]
        service.recorder.wait_for(
            lambda e: (
                e.topic == topics.SCRIPT_ENV
                and e.payload["procedure_id"] == pid
                and e.payload["step"] == "install"
                and e.payload["line"].startswith("$ ")
            ),
            TIMEOUT,
        )
        stop_within_a_second(service, pid)
        assert [s for s, _ in service.get(pid)["history"]["process_states"]][-2:] == [
            "PREP_ENV", "STOPPED",
        ]  # fmt: skip
    finally:
        close_hanging_server(server, held, stop)
