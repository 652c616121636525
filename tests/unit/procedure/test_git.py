"""Tests of the git clone cache against local repositories built by the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from ska_oso_oet.procedure.domain import GitArgs, GitScript
from ska_oso_oet.procedure.errors import InvalidRequest, OetError
from ska_oso_oet.procedure.filelock import FileLock
from ska_oso_oet.procedure.git import (
    Checkout,
    GitCache,
    GitError,
    GitTimeout,
    RepositoryNotAllowed,
    RepositoryUnreachable,
    ScriptNotFound,
    UnknownRevision,
    normalise_repo_url,
)
from tests.support.githttp import git_http_server
from tests.support.gitrepos import LocalRepo, git, make_script_repo

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def repo(tmp_path: Path) -> LocalRepo:
    """main: v1 -> v2 of the script; branch 'feature' from v1 with its own script version."""
    repo = make_script_repo(tmp_path / "repos" / "scripts")
    repo.commit({"scripts/version.txt": "v1\n"}, "v1")
    repo.branch("feature")
    repo.commit({"scripts/version.txt": "feature\n"}, "feature work")
    repo.switch("main")
    repo.commit({"scripts/version.txt": "v2\n"}, "v2")
    return repo


@pytest.fixture
def cache(tmp_path: Path) -> GitCache:
    return GitCache(tmp_path / "cache", allowed_repos=[f"{tmp_path}/repos/*"], timeout=30)


def _version(checkout: Checkout) -> str:
    return (checkout.path / "scripts" / "version.txt").read_text().strip()


def _store_commits(checkout: Checkout) -> int:
    store = checkout.path.parent.parent / "store.git"
    return len(git(store, "rev-list", "--all").split())


class TestResolutionAndCheckout:
    def test_default_branch_is_used_when_none_given(self, cache, repo):
        checkout = cache.checkout(GitArgs(repo.url), "scripts/hello.py")
        assert checkout.commit == repo.head("main")
        assert checkout.branch == "main"
        assert _version(checkout) == "v2"
        assert checkout.script == checkout.path / "scripts" / "hello.py"
        assert checkout.script.read_text().startswith('"""Test script')
        assert not checkout.reused

    def test_default_branch_follows_the_remote_head(self, cache, tmp_path):
        other = make_script_repo(tmp_path / "repos" / "develop-first")
        other.branch("develop")
        tip = other.commit({"scripts/version.txt": "develop\n"})
        # HEAD of the repository now names 'develop': that is its default branch.
        checkout = cache.checkout(GitArgs(other.url))
        assert (checkout.branch, checkout.commit) == ("develop", tip)

    def test_branch_resolves_to_its_tip(self, cache, repo):
        checkout = cache.checkout(GitArgs(repo.url, git_branch="feature"))
        assert checkout.commit == repo.head("feature")
        assert _version(checkout) == "feature"

    def test_given_commit_is_checked_out_exactly(self, cache, repo):
        old = repo.head("main~1")
        checkout = cache.checkout(GitArgs(repo.url, git_branch="feature", git_commit=old))
        assert checkout.commit == old
        assert checkout.branch is None
        assert _version(checkout) == "v1"

    def test_abbreviated_commit_resolves_to_full_sha(self, cache, repo):
        old = repo.head("main~1")
        checkout = cache.checkout(GitArgs(repo.url, git_commit=old[:8].upper()))
        assert checkout.commit == old
        assert _version(checkout) == "v1"

    def test_annotated_tag_given_as_branch_resolves_to_its_commit(self, cache, repo):
        repo.tag("release-1", "main~1")
        checkout = cache.checkout(GitArgs(repo.url, git_branch="release-1"))
        assert checkout.commit == repo.head("main~1")

    def test_resolve_gives_the_commit_without_downloading(self, cache, repo):
        repo.tag("release-2", "feature")
        assert cache.resolve(GitArgs(repo.url, git_branch="release-2")) == repo.head("feature")
        assert cache.resolve(GitArgs(repo.url)) == repo.head("main")
        assert not cache.cache_dir.exists()

    def test_plain_path_and_file_url_share_the_cache(self, cache, repo):
        by_url = cache.checkout(GitArgs(repo.url))
        by_path = cache.checkout(GitArgs(str(repo.path) + "/"))
        assert by_path.path == by_url.path
        assert by_path.repo == by_url.repo == repo.url
        assert by_path.reused

    def test_checkout_script_takes_a_git_script(self, cache, repo):
        spec = GitScript("git://scripts/hello.py", GitArgs(repo.url, git_branch="feature"))
        checkout = cache.checkout_script(spec)
        assert checkout.script == checkout.path / "scripts" / "hello.py"
        assert checkout.commit == repo.head("feature")


