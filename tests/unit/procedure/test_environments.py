"""Tests of the virtualenv cache: real virtualenv and pip runs, offline, on a tiny local package.

Builds take a second or two each, so the tests share one wheelhouse and keep the number of
builds small; specs without requirements (virtualenv only) stand in where pip is not the point.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from ska_oso_oet.procedure.dependencies import (
    DependencySpec,
    DependencySpecError,
    import_roots,
    read_dependency_spec,
    requirements_spec,
)
from ska_oso_oet.procedure.domain import GitArgs
from ska_oso_oet.procedure.environments import (
    EnvironmentBuildFailed,
    EnvironmentCache,
    EnvironmentCancelled,
    EnvironmentFailure,
    EnvironmentTimeout,
    lines_only,
    uv_options,
)
from ska_oso_oet.procedure.errors import OetError
from ska_oso_oet.procedure.filelock import FileLock
from ska_oso_oet.procedure.git import GitCache
from tests.support.gitrepos import (
    build_wheel,
    close_hanging_server,
    hanging_server,
    make_script_repo,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
EMPTY = DependencySpec("none", "")


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    build_wheel(folder, "oettiny", "1.0")
    build_wheel(folder, "oettiny", "2.0")
    return folder


@pytest.fixture(autouse=True)
def hermetic_pip(monkeypatch):
    """Ignore the machine's pip configuration (indexes, find-links): only our wheelhouse."""
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    for name in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)


def offline(wheelhouse: Path) -> tuple[str, ...]:
    return ("--no-index", "--find-links", str(wheelhouse))


@pytest.fixture(params=["uv", "pip"])
def cache(request, tmp_path, wheelhouse) -> EnvironmentCache:
    """The cache with each installer: uv (the default when available) and virtualenv + pip."""
    return EnvironmentCache(
        tmp_path / "envs",
        pip_options=offline(wheelhouse),
        build_timeout=120,
        installer=request.param,
    )


def installed_line(cache: EnvironmentCache, name: str, version: str) -> str:
    """The line each installer prints for a package it installed."""
    return (
        f" + {name}=={version}"
        if cache.installer == "uv"
        else f"Successfully installed {name}-{version}"
    )


def run_python(python: Path, code: str) -> str:
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def leftovers(root: Path) -> list[str]:
    """Everything a failed build might have left behind (builds, links, temporary links)."""
    found = []
    for sub in ("builds", "envs"):
        folder = root / sub
        found += [f"{sub}/{p.name}" for p in folder.iterdir()] if folder.is_dir() else []
    return found


