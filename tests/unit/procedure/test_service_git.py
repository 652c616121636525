"""git:// scripts and per-script environments through the engine, offline: local repositories
and a wheel built by the test."""

from __future__ import annotations

import pytest

from ska_oso_oet import events as topics
from ska_oso_oet.procedure.domain import PrepareRequest
from ska_oso_oet.procedure.errors import InvalidRequest
from tests.support.gitrepos import build_wheel, make_repo

from ..conftest import TIMEOUT, EventRecorder

FINAL = {"COMPLETE", "FAILED", "STOPPED"}
GREETER = "import oettiny\n\n\ndef main():\n    print(oettiny.greet('{who}'))\n"
PLAIN = "def main():\n    print('plain {version}')\n"


@pytest.fixture
def repo(tmp_path):
    repo = make_repo(tmp_path / "repo")
    repo.commit(
        {"scripts/greet.py": GREETER.format(who="v1"), "scripts/plain.py": PLAIN.format(version=1),
         "requirements.txt": "oettiny==1.0\n"},
        "first",
    )  # fmt: skip
    return repo


@pytest.fixture
def git_service(make_service, tmp_path, repo):
    wheels = tmp_path / "wheels"
    build_wheel(wheels, "oettiny", "1.0")
    service = make_service(
        allowed_repositories=(repo.url,),
        git_cache_dir=tmp_path / "git",
        environments_dir=tmp_path / "envs",
        pip_options=("--no-index", "--find-links", str(wheels)),
    )
    recorder = EventRecorder()
    service.events.subscribe(recorder)
    service.recorder = recorder
    return service


def git_request(repo, path, create_env=False, **git_args):
    return PrepareRequest.from_dict(
        {
            "script": {
                "script_type": "git",
                "script_uri": f"git://{path}",
                "git_args": {"git_repo": repo.url, **git_args},
                "create_env": create_env,
            }
        }
    )


def run_to_end(service, request):
    pid = service.prepare(request)["id"]
    summary = service.wait_for_state(pid, {"READY", *FINAL}, TIMEOUT * 4)
    if summary["state"] == "READY":
        service.start(pid)
        summary = service.wait_for_state(pid, FINAL, TIMEOUT)
    return summary


def printed(service, pid, stream="stdout"):
    service.recorder.wait_for(
        lambda e: e.topic.startswith("procedure.lifecycle.") and e.topic != topics.PROCEDURE_STATECHANGE
        and e.payload.get("procedure_id") == pid and e.payload.get("result", {}).get("state") in FINAL
    )  # fmt: skip
    return [
        e.payload["line"]
        for e in service.recorder.of(pid, topics.SCRIPT_STDOUT)
        if e.payload["stream"] == stream
    ]


def test_branch_resolves_to_a_commit_that_the_summary_records(git_service, repo):
    summary = run_to_end(git_service, git_request(repo, "scripts/plain.py", git_branch="main"))
    assert summary["state"] == "COMPLETE", summary["history"]
    assert summary["script"]["git_args"]["git_commit"] == repo.head()
    assert summary["script"]["git_args"]["git_branch"] == "main"
    assert printed(git_service, summary["id"]) == ["plain 1"]


def test_a_given_commit_is_checked_out_exactly(git_service, repo):
    first = repo.head()
    repo.commit({"scripts/plain.py": PLAIN.format(version=2)}, "second")
    old = run_to_end(git_service, git_request(repo, "scripts/plain.py", git_commit=first))
    new = run_to_end(git_service, git_request(repo, "scripts/plain.py"))
    assert printed(git_service, old["id"]) == ["plain 1"]
    assert printed(git_service, new["id"]) == ["plain 2"]
    assert new["script"]["git_args"]["git_commit"] == repo.head()


def test_create_env_builds_once_and_reuses_across_commits(git_service, repo):
    first = run_to_end(git_service, git_request(repo, "scripts/greet.py", create_env=True))
    assert first["state"] == "COMPLETE", first["history"]
    states = [s for s, _ in first["history"]["process_states"]]
    assert states[:6] == ["CREATING", "IDLE", "PREP_ENV", "IDLE", "LOADING", "IDLE"]
    assert printed(git_service, first["id"]) == ["hello v1 from oettiny 1.0"]
    steps = {e.payload["step"] for e in git_service.recorder.of(first["id"], topics.SCRIPT_ENV)}
    assert {"checkout", "venv", "install", "ready"} <= steps, "build progress is forwarded"
    assert not printed(git_service, first["id"], "prep_env"), "progress is not script output"

    repo.commit({"scripts/greet.py": GREETER.format(who="v2")}, "script change only")
    second = run_to_end(git_service, git_request(repo, "scripts/greet.py", create_env=True))
    assert printed(git_service, second["id"]) == ["hello v2 from oettiny 1.0"]
    assert second["details"]["environment"] == first["details"]["environment"]


def test_without_create_env_a_missing_import_fails_clearly(git_service, repo):
    summary = run_to_end(git_service, git_request(repo, "scripts/greet.py"))
    assert summary["state"] == "FAILED"
    assert "ModuleNotFoundError: No module named 'oettiny'" in summary["history"]["stacktrace"]


def test_failures_give_readable_reasons(git_service, repo):
    unknown_branch = run_to_end(
        git_service, git_request(repo, "scripts/plain.py", git_branch="nope")
    )
    assert unknown_branch["state"] == "FAILED"
    assert "nope" in unknown_branch["history"]["stacktrace"]
    missing = run_to_end(git_service, git_request(repo, "scripts/absent.py"))
    assert "absent.py" in missing["history"]["stacktrace"]
    repo.commit({"requirements.txt": "oettiny==9.9\n"}, "impossible requirement")
    broken = run_to_end(git_service, git_request(repo, "scripts/greet.py", create_env=True))
    assert broken["state"] == "FAILED"
    assert "oettiny==9.9" in broken["history"]["stacktrace"]
    with pytest.raises(InvalidRequest, match="not allowed"):
        git_service.prepare(
            PrepareRequest.from_dict(
                {
                    "script": {
                        "script_uri": "git://x.py",
                        "git_args": {"git_repo": "https://evil.example/r.git"},
                    }
                }
            )
        )
    assert git_service.healthy
    assert run_to_end(git_service, git_request(repo, "scripts/plain.py"))["state"] == "COMPLETE"