class TestCaching:
    def test_same_commit_is_reused_and_new_commits_get_their_own_tree(self, cache, repo):
        first = cache.checkout(GitArgs(repo.url))
        again = cache.checkout(GitArgs(repo.url, git_commit=first.commit))
        assert again.reused and again.path == first.path
        new_tip = repo.commit({"scripts/version.txt": "v3\n"}, "v3")
        moved = cache.checkout(GitArgs(repo.url, git_branch="main"))
        assert moved.commit == new_tip and not moved.reused
        assert _version(moved) == "v3"
        assert _version(first) == "v2"  # the older tree is untouched

    def test_branch_checkout_fetches_only_one_commit(self, cache, repo):
        checkout = cache.checkout(GitArgs(repo.url, git_branch="feature"))
        store = checkout.path.parent.parent / "store.git"
        assert (store / "shallow").exists()
        assert _store_commits(checkout) == 1
        older = cache.checkout(GitArgs(repo.url, git_commit=repo.head("main~1")))
        assert _store_commits(older) == 2

    def test_unshallow_cache_fetches_history(self, tmp_path, repo):
        cache = GitCache(tmp_path / "deep", allowed_repos=[repo.url], shallow=False)
        checkout = cache.checkout(GitArgs(repo.url))
        assert _store_commits(checkout) == 4

    def test_checkout_has_no_git_metadata(self, cache, repo):
        checkout = cache.checkout(GitArgs(repo.url))
        assert not (checkout.path / ".git").exists()
        assert sorted(p.name for p in checkout.path.iterdir()) == ["requirements.txt", "scripts"]

    def test_leftovers_of_a_crashed_writer_are_cleaned(self, cache, repo):
        first = cache.checkout(GitArgs(repo.url))
        repo_dir = first.path.parent.parent
        stale = repo_dir / "tmp" / "deadbeef.half-written"
        stale.mkdir(parents=True)
        (repo_dir / "store.git" / "HEAD").unlink()  # a broken store is rebuilt
        second = cache.checkout(GitArgs(repo.url, git_branch="feature"))
        assert second.commit == repo.head("feature")
        assert not stale.exists()
        assert (repo_dir / "store.git" / "HEAD").is_file()