class TestDependencySpecs:
    def test_pyproject_dependencies_are_canonical(self, tmp_path):
        (tmp_path / "pyproject.toml").write_text(
            '[project]\nname = "x"\ndependencies = ["oettiny  ==1.0", "numpy>=1"]\n'
        )
        spec = read_dependency_spec(tmp_path)
        assert (spec.kind, spec.requirements) == ("pyproject", ("numpy>=1", "oettiny ==1.0"))
        (tmp_path / "pyproject.toml").write_text(
            '[project]\nname = "x"  # renamed comment\ndependencies = [\n "numpy>=1",\n'
            ' "oettiny ==1.0",\n]\n'
        )
        assert read_dependency_spec(tmp_path).text == spec.text

    def test_own_code_is_an_import_root_never_a_requirement(self, tmp_path):
        (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = []\n')
        (tmp_path / "src" / "x").mkdir(parents=True)
        (tmp_path / "src" / "x" / "__init__.py").write_text("")
        spec = read_dependency_spec(tmp_path)
        assert spec.is_empty and spec.local_paths == (tmp_path / "src",)
        (tmp_path / "src" / "x" / "__init__.py").unlink()
        (tmp_path / "src" / "x").rmdir()
        assert read_dependency_spec(tmp_path).local_paths == (tmp_path,), "flat layout"

    def test_declared_package_folders_are_honoured(self, tmp_path):
        (tmp_path / "pyproject.toml").write_text(
            '[project]\nname = "x"\n[tool.setuptools.packages.find]\nwhere = ["lib"]\n'
        )
        assert import_roots(tmp_path) == [tmp_path / "lib"]
        (tmp_path / "pyproject.toml").write_text(
            '[tool.hatch.build.targets.wheel]\npackages = ["code/pkg"]\n'
        )
        assert import_roots(tmp_path) == [tmp_path / "code"]

    def test_dynamic_dependencies_fall_back_to_requirements(self, tmp_path):
        (tmp_path / "pyproject.toml").write_text(
            '[project]\nname = "x"\ndynamic = ["dependencies"]\n'
        )
        (tmp_path / "requirements.txt").write_text("oettiny==1.0\n")
        spec = read_dependency_spec(tmp_path)
        assert spec.kind == "requirements" and spec.requirements == ("oettiny==1.0",)
        assert spec.source == tmp_path / "requirements.txt"
        (tmp_path / "requirements.txt").unlink()
        with pytest.raises(DependencySpecError, match="dynamic"):
            read_dependency_spec(tmp_path)

    def test_setuptools_dynamic_file_is_read(self, tmp_path):
        (tmp_path / "pyproject.toml").write_text(
            '[project]\nname = "x"\ndynamic = ["dependencies"]\n'
            '[tool.setuptools.dynamic]\ndependencies = {file = ["deps.txt"]}\n'
        )
        (tmp_path / "deps.txt").write_text("oettiny==1.0\n")
        assert read_dependency_spec(tmp_path).requirements == ("oettiny==1.0",)

    def test_requirements_ignore_comments_and_inline_nested_files(self, tmp_path):
        (tmp_path / "requirements.txt").write_text("# pinned\noettiny==1.0  # why\n\n-r more.txt\n")
        (tmp_path / "more.txt").write_text("numpy\n")
        spec = read_dependency_spec(tmp_path)
        assert spec.text == "numpy\noettiny==1.0"
        (tmp_path / "more.txt").write_text("numpy<2\n")
        assert read_dependency_spec(tmp_path).text != spec.text

    def test_local_requirements_are_code_not_dependencies(self, tmp_path):
        (tmp_path / "libs" / "tool" / "src" / "tool").mkdir(parents=True)
        (tmp_path / "libs" / "tool" / "src" / "tool" / "__init__.py").write_text("")
        (tmp_path / "libs" / "tool" / "pyproject.toml").write_text(
            '[project]\nname = "tool"\ndependencies = ["numpy<3"]\n'
        )
        (tmp_path / "requirements.txt").write_text(
            "-e .\n./libs/tool\n--find-links ./wheels\noettiny==1.0\n"
        )
        (tmp_path / "wheels").mkdir()
        spec = read_dependency_spec(tmp_path)
        assert spec.requirements == ("numpy<3", "oettiny==1.0"), "the local project's deps"
        assert spec.text == "--find-links wheels\nnumpy<3\noettiny==1.0"
        assert spec.options == ("--find-links", str(tmp_path / "wheels"))
        assert set(spec.local_paths) == {tmp_path, tmp_path / "libs" / "tool" / "src"}

    def test_paths_leaving_the_repository_are_refused(self, tmp_path):
        (tmp_path / "requirements.txt").write_text("../elsewhere\n")
        with pytest.raises(DependencySpecError, match="outside the repository"):
            read_dependency_spec(tmp_path)
        (tmp_path / "requirements.txt").write_text("./missing\n")
        with pytest.raises(DependencySpecError, match="does not exist"):
            read_dependency_spec(tmp_path)

    def test_specs_of_immutable_checkouts_are_remembered(self, tmp_path):
        cache = EnvironmentCache(tmp_path / "envs")
        checkout = tmp_path / "checkout"
        checkout.mkdir()
        (checkout / "requirements.txt").write_text("oettiny==1.0\n")
        first = cache.spec_for_checkout(checkout, immutable=True)
        (checkout / "requirements.txt").write_text("oettiny==2.0\n")
        assert cache.spec_for_checkout(checkout, immutable=True) is first
        assert cache.spec_for_checkout(checkout).requirements == ("oettiny==2.0",)

    def test_nothing_declared_gives_an_empty_spec(self, tmp_path):
        spec = read_dependency_spec(tmp_path)
        assert spec.is_empty and spec.kind == "none" and spec.local_paths == (tmp_path,)

    def test_broken_pyproject_is_a_readable_error(self, tmp_path):
        (tmp_path / "pyproject.toml").write_text("[project\n")
        with pytest.raises(DependencySpecError, match=r"cannot read pyproject\.toml"):
            read_dependency_spec(tmp_path)

    def test_poetry_project_is_read_with_poetry_core(self, tmp_path):
        (tmp_path / "pyproject.toml").write_text(
            '[tool.poetry]\nname = "p"\nversion = "1"\ndescription = ""\nauthors = []\n'
            '[tool.poetry.dependencies]\npython = "^3.11"\na = "^1.2.3"\nb = "~1.4"\n'
            'c = {version = "^0.2", extras = ["x"], markers = "sys_platform == \'linux\'"}\n'
            'd = {version = "*", optional = true}\ne = {git = "https://example.invalid/e.git"}\n'
            '[tool.poetry.extras]\nall = ["d"]\n'
            '[tool.poetry.group.docs.dependencies]\nsphinx = "^8"\n'
        )
        spec = read_dependency_spec(tmp_path)
        assert spec.kind == "poetry"
        assert spec.requirements == (
            "a (>=1.2.3,<2.0.0)",
            "b (>=1.4,<1.5)",
            'c[x] (>=0.2,<0.3) ; sys_platform == "linux"',
            "e @ git+https://example.invalid/e.git",
        )
        more = read_dependency_spec(tmp_path, groups=["docs"], extras=["all"]).requirements
        assert "d" in more and "sphinx (>=8,<9)" in more
        with pytest.raises(DependencySpecError, match="no Poetry dependency group 'nope'"):
            read_dependency_spec(tmp_path, groups=["nope"])

    def test_poetry_entries_without_a_standard_form_are_named(self, tmp_path):
        (tmp_path / "pyproject.toml").write_text(
            '[tool.poetry]\nname = "p"\nversion = "1"\ndescription = ""\nauthors = []\n'
            '[tool.poetry.dependencies]\noddity = "^1 || ^3"\n'
        )
        with pytest.raises(DependencySpecError, match=r"'oddity' \(\^1 \|\| \^3\)"):
            read_dependency_spec(tmp_path)

    def test_invalid_poetry_project_is_a_readable_error(self, tmp_path):
        (tmp_path / "pyproject.toml").write_text('[tool.poetry]\nname = "p"\nversion = 3\n')
        with pytest.raises(DependencySpecError, match="invalid Poetry project"):
            read_dependency_spec(tmp_path)


class TestKeys:
    def test_key_depends_on_requirements_and_options_only(self, tmp_path, wheelhouse):
        cache = EnvironmentCache(tmp_path, pip_options=offline(wheelhouse))
        key = cache.key_for(requirements_spec("oettiny==1.0\n# comment\n", base_dir=tmp_path))
        assert key.startswith(f"py{sys.version_info[0]}.{sys.version_info[1]}-")
        assert key == cache.key_for(requirements_spec("  oettiny==1.0 "))
        assert key != cache.key_for(requirements_spec("oettiny==2.0"))
        assert key != EnvironmentCache(tmp_path).key_for(requirements_spec("oettiny==1.0"))

    def test_pip_options_are_translated_for_uv(self, tmp_path):
        assert uv_options(["--no-index", "-f", "/w", "--timeout=300", "--pre"]) == (
            ("--no-index", "-f", "/w", "--prerelease", "allow"),
            {"UV_HTTP_TIMEOUT": "300"},
        )
        with pytest.raises(ValueError, match="'--use-feature=x'"):
            uv_options(["--use-feature=x"])
        # Without a uv equivalent: pip builds, unless uv was asked for.
        assert EnvironmentCache(tmp_path, pip_options=("--use-feature=x",)).installer == "pip"
        with pytest.raises(ValueError, match="no equivalent"):
            EnvironmentCache(tmp_path, pip_options=("--use-feature=x",), installer="uv")

    def test_configuration_is_checked(self, tmp_path):
        with pytest.raises(ValueError, match="not found"):
            EnvironmentCache(tmp_path, python="no-such-python-3.99")
        with pytest.raises(ValueError):
            EnvironmentCache(tmp_path, build_timeout=0)
        with pytest.raises(ValueError):
            EnvironmentCache(tmp_path, max_count=0)


class TestBuildAndReuse:
    def test_reuse_across_commits_and_rebuild_on_dependency_change(
        self, tmp_path, cache, record_property
    ):
        repo = make_script_repo(tmp_path / "repos" / "scripts", requirements="oettiny==1.0\n")
        first_commit = repo.head()
        second_commit = repo.commit({"scripts/hello.py": "def main():\n    return 2\n"})
        third_commit = repo.commit({"requirements.txt": "oettiny==2.0\n"}, "bump oettiny")
        git_cache = GitCache(tmp_path / "git", allowed_repos=[repo.url])

        def prepare(commit: str, lines: list[str]):
            checkout = git_cache.checkout(GitArgs(repo.url, git_commit=commit))
            started = time.perf_counter()
            lease = cache.acquire_for_checkout(checkout.path, lines.append)
            return lease, time.perf_counter() - started

        first_lines: list[str] = []
        first, first_seconds = prepare(first_commit, first_lines)
        reused, reuse_seconds = prepare(second_commit, [])
        rebuilt, rebuild_seconds = prepare(third_commit, [])
        try:
            assert first.built and not reused.built and rebuilt.built
            assert reused.python == first.python and reused.key == first.key
            assert rebuilt.key != first.key
            version = "import oettiny; print(oettiny.VERSION)"
            assert run_python(first.python, version) == "1.0"
            assert run_python(rebuilt.python, version) == "2.0"
            assert any(p.step == "venv" and p.line.startswith("$ ") for p in first_lines)
            assert installed_line(cache, "oettiny", "1.0") in [p.line for p in first_lines]
            assert {p.step for p in first_lines if p.seconds is not None} >= {"venv", "install"}
        finally:
            for lease in (first, reused, rebuilt):
                lease.release()
        record_property("first_build_seconds", round(first_seconds, 3))
        record_property("reuse_seconds", round(reuse_seconds, 4))
        print(
            f"\nenvironment timings: first build {first_seconds:.2f} s, reuse "
            f"{reuse_seconds * 1000:.1f} ms, rebuild after dependency change {rebuild_seconds:.2f} s"
        )
        assert reuse_seconds < first_seconds

    def test_output_is_streamed_while_the_build_runs(self, cache):
        spec = requirements_spec("oettiny==1.0")
        key = cache.key_for(spec)
        published_during_build: list[bool] = []

        def on_line(line: str) -> None:
            if line == installed_line(cache, "oettiny", "1.0"):
                published_during_build.append((cache.root / "envs" / key).exists())
            raise RuntimeError("a broken listener must not break the build")

        with cache.acquire(spec, lines_only(on_line)) as lease:
            assert published_during_build == [False]
            assert lease.built and lease.held
        assert not lease.held

    def test_threads_wait_for_a_single_build(self, cache):
        spec = requirements_spec("oettiny==1.0")
        barrier = threading.Barrier(4)
        leases, errors, commands = [], [], []

        def request() -> None:
            try:
                barrier.wait(timeout=10)
                leases.append(cache.acquire(spec, commands.append))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=request) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        try:
            assert not errors and len(leases) == 4
            assert sum(lease.built for lease in leases) == 1
            assert len({lease.python for lease in leases}) == 1
            assert sum(1 for p in commands if p.step == "venv" and p.line.startswith("$ ")) == 1
        finally:
            for lease in leases:
                lease.release()

    def test_processes_wait_for_a_single_build(self, tmp_path, wheelhouse):
        code = textwrap.dedent(
            """
            import sys
            from ska_oso_oet.procedure.environments import EnvironmentCache, requirements_spec
            cache = EnvironmentCache(sys.argv[1], pip_options=sys.argv[2:], build_timeout=120)
            with cache.acquire(requirements_spec("oettiny==1.0")) as lease:
                print(lease.python, lease.built)
            """
        )
        args = [str(tmp_path / "shared"), *offline(wheelhouse)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO_ROOT,
            )
            for _ in range(3)
        ]
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=150)
            assert proc.returncode == 0, err
            results.append(out.split())
        assert len({python for python, _ in results}) == 1
        assert [built for _, built in results].count("True") == 1

    def test_broken_published_environment_is_rebuilt(self, cache):
        with cache.acquire(EMPTY) as lease:
            pass
        lease.python.unlink()
        with cache.acquire(EMPTY) as again:
            assert again.built and again.python.exists()
        assert len(list((cache.root / "builds").iterdir())) == 1


