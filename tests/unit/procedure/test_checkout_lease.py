"""The engine leases the git checkout a procedure runs from: never evicted while it runs,
evictable once it has ended (issue 13)."""

from __future__ import annotations

from ska_oso_oet.procedure.domain import PrepareRequest
from tests.support.gitrepos import make_repo

from ..conftest import TIMEOUT

WAIT = "import threading\n\n\ndef main():\n    threading.Event().wait()\n"


def request(repo, commit: str) -> PrepareRequest:
    return PrepareRequest.from_dict(
        {
            "script": {
                "script_type": "git",
                "script_uri": "git://scripts/wait.py",
                "git_args": {"git_repo": repo.url, "git_commit": commit},
            }
        }
    )


def test_running_procedures_checkout_outlives_eviction_until_it_ends(make_service, tmp_path):
    repo = make_repo(tmp_path / "repo")
    first = repo.commit({"scripts/wait.py": WAIT}, "first")
    second = repo.commit({"scripts/wait.py": WAIT + "# second\n"}, "second")
    service = make_service(
        allowed_repositories=(repo.url,), git_cache_dir=tmp_path / "git", git_max_checkouts=1
    )

    def trees() -> set[str]:
        return {p.name for p in (tmp_path / "git").glob("*/checkouts/*") if p.is_dir()}

    running = service.prepare(request(repo, first))["id"]
    service.wait_for_state(running, ["READY"], TIMEOUT)
    service.start(running)
    other = service.prepare(request(repo, second))["id"]
    service.wait_for_state(other, ["READY"], TIMEOUT)
    assert trees() == {first, second}  # over the bound, but both are in use
    service.stop(running)
    service.wait_for_state(running, ["STOPPED"], TIMEOUT)
    service.stop(other)
    service.wait_for_state(other, ["STOPPED"], TIMEOUT)
    service._git.evict()
    assert len(trees()) == 1  # released when the procedures ended