class TestAllowList:
    @pytest.mark.parametrize(
        "url",
        [
            "https://example.org/evil/repo.git",
            "file:///etc",
            "/tmp",
        ],
    )
    def test_repository_outside_the_patterns_is_refused(self, cache, url):
        with pytest.raises(RepositoryNotAllowed, match="not allowed; allowed repository patterns"):
            cache.checkout(GitArgs(url))

    def test_refusal_is_an_invalid_request(self, cache):
        with pytest.raises(InvalidRequest) as info:
            cache.check_allowed("https://example.org/x")
        assert isinstance(info.value, GitError) and isinstance(info.value, OetError)
        assert info.value.code == "OET_INVALID_REQUEST"

    @pytest.mark.parametrize("form", ["file://{}/repos/../cache", "{}/repos/../cache"])
    def test_dot_dot_cannot_leave_an_allowed_folder(self, cache, tmp_path, repo, form):
        with pytest.raises(RepositoryNotAllowed, match=r"'\.\.' path segments are refused"):
            cache.check_allowed(form.format(tmp_path))

    @pytest.mark.parametrize("url", ["--upload-pack=touch /tmp/x", "relative/repo", "", "a b"])
    def test_malformed_locations_are_refused(self, cache, url):
        with pytest.raises(RepositoryNotAllowed):
            cache.check_allowed(url)

    def test_default_patterns_allow_ska_repositories_only(self, tmp_path):
        cache = GitCache(tmp_path)
        url = "https://gitlab.com/ska-telescope/oso/ska-oso-scripting.git"
        assert cache.check_allowed(url) == url
        with pytest.raises(RepositoryNotAllowed):
            cache.check_allowed("https://gitlab.com/someone-else/scripts.git")

    @pytest.mark.parametrize(
        ("given", "canonical"),
        [
            ("/a/b/./c/", "file:///a/b/c"),
            ("file://localhost/a//b", "file:///a/b"),
            ("https://host/x.git/", "https://host/x.git"),
            (
                "HTTPS://GitLab.COM:443/ska-telescope/x.git",
                "https://gitlab.com/ska-telescope/x.git",
            ),
            (
                "https://gitlab.com./ska-telescope//./x.git",
                "https://gitlab.com/ska-telescope/x.git",
            ),
            ("https://gitlab.com/ska-telescope/%78.git", "https://gitlab.com/ska-telescope/x.git"),
            ("https://gitlab.com:8443/a/b", "https://gitlab.com:8443/a/b"),
            ("ssh://git@GitLab.com:22/ska/x.git", "ssh://git@gitlab.com/ska/x.git"),
            ("git@GitLab.com:ska/x.git", "git@gitlab.com:ska/x.git"),
            ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ],
    )
    def test_normalisation(self, given, canonical):
        assert normalise_repo_url(given) == canonical

    @pytest.mark.parametrize(
        "url",
        [
            "https://gitlab.com/ska-telescope/../attacker/repo.git",
            "https://gitlab.com/ska-telescope/%2e%2e/attacker/repo.git",
            "https://gitlab.com/ska-telescope/%2E%2E/attacker/repo.git",
            "https://gitlab.com/ska-telescope/.%2e/attacker/repo.git",
            "https://gitlab.com/ska-telescope/./../attacker/repo.git",
            "https://gitlab.com/ska-telescope//../attacker/repo.git",
            "https://gitlab.com/ska-telescope/x/../../attacker/repo.git",
            "https://gitlab.com/ska-telescope%2f..%2fattacker/repo.git",
            "https://gitlab.com/ska-telescope/%252e%252e/attacker/repo.git",
            "https://gitlab.com/ska-telescope/x\\..\\..\\attacker",
            "https://gitlab.com@attacker.example/ska-telescope/x.git",
            "https://gitlab.com:443@attacker.example/ska-telescope/x.git",
            "https://user:secret@gitlab.com/ska-telescope/x.git",
            "https://gitlab.com/ska-telescope/x.git?u=https://attacker.example/",
            "https://gitlab.com/ska-telescope/x.git#frag",
            "ext::sh -c touch% /tmp/pwned",
            "ext::x://gitlab.com/ska-telescope/",
            "http::https://gitlab.com/ska-telescope/x",
            "git@gitlab.com:ska-telescope/../attacker/x.git",
            "file:///repos/%2e%2e/etc",
            "file://attacker.example/ska-telescope/x",
            "https://gitlab.com:99999/ska-telescope/x",
            "https://gitlab.com/ska-telescope/%ff",
            "https://gitlab.com/ska-telescope/x\x00",
        ],
    )
    def test_tricks_are_refused_before_matching(self, tmp_path, url):
        cache = GitCache(tmp_path, allowed_repos=["*"])  # even a match-all list refuses them
        with pytest.raises(RepositoryNotAllowed):
            cache.check_allowed(url)

    def test_patterns_are_normalised_like_urls(self, tmp_path):
        cache = GitCache(tmp_path, allowed_repos=["HTTPS://GitLab.com:443/ska-telescope/*/"])
        assert cache.check_allowed("https://gitlab.com/ska-telescope/x.git")
        with pytest.raises(RepositoryNotAllowed):
            cache.check_allowed("https://gitlab.com/ska-telescope-evil/x.git")

    def test_refusal_quotes_only_a_short_prefix(self, cache):
        with pytest.raises(RepositoryNotAllowed) as info:
            cache.check_allowed("https://example.org/" + "x" * 100_000)
        assert len(str(info.value)) < 600