class TestFailures:
    def test_pip_failure_is_readable_and_leaves_nothing(self, cache):
        spec = requirements_spec("oettiny==1.0\nnosuchpkg==1")
        with pytest.raises(EnvironmentBuildFailed) as info:
            cache.acquire(spec)
        message = str(info.value)
        assert "install failed (exit status 1) building environment py" in message
        assert "nosuchpkg" in message.split("\n", 1)[1], "the installer's own error lines"
        assert isinstance(info.value, OetError) and info.value.code == "OET_ENVIRONMENT_ERROR"
        assert leftovers(cache.root) == []
        record = json.loads((cache.root / "state" / f"{cache.key_for(spec)}.failed").read_text())
        assert "nosuchpkg" in record["message"]

    def test_waiters_share_the_failure_and_later_requests_retry(self, cache):
        spec = requirements_spec("nosuchpkg==1")
        barrier = threading.Barrier(3)
        errors, commands = [], []

        def request() -> None:
            try:
                barrier.wait(timeout=10)
                cache.acquire(spec, commands.append)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=request) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(errors) == 3 and all(isinstance(e, EnvironmentBuildFailed) for e in errors)
        assert all("nosuchpkg" in str(e) for e in errors)
        assert sum(1 for p in commands if p.step == "install" and p.line.startswith("$ ")) == 1
        # A request made after the failure tries again (the index may have been fixed).
        retry: list = []
        with pytest.raises(EnvironmentBuildFailed):
            cache.acquire(spec, retry.append)
        assert any(p.step == "install" and p.line.startswith("$ ") for p in retry)

    def test_build_timeout_kills_pip_and_leaves_nothing(self, tmp_path):
        server, held, stop = hanging_server()
        index = f"http://127.0.0.1:{server.getsockname()[1]}/simple"
        cache = EnvironmentCache(
            tmp_path / "envs", pip_options=("--index-url", index), build_timeout=4
        )
        try:
            started = time.monotonic()
            with pytest.raises(EnvironmentTimeout, match=r"timed out after 4 s building"):
                cache.acquire(requirements_spec("oettiny==1.0"))
            assert time.monotonic() - started < 30
        finally:
            close_hanging_server(server, held, stop)
        assert leftovers(cache.root) == []

        def stray() -> list[int]:
            return [
                p.info["pid"]
                for p in psutil.process_iter(["pid", "cmdline", "status"])
                if p.info["status"] != psutil.STATUS_ZOMBIE
                and any(str(cache.root) in part for part in p.info["cmdline"] or ())
            ]

        deadline = time.monotonic() + 10  # SIGKILLed processes may take a moment to vanish
        while stray() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stray() == []

    def test_cancel_stops_the_build(self, tmp_path):
        server, held, stop = hanging_server()
        index = f"http://127.0.0.1:{server.getsockname()[1]}/simple"
        cache = EnvironmentCache(tmp_path / "envs", pip_options=("--index-url", index))
        cancel = threading.Event()

        def on_line(line: str) -> None:
            if line.startswith("$ ") and " install " in line:
                threading.Timer(0.5, cancel.set).start()

        try:
            with pytest.raises(EnvironmentCancelled, match="install cancelled"):
                cache.acquire(requirements_spec("oettiny==1.0"), lines_only(on_line), cancel)
        finally:
            close_hanging_server(server, held, stop)
        assert leftovers(cache.root) == []

    def test_waiting_for_another_build_is_bounded_and_cancellable(self, tmp_path):
        cache = EnvironmentCache(tmp_path / "envs", build_timeout=1)
        other_build = FileLock(cache.root / "state" / f"{cache.key_for(EMPTY)}.lock")
        assert other_build.acquire(timeout=0)
        try:
            with pytest.raises(EnvironmentTimeout, match="waiting for another build"):
                cache.acquire(EMPTY)
            patient = EnvironmentCache(tmp_path / "envs", build_timeout=60)
            cancel = threading.Event()
            threading.Timer(0.3, cancel.set).start()
            started = time.monotonic()
            with pytest.raises(EnvironmentCancelled, match="while waiting"):
                patient.acquire(EMPTY, cancel=cancel)
            assert time.monotonic() - started < 30
        finally:
            other_build.release()

    def test_unusable_interpreter(self, tmp_path):
        fake = tmp_path / "python-broken"
        fake.write_text("#!/bin/sh\nexit 3\n")
        fake.chmod(0o755)
        cache = EnvironmentCache(tmp_path / "envs", python=fake)
        with pytest.raises(EnvironmentFailure, match="cannot run Python interpreter"):
            cache.acquire(EMPTY)


