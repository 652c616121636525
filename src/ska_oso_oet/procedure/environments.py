"""Virtual environment cache for ``git://`` scripts prepared with ``create_env``.

An :class:`EnvironmentCache` turns a :class:`DependencySpec` (what a repository declares in
``pyproject.toml`` or ``requirements.txt``) into a virtualenv and hands it out as an
:class:`EnvironmentLease`, whose :attr:`~EnvironmentLease.python` runs the script (the engine's
worker is stdlib-only, so nothing of ours is installed into the environment).

Environments are keyed by a hash of the dependency specification, the base interpreter and the
configured pip/virtualenv options; **not** by commit, so commits that leave the dependencies
alone reuse the environment. An environment holds **dependencies only**: the repository's own
code (the project, ``-e .``, local packages) is never installed into it but imported from the
procedure's own checkout (:attr:`DependencySpec.local_paths`), so that a shared environment can
never serve one commit's code to another.

Builds use ``uv`` (``uv venv`` + ``uv pip install``) when it is available, else
``virtualenv`` + ``pip``. By default every environment also sees the OET's own packages
(pytango, pypubsub, ...) behind its own, through a ``.pth`` file naming the OET's
site-packages folders, as the reference OET's ``system_site_packages=True`` did; ``inherit=False``
builds isolated environments.

Layout under ``root``::

    envs/<key>              symbolic link to the finished build: published by an atomic rename
    builds/<key>.<random>/  the virtualenvs themselves, built in place (never moved: a
                            virtualenv is not relocatable, its scripts name their own path)
    state/<key>.lock        build lock (exclusive while one thread or process builds)
    state/<key>.lease       shared-locked by every user of the environment; mtime = last use
    state/<key>.json        what was installed, size, build time
    state/<key>.failed      the last failed build, so that requests that waited for it fail too
    app-data/               virtualenv's seed wheels (pip), used offline

A build that fails or times out is deleted before the lock is released and never gets a link,
so nothing half-built is ever reused. Concurrent requests for one environment wait for a single
build. Eviction (least recently used first, by count and/or total size) runs after every new
build and skips any environment whose lease file is locked, i.e. in use by any process.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .dependencies import (
    DependencySpec,
    DependencySpecError,
    EnvironmentFailure,
    read_dependency_spec,
    requirements_spec,
)
from .filelock import FileLock, touch, tree_size
from .runner import run_command, wait_for_lock

__all__ = [
    "DependencySpec",
    "DependencySpecError",
    "EnvironmentBuildFailed",
    "EnvironmentCache",
    "EnvironmentCancelled",
    "EnvironmentFailure",
    "EnvironmentInfo",
    "EnvironmentLease",
    "EnvironmentTimeout",
    "read_dependency_spec",
    "requirements_spec",
]

LOGGER = logging.getLogger(__name__)

DEFAULT_BUILD_TIMEOUT = 600.0
#: Installers: "auto" (uv when available, else pip), "uv" or "pip".
INSTALLERS = ("auto", "uv", "pip")
#: Dependency specifications of immutable checkouts remembered (least recently used dropped).
_SPEC_CACHE_SIZE = 256
#: Name of the file that makes the OET's packages visible inside an environment.
INHERIT_PTH = "_oet_inherit.pth"


@dataclass(frozen=True)
class Progress:
    """One progress report of :meth:`EnvironmentCache.acquire`.

    ``step`` is "resolve", "venv", "install" or "ready"; ``line`` is a line printed by the
    step's command or a summary; ``seconds`` is set on the line that ends a step.
    """

    step: str
    line: str
    seconds: float | None = None


ProgressCallback = Callable[[Progress], None]
#: Kept for callers that want lines only: wrap with :func:`lines_only`.
OutputCallback = Callable[[str], None]


def lines_only(callback: OutputCallback) -> ProgressCallback:
    """A progress callback that passes on just the text of each report."""
    return lambda progress: callback(progress.line)


#: pip install options uv pip install takes as they are; True: the option has a value.
_UV_SAME_OPTIONS = {
    "--no-index": False, "-i": True, "--index-url": True, "--extra-index-url": True,
    "-f": True, "--find-links": True, "--no-binary": True, "--only-binary": True,
    "--no-deps": False, "--require-hashes": False, "-c": True, "--constraint": True,
    "-U": False, "--upgrade": False, "--no-build-isolation": False, "-q": False,
    "--quiet": False, "-v": False, "--verbose": False, "--cert": True,
    "-C": True, "--config-settings": True, "--index-strategy": True,
}  # fmt: skip


def uv_options(pip_options: Sequence[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """``pip install`` options as ``uv pip install`` options and environment variables.

    :raises ValueError: naming an option uv has no equivalent for (the cache then builds
        with pip, unless uv was asked for explicitly)
    """
    args: list[str] = []
    env: dict[str, str] = {}
    items = list(pip_options)
    while items:
        item = items.pop(0)
        name, has_value, value = item.partition("=")
        take = functools.partial(_option_value, items, name, value if has_value else None)
        if name in _UV_SAME_OPTIONS:
            args.extend([name, take()] if _UV_SAME_OPTIONS[name] else [name])
        elif name == "--pre":
            args.extend(["--prerelease", "allow"])
        elif name == "--trusted-host":
            args.extend(["--allow-insecure-host", take()])
        elif name == "--timeout":
            env["UV_HTTP_TIMEOUT"] = take()
        elif name == "--retries":
            env["UV_HTTP_RETRIES"] = take()
        elif name in ("--progress-bar", "--disable-pip-version-check", "--no-input"):
            if name == "--progress-bar":
                take()
        else:
            raise ValueError(f"uv has no equivalent of the pip option {item!r}")
    return tuple(args), env


def _option_value(items: list[str], name: str, inline: str | None) -> str:
    if inline is not None:
        return inline
    if not items:
        raise ValueError(f"pip option {name} needs a value")
    return items.pop(0)


def find_uv() -> str | None:
    """The ``uv`` binary: the one of the ``uv`` package installed with the OET, else on PATH."""
    try:
        import uv

        found = uv.find_uv_bin()
        if found and os.access(found, os.X_OK):
            return str(found)
    except (ImportError, FileNotFoundError):
        pass
    return shutil.which("uv")


class EnvironmentBuildFailed(EnvironmentFailure):
    """virtualenv or pip failed; :attr:`output` holds the last lines they printed."""

    def __init__(self, message: str, output: Sequence[str] = ()):
        super().__init__(message)
        self.output = list(output)


class EnvironmentTimeout(EnvironmentFailure):
    """The build (or the wait for another process's build) exceeded the build timeout."""


class EnvironmentCancelled(EnvironmentFailure):
    """The caller cancelled the request (e.g. the procedure was stopped while in PREP_ENV)."""


# --------------------------------------------------------------------------------------------
# The cache


@dataclass(frozen=True)
class EnvironmentInfo:
    """One cached environment, as listed by :meth:`EnvironmentCache.environments`."""

    key: str
    path: Path
    size_bytes: int
    last_used: float
    in_use: bool


class EnvironmentLease:
    """The right to use one environment until :meth:`release` (or the end of a ``with``).

    While any lease on an environment is held, in any process, eviction leaves it alone. Hold
    it for as long as the procedure may run the interpreter and release it when the procedure
    reaches a final state; a crashed holder's lease vanishes with its process.
    """

    def __init__(self, key: str, path: Path, lock: FileLock, built: bool, seconds: float):
        self.key = key
        #: Root of the virtualenv.
        self.path = path
        #: The interpreter to run scripts with.
        self.python = path / "bin" / "python"
        #: True when this request built the environment, False when it reused one.
        self.built = built
        #: Time this request spent waiting for and/or building the environment.
        self.seconds = seconds
        self._lock = lock

    @property
    def held(self) -> bool:
        return self._lock.held

    def release(self) -> None:
        """Give the environment back (idempotent); its last-use time becomes now."""
        if self._lock.held:
            touch(self._lock.path)
            self._lock.release()

    def __enter__(self) -> EnvironmentLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"EnvironmentLease({self.key!r}, python={str(self.python)!r}, built={self.built})"


class EnvironmentCache:
    """Builds, shares and evicts virtualenvs for script dependencies.

    :param root: folder of the cache (created when missing); share it between processes
    :param python: base interpreter of the environments (default: the one running OET)
    :param pip_options: extra ``pip install`` options, e.g. ``("--no-index", "--find-links",
        "/wheels")`` for an offline host; part of the environment key
    :param virtualenv_options: extra ``virtualenv`` options (e.g. ``("--no-setuptools",)``);
        part of the environment key
    :param build_timeout: seconds one :meth:`acquire` may take, waiting included
    :param max_count: keep at most this many environments (None: no limit)
    :param max_total_bytes: keep at most this much disk in environments (None: no limit)
    :param installer: "auto" (uv if available, else virtualenv + pip), "uv" or "pip"
    :param inherit: make the OET's own packages visible behind the environment's (default);
        False builds isolated environments. Part of the key.
    :param groups: Poetry dependency groups installed besides ``main``
    :param extras: extras of the repository's project to install
    """

    def __init__(
        self,
        root: Path,
        *,
        python: str | Path | None = None,
        pip_options: Sequence[str] = (),
        virtualenv_options: Sequence[str] = (),
        build_timeout: float = DEFAULT_BUILD_TIMEOUT,
        max_count: int | None = None,
        max_total_bytes: int | None = None,
        installer: str = "auto",
        inherit: bool = True,
        groups: Sequence[str] = (),
        extras: Sequence[str] = (),
    ):
        if installer not in INSTALLERS:
            raise ValueError(f"installer must be one of {', '.join(INSTALLERS)}, not {installer!r}")
        if build_timeout <= 0:
            raise ValueError("build_timeout must be positive")
        if max_count is not None and max_count < 1:
            raise ValueError("max_count must be at least 1")
        self.root = Path(root)
        self.python = _resolve_interpreter(python)
        self.pip_options = tuple(pip_options)
        self.virtualenv_options = tuple(virtualenv_options)
        self.build_timeout = build_timeout
        self.max_count = max_count
        self.max_total_bytes = max_total_bytes
        self.inherit = inherit
        self.groups = tuple(groups)
        self.extras = tuple(extras)
        uv = find_uv() if installer in ("auto", "uv") else None
        if installer == "uv" and uv is None:
            raise ValueError("installer 'uv' was asked for but no uv binary is available")
        self._uv_options: tuple[tuple[str, ...], dict[str, str]] = ((), {})
        if uv is not None:
            try:
                self._uv_options = uv_options(self.pip_options)
            except ValueError as exc:
                if installer == "uv":
                    raise
                LOGGER.info("building environments with pip: %s", exc)
                uv = None
        #: The uv binary used for builds, or None for virtualenv + pip.
        self.uv = uv
        self._identity: tuple[str, str, tuple[str, ...]] | None = None
        self._specs: collections.OrderedDict[str, DependencySpec] = collections.OrderedDict()
        self._specs_lock = threading.Lock()

    @property
    def installer(self) -> str:
        """The installer builds use: "uv" or "pip"."""
        return "uv" if self.uv else "pip"

    # -- public API ---------------------------------------------------------------------------

    def key_for(self, spec: DependencySpec) -> str:
        """The environment key of ``spec``: ``<impl><major.minor>-<hash>``."""
        tag, interpreter, inherited = self._interpreter_identity()
        payload = json.dumps(
            {
                "format": 2,
                "interpreter": interpreter,
                "inherit": list(inherited) if self.inherit else None,
                "requirements": spec.text,
                "pip": self.pip_options,
                "virtualenv": self.virtualenv_options,
            },
            sort_keys=True,
        )
        return f"{tag}-{hashlib.sha256(payload.encode()).hexdigest()[:20]}"

    def acquire(
        self,
        spec: DependencySpec,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> EnvironmentLease:
        """A leased environment for ``spec``: reused when it exists, else built now.

        Blocks until the environment is ready; concurrent callers (threads or processes) for
        the same key wait for one build. ``on_progress`` receives a :class:`Progress` for
        every line the build commands print, as they print it, and one closing each step with
        the time it took (keep it quick; it runs in the calling thread). Setting ``cancel``
        aborts a wait or a build within a fraction of a second.

        :raises EnvironmentBuildFailed, EnvironmentTimeout, EnvironmentCancelled,
            DependencySpecError: with a readable message (the installer's error lines included)
        """
        key = self.key_for(spec)
        requested = time.time()
        started = time.monotonic()
        deadline = started + self.build_timeout
        lease = self._lease(key, started, built=False)
        if lease:
            _emit(on_progress, Progress("resolve", f"reusing environment {key}", lease.seconds))
            return lease
        build_lock = FileLock(self._state(key, "lock"))
        self._wait_for(build_lock, key, deadline, cancel)
        try:
            lease = self._lease(key, started, built=False)
            if lease:
                _emit(
                    on_progress,
                    Progress(
                        "resolve", f"reusing environment {key} (built meanwhile)", lease.seconds
                    ),
                )
                return lease
            self._raise_recent_failure(key, requested)
            self._build(key, spec, _Run(key, self.build_timeout, deadline, on_progress, cancel))
            lease = self._lease(key, started, built=True)
            if lease is None:  # pragma: no cover - we hold the build lock; nobody can evict
                raise EnvironmentFailure(f"environment {key} vanished right after its build")
        finally:
            build_lock.release()
        _emit(on_progress, Progress("ready", f"environment {key} ready", lease.seconds))
        try:
            self.evict()
        except Exception:  # eviction is housekeeping: never fail a prepare for it
            LOGGER.exception("environment eviction failed")
        return lease

    def spec_for_checkout(self, root: Path, immutable: bool = False) -> DependencySpec:
        """The dependency specification of the checkout at ``root`` (configured groups and
        extras applied).

        With ``immutable`` (a :class:`~.git.GitCache` checkout: one folder per commit, never
        changed) the result is remembered, so that preparing a known commit again does not
        parse its declaration again (a Poetry project takes tens of milliseconds).
        """
        if not immutable:
            return read_dependency_spec(root, self.groups, self.extras)
        key = str(Path(root).resolve())
        with self._specs_lock:
            spec = self._specs.get(key)
            if spec is not None:
                self._specs.move_to_end(key)
                return spec
        spec = read_dependency_spec(root, self.groups, self.extras)  # errors are not cached
        with self._specs_lock:
            self._specs[key] = spec
            while len(self._specs) > _SPEC_CACHE_SIZE:
                self._specs.popitem(last=False)
        return spec

    def acquire_for_checkout(
        self,
        root: Path,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> EnvironmentLease:
        """:meth:`acquire` with the dependency specification of the checkout at ``root``."""
        return self.acquire(self.spec_for_checkout(root), on_progress, cancel)

    def environments(self) -> list[EnvironmentInfo]:
        """Every published environment, least recently used first."""
        infos = []
        envs = self.root / "envs"
        for link in sorted(envs.iterdir()) if envs.is_dir() else ():
            if not link.is_symlink():
                continue
            key = link.name
            probe = FileLock(self._state(key, "lease"))
            in_use = not probe.acquire(timeout=0)
            probe.release()
            infos.append(
                EnvironmentInfo(
                    key,
                    link.resolve(),
                    int(self._metadata(key).get("size_bytes", 0)),
                    _mtime(self._state(key, "lease")),
                    in_use,
                )
            )
        return sorted(infos, key=lambda i: i.last_used)

    def evict(self) -> list[str]:
        """Apply the count/size limits, least recently used first; return the keys removed.

        Environments in use are never removed, even if the limits stay exceeded. Also removes
        builds left behind by crashed processes.
        """
        guard = FileLock(self.root / "evict.lock")
        if not guard.acquire(timeout=0):
            return []  # another thread or process is evicting right now
        removed: list[str] = []
        try:
            self._remove_orphans()
            infos = self.environments()
            count, total = len(infos), sum(i.size_bytes for i in infos)
            for info in infos:
                if not self._over_limits(count, total):
                    break
                if info.in_use or not self._remove(info.key):
                    continue
                removed.append(info.key)
                count, total = count - 1, total - info.size_bytes
                LOGGER.info("evicted environment %s (%d bytes)", info.key, info.size_bytes)
        finally:
            guard.release()
        return removed

    # -- leases and locks ---------------------------------------------------------------------

    def _state(self, key: str, suffix: str) -> Path:
        return self.root / "state" / f"{key}.{suffix}"

    def _published(self, key: str) -> Path | None:
        link = self.root / "envs" / key
        if not link.is_symlink():
            return None
        target = link.resolve()
        return target if (target / "bin" / "python").exists() else None

    def _lease(self, key: str, started: float, built: bool) -> EnvironmentLease | None:
        if self._published(key) is None:
            return None
        lock = FileLock(self._state(key, "lease"), shared=True)
        # An evictor holds the lease lock exclusively only for a moment.
        if not lock.acquire(timeout=max(self.build_timeout, 1.0)):
            return None
        path = self._published(key)  # it may have been evicted while we waited
        if path is None:
            lock.release()
            return None
        touch(lock.path)
        return EnvironmentLease(key, path, lock, built, time.monotonic() - started)

    def _wait_for(
        self, lock: FileLock, key: str, deadline: float, cancel: threading.Event | None
    ) -> None:
        outcome = wait_for_lock(lock, deadline, cancel)
        if outcome == "cancelled":
            raise EnvironmentCancelled(f"cancelled while waiting for environment {key}")
        if outcome == "timeout":
            raise EnvironmentTimeout(
                f"timed out after {self.build_timeout:g} s waiting for another build of "
                f"environment {key}"
            )

    def _raise_recent_failure(self, key: str, requested: float) -> None:
        """Fail like the build we waited for, rather than repeat it at once."""
        try:
            record = json.loads(self._state(key, "failed").read_text())
        except (OSError, ValueError):
            return
        if record.get("time", 0) >= requested:
            raise EnvironmentBuildFailed(record["message"], record.get("output", ()))

    # -- building -----------------------------------------------------------------------------

    def _build(self, key: str, spec: DependencySpec, run: _Run) -> None:
        """Build ``key`` in a fresh folder and publish it; on any failure delete everything."""
        for sub in ("envs", "builds", "state"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        link = self.root / "envs" / key
        if link.is_symlink():  # published but broken (deleted by hand?): rebuild
            link.unlink()
        self._remove_builds(key)
        build = self.root / "builds" / f"{key}.{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        try:
            if self.uv:
                run.env.update(
                    UV_CACHE_DIR=str(self.root / "uv-cache"),
                    UV_PYTHON_DOWNLOADS="never",
                    UV_NO_PROGRESS="1",
                )
                venv = [self.uv, "venv", "--no-project", "--python", self.python]
                run.step("venv", [*venv, *self.virtualenv_options, str(build)], None)
            else:
                venv = [sys.executable, "-m", "virtualenv", "--no-periodic-update", "--app-data"]
                venv += [str(self.root / "app-data"), "--python", self.python]
                run.step("venv", [*venv, *self.virtualenv_options, str(build)], None)
            if not spec.is_empty:
                requirements = build / "oet-requirements.txt"
                requirements.write_text("\n".join([*spec.options, *spec.requirements]) + "\n")
                python = str(build / "bin" / "python")
                if self.uv:
                    options, env = self._uv_options
                    run.env.update(env)
                    install = [self.uv, "pip", "install", "--python", python, *options]
                else:
                    install = [python, "-m", "pip", "install", *self.pip_options]
                run.step("install", [*install, "-r", str(requirements)], spec.base_dir)
            if self.inherit:
                self._inherit(build)
            seconds = time.monotonic() - started
            metadata = {
                "key": key,
                "spec": spec.describe(),
                "requirements": spec.text,
                "python": self.python,
                "pip_options": list(self.pip_options),
                "installer": self.installer,
                "inherit": self.inherit,
                "created": time.time(),
                "build_seconds": round(seconds, 3),
                "size_bytes": tree_size(build),
            }
            _atomic_write(self._state(key, "json"), json.dumps(metadata, indent=1))
            tmp_link = link.with_name(f".{key}.{uuid.uuid4().hex[:8]}")
            os.symlink(os.path.relpath(build, link.parent), tmp_link)
            os.replace(tmp_link, link)  # the moment the environment becomes visible
        except BaseException as exc:
            shutil.rmtree(build, ignore_errors=True)
            if isinstance(exc, EnvironmentBuildFailed):
                record = {"time": time.time(), "message": str(exc), "output": exc.output}
                _atomic_write(self._state(key, "failed"), json.dumps(record))
            raise
        self._state(key, "failed").unlink(missing_ok=True)
        LOGGER.info(
            "built environment %s for %s with %s in %.1f s",
            key, spec.describe(), self.installer, seconds,
        )  # fmt: skip

    def _inherit(self, build: Path) -> None:
        """Make the OET's packages visible behind the environment's own (a ``.pth`` file)."""
        _tag, _interpreter, inherited = self._interpreter_identity()
        for site_dir in build.glob("lib/*/site-packages"):
            (site_dir / INHERIT_PTH).write_text("".join(f"{d}\n" for d in inherited))

    # -- eviction -----------------------------------------------------------------------------

    def _over_limits(self, count: int, total: int) -> bool:
        return (self.max_count is not None and count > self.max_count) or (
            self.max_total_bytes is not None and total > self.max_total_bytes
        )

    def _remove(self, key: str) -> bool:
        """Remove one environment if nobody builds or uses it; True when removed."""
        build_lock = FileLock(self._state(key, "lock"))
        if not build_lock.acquire(timeout=0):
            return False
        lease_lock = FileLock(self._state(key, "lease"))
        try:
            if not lease_lock.acquire(timeout=0):
                return False
            (self.root / "envs" / key).unlink(missing_ok=True)  # unpublish first
            self._remove_builds(key)
            for suffix in ("json", "failed"):
                self._state(key, suffix).unlink(missing_ok=True)
            lease_lock.unlink()
            build_lock.unlink()
            return True
        finally:
            lease_lock.release()
            build_lock.release()

    def _remove_builds(self, key: str) -> None:
        """Delete builds of ``key`` that are not published (caller holds the build lock)."""
        link = self.root / "envs" / key
        published = link.resolve() if link.is_symlink() else None
        builds = self.root / "builds"
        for build in builds.glob(f"{key}.*") if builds.is_dir() else ():
            if build.resolve() != published:
                shutil.rmtree(build, ignore_errors=True)

    def _remove_orphans(self) -> None:
        builds = self.root / "builds"
        keys = {b.name.rsplit(".", 1)[0] for b in builds.iterdir()} if builds.is_dir() else set()
        for key in keys:
            lock = FileLock(self._state(key, "lock"))
            if lock.acquire(timeout=0):  # a build in progress holds it: leave that one alone
                try:
                    self._remove_builds(key)
                finally:
                    lock.release()

    def _metadata(self, key: str) -> dict:
        try:
            return json.loads(self._state(key, "json").read_text())
        except (OSError, ValueError):
            return {}

    def _interpreter_identity(self) -> tuple[str, str, tuple[str, ...]]:
        """(``py3.11``-style tag, tag plus the real path of the base interpreter, the
        interpreter's site-packages folders), asked once."""
        if self._identity is None:
            code = (
                "import json,platform,sys;print(json.dumps([platform.python_implementation(),"
                "*sys.version_info[:2],[p for p in sys.path if p.endswith(('site-packages',"
                "'dist-packages'))]]))"
            )
            try:
                out = subprocess.run([self.python, "-c", code], capture_output=True, timeout=60)
                impl, major, minor, sites = json.loads(out.stdout.decode())
            except (OSError, ValueError, subprocess.SubprocessError):
                raise EnvironmentFailure(f"cannot run Python interpreter {self.python}") from None
            tag = f"{'py' if impl == 'CPython' else impl.lower()}{major}.{minor}"
            inherited = [os.path.realpath(p) for p in sites if os.path.isdir(p)]
            # The helper module scripts import (ska_oso_oet.script) lives with this package,
            # which an editable install keeps outside site-packages.
            ours = str(Path(__file__).resolve().parents[2])
            if os.path.realpath(self.python) == os.path.realpath(sys.executable):
                inherited.append(ours)
            self._identity = (
                tag,
                f"{tag}:{os.path.realpath(self.python)}",
                tuple(dict.fromkeys(inherited)),
            )
        return self._identity


@dataclass
class _Run:
    """One build's context: runs its steps with streamed output, a deadline and cancel."""

    key: str
    timeout: float
    deadline: float
    on_progress: ProgressCallback | None
    cancel: threading.Event | None
    env: dict[str, str] = field(default_factory=lambda: _subprocess_env())

    def step(self, what: str, argv: list[str], cwd: Path | None) -> None:
        """Run one step; its process group is killed on timeout or cancel."""
        _emit(self.on_progress, Progress(what, "$ " + " ".join(argv)))
        where = f"building environment {self.key}"
        try:
            done = run_command(
                argv,
                deadline=self.deadline,
                cancel=self.cancel,
                cwd=cwd,
                env=self.env,
                on_line=lambda line: _emit(self.on_progress, Progress(what, line)),
            )
        except OSError as exc:  # the installer's binary is missing or not executable
            raise EnvironmentBuildFailed(f"{what} could not start {where}: {exc}") from None
        if done.stopped == "cancelled":
            raise EnvironmentCancelled(f"{what} cancelled while {where}")
        if done.stopped:
            raise EnvironmentTimeout(f"{what} timed out after {self.timeout:g} s {where}")
        if done.status != 0:
            tail = done.tail
            errors = [
                ln
                for ln in tail
                if re.match(r"^\s*(ERROR|error|fatal|RuntimeError|cause:|\u00d7|help:)", ln)
            ]
            shown = "\n".join(errors or tail[-15:])
            raise EnvironmentBuildFailed(
                f"{what} failed (exit status {done.status}) {where}:\n{shown}", tail
            )
        _emit(self.on_progress, Progress(what, f"{what} took {done.seconds:.2f} s", done.seconds))


def _resolve_interpreter(python: str | Path | None) -> str:
    if python is None:
        return sys.executable
    found = shutil.which(str(python))
    if found is None:
        raise ValueError(f"Python interpreter {python!r} not found")
    return found


def _subprocess_env() -> dict[str, str]:
    """The build's environment: ours, minus what would leak our venv into theirs."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "CONDA_PREFIX")
    }
    env.update(
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        PIP_PROGRESS_BAR="off",
        PYTHONUNBUFFERED="1",
    )
    return env


def _emit(on_progress: ProgressCallback | None, progress: Progress) -> None:
    if on_progress is None:
        return
    try:
        on_progress(progress)
    except Exception:  # a broken listener must not break the build
        LOGGER.exception("environment output callback failed")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)