class TestAllowListOverHttp:
    """The attack of issue 13 against a real (dumb-protocol) HTTP git server on loopback."""

    @pytest.fixture
    def served(self, tmp_path):
        good = make_script_repo(tmp_path / "src" / "good", requirements=None)
        evil = make_script_repo(tmp_path / "src" / "evil", requirements=None)
        evil.commit({"scripts/hello.py": "raise SystemExit('attacker code ran')\n"}, "evil")
        with git_http_server(tmp_path / "www") as server:
            server.publish(good, "ska-telescope/scripts.git")
            server.publish(evil, "attacker/repo.git")
            yield server

    def _cache(self, tmp_path, server):
        return GitCache(
            tmp_path / "cache", allowed_repos=[f"{server.url}/ska-telescope/*"], timeout=60
        )

    def test_git_itself_resolves_dot_segments_so_the_attack_is_real(self, served, tmp_path):
        # Control: handed the raw URL, git asks the server for the attacker's repository.
        git(tmp_path, "ls-remote", f"{served.url}/ska-telescope/../attacker/repo.git")
        assert any(p.startswith("/attacker/") for p in served.requests)

    def test_allowed_repository_is_fetched_over_http(self, served, tmp_path):
        checkout = self._cache(tmp_path, served).checkout(
            GitArgs(f"{served.url}/ska-telescope/scripts.git"), "scripts/hello.py"
        )
        assert "attacker" not in checkout.script.read_text()
        assert any(p.startswith("/ska-telescope/scripts.git/") for p in served.requests)

    @pytest.mark.parametrize(
        "tail",
        [
            "ska-telescope/../attacker/repo.git",
            "ska-telescope/%2e%2e/attacker/repo.git",
            "ska-telescope/%2E%2E/attacker/repo.git",
            "ska-telescope/./../attacker/repo.git",
            "ska-telescope//../attacker/repo.git",
            "ska-telescope%2F..%2Fattacker/repo.git",
        ],
    )
    def test_forbidden_repository_is_never_fetched(self, served, tmp_path, tail):
        cache = self._cache(tmp_path, served)
        with pytest.raises(RepositoryNotAllowed):
            cache.checkout(GitArgs(f"{served.url}/{tail}"), "scripts/hello.py")
        with pytest.raises(RepositoryNotAllowed):
            cache.resolve(GitArgs(f"{served.url}/{tail}"))
        assert served.requests == []

    def test_user_info_cannot_redirect_to_another_host(self, served, tmp_path):
        cache = GitCache(tmp_path / "c", allowed_repos=["http://127.0.0.2/*"], timeout=60)
        host_port = served.url.removeprefix("http://")
        with pytest.raises(RepositoryNotAllowed):
            cache.checkout(GitArgs(f"http://127.0.0.2@{host_port}/attacker/repo.git"))
        assert served.requests == []


class TestFailures:
    def test_unreachable_repository(self, cache, tmp_path):
        missing = tmp_path / "repos" / "missing"
        with pytest.raises(RepositoryUnreachable, match="does not appear to be a git repository"):
            cache.checkout(GitArgs(str(missing)))
        with pytest.raises(RepositoryUnreachable, match="cannot fetch from repository"):
            cache.checkout(GitArgs(str(missing), git_commit="a" * 40))

    def test_unknown_branch_lists_the_branches(self, cache, repo):
        with pytest.raises(UnknownRevision, match=r"'nope' not found .*branches: feature, main"):
            cache.checkout(GitArgs(repo.url, git_branch="nope"))

    @pytest.mark.parametrize("branch", ["bad..name", "-x", "refs/heads/main"])
    def test_invalid_branch_names(self, cache, repo, branch):
        with pytest.raises(UnknownRevision, match="not a"):
            cache.checkout(GitArgs(repo.url, git_branch=branch))

    def test_unknown_commit(self, cache, repo):
        with pytest.raises(UnknownRevision, match="commit '0123456789abc' not found"):
            cache.checkout(GitArgs(repo.url, git_commit="0123456789abc"))
        with pytest.raises(UnknownRevision, match="not found"):
            cache.checkout(GitArgs(repo.url, git_commit="f" * 40))

    @pytest.mark.parametrize("commit", ["xyz", "abc", "g" * 40])
    def test_malformed_commit(self, cache, repo, commit):
        with pytest.raises(UnknownRevision, match="is not a commit SHA"):
            cache.checkout(GitArgs(repo.url, git_commit=commit))

    def test_missing_script_names_near_misses(self, cache, repo):
        with pytest.raises(ScriptNotFound) as info:
            cache.checkout(GitArgs(repo.url), "hello.py")
        message = str(info.value)
        assert "script 'hello.py' not found in repository" in message
        assert f"at commit {repo.head()[:12]}" in message
        assert "files with that name: scripts/hello.py" in message

    def test_script_outside_the_checkout_is_refused(self, cache, repo, tmp_path):
        (tmp_path / "outside.py").write_text("secret = 1\n")
        os.symlink(tmp_path / "outside.py", repo.path / "scripts" / "link.py")
        git(repo.path, "add", "scripts/link.py")
        git(repo.path, "commit", "-q", "-m", "link out")
        with pytest.raises(ScriptNotFound, match="points outside the repository"):
            cache.checkout(GitArgs(repo.url), "scripts/link.py")
        with pytest.raises(ScriptNotFound, match="points outside the repository"):
            cache.checkout(GitArgs(repo.url), "../../outside.py")

    def test_timeout_when_the_server_never_answers(self, tmp_path):
        server = socket.create_server(("127.0.0.1", 0))
        port = server.getsockname()[1]
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def hold_connections() -> None:
            server.settimeout(0.2)
            while not stop.is_set():
                try:
                    accepted.append(server.accept()[0])
                except TimeoutError:
                    continue

        thread = threading.Thread(target=hold_connections, daemon=True)
        thread.start()
        try:
            cache = GitCache(tmp_path, allowed_repos=["git://127.0.0.1:*"], timeout=1.0)
            started = time.monotonic()
            with pytest.raises(GitTimeout, match=r"timed out after 1 s on git://127\.0\.0\.1"):
                cache.checkout(GitArgs(f"git://127.0.0.1:{port}/scripts.git"))
            assert time.monotonic() - started < 15
        finally:
            stop.set()
            thread.join(timeout=5)
            for conn in accepted:
                conn.close()
            server.close()