class TestEviction:
    def test_lru_eviction_never_removes_an_environment_in_use(self, tmp_path):
        root = tmp_path / "envs"
        limited = EnvironmentCache(root, max_count=1)
        caches = [
            EnvironmentCache(root, virtualenv_options=opts, max_count=1)
            for opts in [("--prompt", "a"), ("--prompt", "b"), ("--prompt", "c")]
        ]
        a = caches[0].acquire(EMPTY)  # held throughout: in use
        b = caches[1].acquire(EMPTY)
        b.release()
        c = caches[2].acquire(EMPTY)  # its build evicts b (least recently used, idle)
        keys = {info.key for info in limited.environments()}
        assert keys == {a.key, c.key}  # a is older than b but in use: kept over the limit
        assert not b.path.exists() and a.python.exists() and c.python.exists()
        a.release()
        assert limited.evict() == [a.key]
        c.release()
        assert limited.evict() == []
        assert [info.key for info in limited.environments()] == [c.key]

    def test_least_recently_used_goes_first_and_size_limit_applies(self, tmp_path):
        root = tmp_path / "envs"
        first = EnvironmentCache(root, virtualenv_options=("--prompt", "a"))
        second = EnvironmentCache(root, virtualenv_options=("--prompt", "b"))
        with first.acquire(EMPTY) as one:
            pass
        with second.acquire(EMPTY) as two:
            pass
        with first.acquire(EMPTY) as again:  # reuse makes `one` the most recently used
            assert not again.built
        infos = first.environments()
        assert [i.key for i in infos] == [two.key, one.key]
        assert all(i.size_bytes > 1000 and not i.in_use for i in infos)
        sized = EnvironmentCache(root, max_total_bytes=infos[1].size_bytes + 1)
        assert sized.evict() == [two.key]
        assert EnvironmentCache(root, max_total_bytes=1).evict() == [one.key]
        assert leftovers(root) == []

    def test_lease_held_by_another_process_protects_the_environment(self, tmp_path):
        root = tmp_path / "envs"
        with EnvironmentCache(root).acquire(EMPTY) as lease:
            pass
        code = textwrap.dedent(
            """
            import sys, time
            from ska_oso_oet.procedure.environments import DependencySpec, EnvironmentCache
            lease = EnvironmentCache(sys.argv[1]).acquire(DependencySpec("none", ""))
            print("leased", lease.built, flush=True)
            sys.stdin.readline()
            """
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
        try:
            assert proc.stdout.readline().split() == ["leased", "False"]
            evictor = EnvironmentCache(root, max_total_bytes=1)
            assert evictor.evict() == []
            assert [i.in_use for i in evictor.environments()] == [True]
            proc.stdin.write("done\n")
            proc.stdin.flush()
            assert proc.wait(timeout=30) == 0
            assert evictor.evict() == [lease.key]
        finally:
            proc.kill()
            proc.wait(timeout=10)
            proc.stdin.close()
            proc.stdout.close()

    def test_builds_left_by_a_crashed_process_are_removed(self, cache):
        with cache.acquire(EMPTY) as lease:
            pass
        crashed = cache.root / "builds" / f"{lease.key}.deadbeef"
        crashed.mkdir()
        (crashed / "half-written").write_text("x")
        assert cache.evict() == []
        assert not crashed.exists() and lease.python.exists()