class TestConcurrency:
    def test_threads_preparing_the_same_commit_share_one_checkout(self, cache, repo):
        barrier = threading.Barrier(8)
        results: list[Checkout] = []
        errors: list[BaseException] = []

        def prepare() -> None:
            try:
                barrier.wait(timeout=10)
                results.append(cache.checkout(GitArgs(repo.url, git_branch="feature")))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=prepare) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors
        assert len({r.path for r in results}) == 1 and len(results) == 8
        assert sum(not r.reused for r in results) == 1
        assert _version(results[0]) == "feature"

    def test_processes_preparing_the_same_commit_share_one_checkout(self, tmp_path, repo):
        code = textwrap.dedent(
            """
            import sys
            from pathlib import Path
            from ska_oso_oet.procedure.domain import GitArgs
            from ska_oso_oet.procedure.git import GitCache
            cache = GitCache(Path(sys.argv[1]), allowed_repos=[sys.argv[2]], timeout=60)
            c = cache.checkout(GitArgs(sys.argv[2], git_commit=sys.argv[3]), "scripts/hello.py")
            print(c.path, c.reused)
            """
        )
        commit = repo.head("main~1")
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(tmp_path / "shared"), repo.url, commit],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO_ROOT,
            )
            for _ in range(4)
        ]
        outputs = []
        for proc in procs:
            out, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, err
            outputs.append(out.split())
        assert len({path for path, _ in outputs}) == 1
        assert [reused for _, reused in outputs].count("False") == 1


class TestFileLock:
    def test_exclusive_lock_excludes_other_threads_and_objects(self, tmp_path):
        first = FileLock(tmp_path / "x.lock")
        assert first.acquire(timeout=0)
        second = FileLock(tmp_path / "x.lock")
        assert not second.acquire(timeout=0.05)
        first.release()
        assert second.acquire(timeout=1)
        second.release()

    def test_shared_locks_coexist_and_block_exclusive(self, tmp_path):
        readers = [FileLock(tmp_path / "x.lock", shared=True) for _ in range(2)]
        assert all(r.acquire(timeout=0) for r in readers)
        writer = FileLock(tmp_path / "x.lock")
        assert not writer.acquire(timeout=0)
        for r in readers:
            r.release()
        with writer:
            assert writer.held

    def test_lock_of_a_dead_process_is_released(self, tmp_path):
        code = (
            "import signal, sys\n"
            "from ska_oso_oet.procedure.filelock import FileLock\n"
            "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True)\n"
            "signal.pause()\n"
        )
        path = tmp_path / "x.lock"
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout.readline().strip() == "held"
            mine = FileLock(path)
            assert not mine.acquire(timeout=0)
            proc.kill()
            proc.wait(timeout=10)
            assert mine.acquire(timeout=10)
            mine.release()
        finally:
            proc.kill()
            proc.wait(timeout=10)
            proc.stdout.close()

    def test_waiter_relocks_a_lock_file_deleted_by_its_holder(self, tmp_path):
        """Eviction deletes lock files while holding them; a waiter must then lock the new
        file, or it would share nothing with later lockers (checked from another process)."""
        path = tmp_path / "x.lock"
        holder = FileLock(path)
        assert holder.acquire(timeout=0)
        waiter = FileLock(path, shared=True)
        got: list[bool] = []
        thread = threading.Thread(target=lambda: got.append(waiter.acquire(timeout=30)))
        thread.start()
        deadline = time.monotonic() + 30
        me = psutil.Process()
        while sum(f.path == str(path) for f in me.open_files()) < 2:  # the waiter is waiting
            assert time.monotonic() < deadline
            time.sleep(0.01)
        holder.unlink()
        holder.release()
        thread.join(timeout=30)
        assert got == [True]
        probe = (
            "import sys\n"
            "from ska_oso_oet.procedure.filelock import FileLock\n"
            "print(FileLock(sys.argv[1]).acquire(timeout=0))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=60
        )
        assert result.stdout.strip() == "False", result.stderr
        waiter.release()
        result = subprocess.run(
            [sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=60
        )
        assert result.stdout.strip() == "True", result.stderr


class TestCheckoutEviction:
    """Checkouts are evicted like environments: least recently used first, never one in use,
    bounded in count and disk (issue 13)."""

    def _commits(self, repo: LocalRepo, n: int) -> list[str]:
        return [repo.commit({"scripts/version.txt": f"e{i}\n"}, f"e{i}") for i in range(n)]

    def _trees(self, cache: GitCache) -> set[str]:
        return {p.name for p in cache.cache_dir.glob("*/checkouts/*") if p.is_dir()}

    def test_least_recently_used_trees_go_beyond_the_count(self, tmp_path, repo):
        cache = GitCache(tmp_path / "c", allowed_repos=[repo.url], timeout=30, max_checkouts=2)
        first, second, third = self._commits(repo, 3)
        cache.checkout(GitArgs(repo.url, git_commit=first))
        cache.checkout(GitArgs(repo.url, git_commit=second))
        cache.checkout(GitArgs(repo.url, git_commit=first))  # used again: now the newest
        cache.checkout(GitArgs(repo.url, git_commit=third))
        assert self._trees(cache) == {first, third}

    def test_a_held_checkout_is_never_evicted(self, tmp_path, repo):
        cache = GitCache(tmp_path / "c", allowed_repos=[repo.url], timeout=30, max_checkouts=1)
        first, second, third = self._commits(repo, 3)
        held = cache.checkout(GitArgs(repo.url, git_commit=first), "scripts/hello.py", hold=True)
        cache.checkout(GitArgs(repo.url, git_commit=second))
        cache.checkout(GitArgs(repo.url, git_commit=third))
        assert first in self._trees(cache) and held.script.is_file()
        held.release()
        cache.evict()
        assert self._trees(cache) == {third}

    def test_a_checkout_held_by_another_process_is_never_evicted(self, tmp_path, repo):
        cache = GitCache(tmp_path / "c", allowed_repos=[repo.url], timeout=30, max_checkouts=1)
        first, second = self._commits(repo, 2)
        cache.checkout(GitArgs(repo.url, git_commit=first))
        (lease,) = cache.cache_dir.glob(f"*/leases/{first}")
        holder = subprocess.Popen(
            [sys.executable, "-c", "import fcntl,sys,os; fd=os.open(sys.argv[1], os.O_RDWR); "
             "fcntl.flock(fd, fcntl.LOCK_SH); print('held', flush=True); sys.stdin.read()",
             str(lease)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert holder.stdout.readline().strip() == "held"
            cache.checkout(GitArgs(repo.url, git_commit=second))
            assert self._trees(cache) == {first, second}
        finally:
            holder.stdin.close()
            holder.wait(timeout=30)
        cache.evict()
        assert self._trees(cache) == {second}

    def test_disk_bound(self, tmp_path, repo):
        big = repo.commit({"big.bin": b"x" * 200_000}, "big")
        small = repo.commit({"big.bin": None}, "small")
        cache = GitCache(
            tmp_path / "c", allowed_repos=[repo.url], timeout=30, max_checkouts=None,
            max_bytes=100_000,
        )  # fmt: skip
        cache.checkout(GitArgs(repo.url, git_commit=big))
        cache.checkout(GitArgs(repo.url, git_commit=small))
        assert self._trees(cache) == {small}

    def test_an_evicted_commit_is_checked_out_again(self, tmp_path, repo):
        cache = GitCache(tmp_path / "c", allowed_repos=[repo.url], timeout=30, max_checkouts=1)
        first, second = self._commits(repo, 2)
        cache.checkout(GitArgs(repo.url, git_commit=first))
        cache.checkout(GitArgs(repo.url, git_commit=second))
        again = cache.checkout(GitArgs(repo.url, git_commit=first), "scripts/hello.py")
        assert not again.reused and _version(again) == "e0"
