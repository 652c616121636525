"""Git clone cache: the source tree of a ``git://`` script at one exact commit.

A :class:`GitCache` turns :class:`~ska_oso_oet.procedure.domain.GitArgs` into a
:class:`Checkout`: a read-only-by-convention tree of the repository at one commit, plus the full
SHA actually used (which the engine records in the procedure summary). Branch names (and tags)
are resolved to a commit with ``git ls-remote``, which costs one round trip and no download, so
preparing a commit that is already in the cache touches the network once (or never, for a full
SHA).

Layout under ``cache_dir`` (one folder per repository URL)::

    <slug>-<hash>/
        store.git/          bare object store; fetches accumulate here (shallow where possible)
        checkouts/<sha>/    plain trees (no .git), one per commit, published by an atomic rename
        tmp/                trees being written (emptied whenever the lock is taken)
        lock                file lock serialising fetches and checkouts of this repository

Concurrency: any number of threads and processes (one device server may host several devices,
and a host may run several servers) can share one ``cache_dir``. Fetches and checkouts of a
repository run under an exclusive :class:`FileLock` (``flock``, which also works between threads
because each holder opens its own file description). A checkout becomes visible only by the
rename of its finished folder, so readers never need the lock and never see a partial tree.

Only the commit needed is fetched: ``git fetch --depth=1 <url> <sha>`` when the server allows
fetching by SHA (protocol v2 servers, local repositories), else the branch tip, else (for an
abbreviated SHA or an old commit) the full history of branches and tags.

Repositories must match an allow-list of URL patterns (``fnmatch`` style, ``*`` also matches
``/``); anything else raises :class:`RepositoryNotAllowed` before any network access.

Cancellation: :meth:`GitCache.checkout` takes a ``cancel`` event; setting it (a stop, or the
engine shutting down) kills the git command in progress, process group and all, within
:data:`~.runner.CANCEL_POLL` seconds, stops any wait for another preparation's lock, and
raises :class:`GitCancelled`. Nothing half-written stays behind (trees appear by rename only).
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from .domain import GitArgs, GitScript
from .errors import InvalidRequest, OetError
from .filelock import FileLock, touch, tree_size
from .runner import run_command, wait_for_lock

LOGGER = logging.getLogger(__name__)

#: Used when the operator configures nothing: SKA's own script repositories only.
DEFAULT_ALLOWED_REPOSITORIES: tuple[str, ...] = (
    "https://gitlab.com/ska-telescope/*",
    "https://github.com/ska-telescope/*",
)
DEFAULT_GIT_TIMEOUT = 120.0
#: Checkouts (one tree per commit) kept; least recently used evicted first, never one in use.
DEFAULT_MAX_CHECKOUTS = 50

_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
_SHORT_SHA = re.compile(r"^[0-9a-f]{7,40}$")


class GitError(OetError):
    """A git script's source could not be prepared; the message says why, for users."""

    code = "OET_GIT_ERROR"


class RepositoryNotAllowed(GitError, InvalidRequest):
    """The repository URL matches none of the configured patterns (a bad request)."""

    code = InvalidRequest.code


class RepositoryUnreachable(GitError):
    """The repository does not exist, or the network or credentials keep git out."""


class UnknownRevision(GitError):
    """The branch, tag or commit does not exist in the repository."""


class ScriptNotFound(GitError):
    """The script path is not a file in the checked-out commit."""


class GitTimeout(GitError):
    """Cloning or fetching took longer than the configured timeout."""


class GitCancelled(GitError):
    """The caller cancelled the checkout (the procedure was stopped, the engine shut down)."""


# --------------------------------------------------------------------------------------------
# Repository URLs
#
# The allow-list is only as good as the comparison: a URL is parsed, brought to one canonical
# form and refused outright when it holds anything whose meaning differs between this check
# and git/curl (dot segments, double encoding, user-info, queries). The canonical form is what
# git is then given, so what was checked is exactly what is fetched.

#: Schemes git may be given (``ext::``, ``fd::`` and other transports are refused).
_SCHEMES = {"https", "http", "ssh", "git", "file"}
_DEFAULT_PORTS = {"https": 443, "http": 80, "ssh": 22, "git": 9418}
#: scp-like ``user@host:path`` (git's ssh shorthand); the path must not start with ``/``-less
#: oddities such as ``//`` that git could read differently.
_SCP_LIKE = re.compile(r"^(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>.*)$")
_SSH_USER = re.compile(r"^[A-Za-z0-9._-]+$")
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
#: Characters left unescaped in a canonical URL path (RFC 3986 pchar minus ``%``).
_PATH_SAFE = "/-._~!$&'()*+,;=:@"
#: How much of a refused value error messages quote.
_QUOTE_PREFIX = 120


def _shown(value: str) -> str:
    """``value`` for an error message: quoted, and cut to a short prefix."""
    short = value if len(value) <= _QUOTE_PREFIX else value[:_QUOTE_PREFIX] + "..."
    return repr(short)


def normalise_repo_url(repo: str) -> str:
    """The canonical form of a repository location, used for the allow-list, the cache keys
    and as the URL git is given.

    * absolute paths become ``file://`` URLs; relative paths are refused;
    * scheme and host are lower-cased, a default port is dropped, percent-encoding is decoded
      once and re-applied canonically, empty and ``.`` path segments go, as do trailing
      slashes;
    * refused: ``..`` segments (raw or percent-encoded), double encoding, user-info other than
      a plain ssh user name, queries and fragments, control characters and whitespace,
      schemes other than https, http, ssh, git and file, and values git could read as options.
    """
    value = (repo or "").strip()
    if not value:
        raise InvalidRequest("git_repo must not be empty")
    if value.startswith("-") or any(ch.isspace() or ord(ch) < 32 or ch == "\x7f" for ch in value):
        raise InvalidRequest(f"git_repo {_shown(repo)} is not a repository URL")
    if value.startswith("/"):
        value = "file://" + value
    if "://" not in value:
        scp = _SCP_LIKE.match(value)
        if scp is None or "::" in value:
            raise InvalidRequest(
                f"git_repo {_shown(repo)} is neither a URL nor an absolute path "
                "(relative paths are refused)"
            )
        host = _canonical_host(scp.group("host"), repo)
        path = _canonical_path(scp.group("path"), repo, leading_slash=False)
        user = scp.group("user")
        return f"{user + '@' if user else ''}{host}:{path}"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"git_repo {_shown(repo)} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise InvalidRequest(
            f"git_repo {_shown(repo)}: scheme {scheme!r} is not accepted "
            f"(use one of {', '.join(sorted(_SCHEMES))})"
        )
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise InvalidRequest(f"git_repo {_shown(repo)}: queries and fragments are refused")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidRequest(f"git_repo {_shown(repo)}: file:// URLs name no host")
        if "%" in parts.path:
            raise InvalidRequest(
                f"git_repo {_shown(repo)}: percent-encoding is refused in file:// URLs"
            )
        return "file://" + _canonical_path(parts.path, repo, leading_slash=True, encoded=False)
    if "@" in parts.netloc:
        user = parts.username or ""
        if scheme != "ssh" or parts.password is not None or not _SSH_USER.match(user):
            raise InvalidRequest(
                f"git_repo {_shown(repo)}: user names and passwords in URLs are refused "
                "(only a plain user name, for ssh)"
            )
    host = _canonical_host(parts.hostname or "", repo)
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{parts.username}@{host}" if parts.username else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    return f"{scheme}://{netloc}{_canonical_path(parts.path, repo, leading_slash=True)}"


def _canonical_host(host: str, repo: str) -> str:
    host = host.lower().rstrip(".")
    if not host or not (_HOST.match(host) or _is_ip_literal(host)):
        raise InvalidRequest(f"git_repo {_shown(repo)}: {host!r} is not a host name")
    return host


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _canonical_path(path: str, repo: str, leading_slash: bool, encoded: bool = True) -> str:
    """Decode once, refuse ``..`` and double encoding, drop ``.`` and empty segments, re-encode."""
    try:
        decoded = unquote(path, errors="strict") if encoded else path
    except UnicodeDecodeError:
        raise InvalidRequest(f"git_repo {_shown(repo)}: the path is not UTF-8") from None
    if encoded and "%" in decoded:
        raise InvalidRequest(f"git_repo {_shown(repo)}: double percent-encoding is refused")
    if any(ord(ch) < 32 or ch in "\\\x7f" for ch in decoded):
        raise InvalidRequest(f"git_repo {_shown(repo)}: the path holds forbidden characters")
    segments = decoded.split("/")
    if ".." in segments:
        raise InvalidRequest(f"git_repo {_shown(repo)}: '..' path segments are refused")
    kept = [s for s in segments if s not in ("", ".")]
    if not kept:
        raise InvalidRequest(f"git_repo {_shown(repo)} names no repository path")
    # scp-like paths ("host:x") stay relative: git reads them from the user's home folder
    joined = "/" + "/".join(kept) if leading_slash else "/".join(kept)
    return quote(joined, safe=_PATH_SAFE) if encoded else joined


def _normalise_pattern(pattern: str) -> str:
    """An allow-list pattern in the canonical form of :func:`normalise_repo_url`: scheme and
    host lower-cased, default port and trailing slash dropped, absolute paths as ``file://``.
    The wildcards (``*``, ``?``, ``[...]``) are kept as written."""
    pattern = pattern.strip()
    if pattern in ("", "*"):
        return pattern
    if pattern.startswith("/"):
        pattern = "file://" + pattern
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/]*)(.*)$", pattern)
    if match:
        scheme, netloc, rest = match.group(1).lower(), match.group(2), match.group(3)
        user, at, hostport = netloc.rpartition("@")
        host, colon, port = hostport.partition(":")
        if colon and port == str(_DEFAULT_PORTS.get(scheme, "")):
            colon = port = ""
        netloc = f"{user}{at}{host.lower()}{colon}{port}"
        pattern = f"{scheme}://{netloc}{re.sub('/{2,}', '/', rest)}"
    return pattern.rstrip("/")


def _repo_dir_name(url: str) -> str:
    tail = [p for p in re.split(r"[/:]", url) if p][-2:]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(tail)).strip("._-")[:60] or "repo"
    return f"{slug}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


# --------------------------------------------------------------------------------------------
# The cache


@dataclass(frozen=True)
class Checkout:
    """One repository at one commit, ready to run a script from."""

    #: Normalised repository URL.
    repo: str
    #: Full SHA of the commit checked out (record this as the commit actually used).
    commit: str
    #: Root of the checked-out tree (a plain folder, no ``.git``).
    path: Path
    #: Branch or tag the commit was resolved from; None when a commit was requested.
    branch: str | None = None
    #: Absolute path of the requested script inside :attr:`path`, when one was requested.
    script: Path | None = None
    #: True when the tree came from the cache without fetching or writing anything.
    reused: bool = False
    #: Shared lease keeping the tree from eviction (``checkout(hold=True)``); see
    #: :meth:`release`.
    lease: FileLock | None = field(default=None, compare=False, repr=False)

    def release(self) -> None:
        """Let the tree be evicted again (the procedure using it has ended)."""
        if self.lease is not None:
            self.lease.release()


class GitCache:
    """Clone/fetch/checkout cache shared by every device (thread or process) on a host.

    :param cache_dir: root folder of the cache (created when missing)
    :param allowed_repos: URL patterns (``fnmatch``; absolute paths count as ``file://``
        URLs); a repository matching none is refused
    :param timeout: seconds one :meth:`checkout` may spend on git commands and on waiting for
        another thread or process working on the same repository
    :param shallow: fetch single commits with ``--depth=1`` where the server allows it
    """

    def __init__(
        self,
        cache_dir: Path,
        allowed_repos: Iterable[str] = DEFAULT_ALLOWED_REPOSITORIES,
        timeout: float = DEFAULT_GIT_TIMEOUT,
        shallow: bool = True,
        max_checkouts: int | None = DEFAULT_MAX_CHECKOUTS,
        max_bytes: int | None = None,
    ):
        if timeout <= 0:
            raise ValueError("git timeout must be positive")
        self.max_checkouts = max_checkouts
        self.max_bytes = max_bytes
        self.cache_dir = Path(cache_dir)
        self.allowed_repos = tuple(_normalise_pattern(p) for p in allowed_repos if p.strip())
        self.timeout = timeout
        self.shallow = shallow
        self.executable = shutil.which("git") or "git"
        self._env = {"GIT_TERMINAL_PROMPT": "0", "GCM_INTERACTIVE": "never", "LC_ALL": "C"}
        if "GIT_SSH_COMMAND" not in os.environ:
            self._env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"

    # -- public API ---------------------------------------------------------------------------

    def check_allowed(self, repo: str) -> str:
        """Return the normalised URL of ``repo``, or raise :class:`RepositoryNotAllowed`.

        Cheap and offline: the engine can call it while validating a prepare request.
        """
        try:
            url = normalise_repo_url(repo)
        except InvalidRequest as exc:
            raise RepositoryNotAllowed(str(exc)) from None
        if not any(fnmatch.fnmatchcase(url, pattern) for pattern in self.allowed_repos):
            allowed = ", ".join(self.allowed_repos) or "(none configured)"
            raise RepositoryNotAllowed(
                f"repository {_shown(repo)} is not allowed; allowed repository patterns: {allowed}"
            )
        return url

    def checkout(
        self,
        git_args: GitArgs,
        script: str | None = None,
        cancel: threading.Event | None = None,
        hold: bool = False,
    ) -> Checkout:
        """Make the tree of ``git_args`` available and return where it is.

        ``git_commit`` (full or at least 7 hex digits) wins over ``git_branch``; with neither,
        the repository's default branch is used. When ``script`` (a path relative to the
        repository root) is given it must be a file in that commit. Setting ``cancel`` ends
        the work at once with :class:`GitCancelled`. With ``hold`` the tree is leased: it is
        never evicted until :meth:`Checkout.release` (call it when the procedure ends).

        :raises RepositoryNotAllowed, RepositoryUnreachable, UnknownRevision, ScriptNotFound,
            GitTimeout, GitCancelled: each with a message fit for the procedure's FAILED reason
        """
        url = self.check_allowed(git_args.git_repo)
        deadline = _Deadline(time.monotonic() + self.timeout, cancel)
        repo_dir = self.cache_dir / _repo_dir_name(url)
        branch: str | None = None
        commit = (git_args.git_commit or "").strip().lower() or None
        if commit is not None:
            if not _SHORT_SHA.match(commit):
                raise UnknownRevision(
                    f"git_commit {git_args.git_commit!r} is not a commit SHA "
                    "(expected 7 to 40 hexadecimal digits)"
                )
        else:
            branch = git_args.git_branch or self._default_branch(url, deadline)
            commit = self._resolve_ref(url, branch, deadline)
        if _FULL_SHA.match(commit):
            final = repo_dir / "checkouts" / commit
            if final.is_dir():
                # Leased first, then looked at again: an evictor may have taken it meanwhile.
                lease = self._lease(repo_dir, commit, deadline)
                if final.is_dir():
                    LOGGER.debug("git cache hit for %s at %s", url, commit)
                    return self._result(url, commit, final, branch, script, True, lease, hold)
                lease.release()
        lock = FileLock(repo_dir / "lock")
        (repo_dir).mkdir(parents=True, exist_ok=True)
        outcome = wait_for_lock(lock, deadline.at, cancel)
        if outcome == "cancelled":
            raise GitCancelled(f"cancelled while waiting for another preparation of {url}")
        if outcome == "timeout":
            raise GitTimeout(
                f"timed out after {self.timeout:g} s waiting for another preparation of {url}"
            )
        lease = None
        try:
            store = self._ensure_store(repo_dir, deadline)
            full = self._ensure_commit(store, url, commit, branch, deadline)
            final = repo_dir / "checkouts" / full
            lease = self._lease(repo_dir, full, deadline)  # before writing: never evicted new
            reused = final.is_dir()
            if not reused:
                self._materialise(store, repo_dir, full, final, deadline)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        finally:
            lock.release()
        if not reused:
            self.evict()
        return self._result(url, full, final, branch, script, reused, lease, hold)

    def checkout_script(
        self, script: GitScript, cancel: threading.Event | None = None, hold: bool = False
    ) -> Checkout:
        """:meth:`checkout` for a ``git://`` script specification."""
        return self.checkout(script.git_args, script.path, cancel, hold)

    def evict(self) -> list[Path]:
        """Delete least recently used checkouts until at most ``max_checkouts`` trees and
        ``max_bytes`` of them remain; a leased tree (in use by a procedure of any process)
        is never deleted. Returns the trees deleted. One process evicts at a time; the others
        skip it (the next checkout evicts again)."""
        if self.max_checkouts is None and self.max_bytes is None:
            return []
        guard = FileLock(self.cache_dir / "evict.lock")
        if not guard.acquire(timeout=0):
            return []
        try:
            return self._evict_unlocked()
        finally:
            guard.release()

    def _evict_unlocked(self) -> list[Path]:
        trees = []  # (last use, tree, lease file)
        for repo_dir in self.cache_dir.iterdir() if self.cache_dir.is_dir() else ():
            checkouts = repo_dir / "checkouts"
            for tree in checkouts.iterdir() if checkouts.is_dir() else ():
                lease = repo_dir / "leases" / tree.name
                try:
                    used = (lease if lease.exists() else tree).stat().st_mtime
                except FileNotFoundError:
                    continue
                trees.append((used, tree, lease))
        trees.sort(key=lambda t: t[0])
        count = len(trees)
        sizes = {tree: tree_size(tree) for _, tree, _ in trees} if self.max_bytes else {}
        total = sum(sizes.values())
        removed: list[Path] = []
        for _, tree, lease_path in trees:
            over_count = self.max_checkouts is not None and count > self.max_checkouts
            over_bytes = self.max_bytes is not None and total > self.max_bytes
            if not (over_count or over_bytes):
                break
            lock = FileLock(lease_path)
            if not lock.acquire(timeout=0):
                continue  # leased: in use
            try:
                trash = tree.parent.parent / "tmp" / f"evicted-{tree.name}-{os.getpid()}"
                trash.parent.mkdir(exist_ok=True)
                os.rename(tree, trash)
                shutil.rmtree(trash, ignore_errors=True)
                lock.unlink()
            except FileNotFoundError:
                continue
            finally:
                lock.release()
            count -= 1
            total -= sizes.get(tree, 0)
            removed.append(tree)
            LOGGER.info("evicted git checkout %s (least recently used)", tree)
        return removed

    def _lease(self, repo_dir: Path, commit: str, deadline: _Deadline) -> FileLock:
        """A shared lease on the checkout of ``commit``, its use time updated (for LRU)."""
        lease = FileLock(repo_dir / "leases" / commit, shared=True)
        if not lease.acquire(timeout=max(deadline.at - time.monotonic(), 0.0)):
            raise GitTimeout(f"timed out after {self.timeout:g} s waiting for an eviction")
        touch(lease.path)
        return lease

    def resolve(self, git_args: GitArgs) -> str:
        """The full SHA a branch (or the default branch) points at now; no download.

        A full ``git_commit`` is returned as is (whether it exists is checked by
        :meth:`checkout`).
        """
        url = self.check_allowed(git_args.git_repo)
        deadline = _Deadline(time.monotonic() + self.timeout, None)
        if git_args.git_commit and _FULL_SHA.match(git_args.git_commit.lower()):
            return git_args.git_commit.lower()
        if git_args.git_commit:
            return self.checkout(git_args).commit
        branch = git_args.git_branch or self._default_branch(url, deadline)
        return self._resolve_ref(url, branch, deadline)

    # -- git commands -------------------------------------------------------------------------

    def _git(
        self,
        *args: str,
        deadline: _Deadline,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        url: str = "",
    ) -> str:
        """Run one git command with what is left of the deadline; return its stdout.

        Raises :class:`GitTimeout` when killed by the deadline, :class:`GitCancelled` when
        cancelled and :class:`_GitFailed` (carrying git's stderr) when git fails.
        """
        where = url or "the cache"
        try:
            done = run_command(
                [self.executable, *args],
                deadline=deadline.at,
                cancel=deadline.cancel,
                cwd=cwd,
                env={**os.environ, **self._env, **(env or {})},
                capture=True,
            )
        except FileNotFoundError as exc:
            raise GitError(f"the git executable is not available: {exc}") from None
        if done.stopped == "cancelled":
            raise GitCancelled(f"git {args[0]} cancelled on {where}")
        if done.stopped == "timeout":
            raise GitTimeout(f"git timed out after {self.timeout:g} s on {where} (git {args[0]})")
        if done.status != 0:
            raise _GitFailed("\n".join(done.tail))
        return done.stdout.rstrip("\n")

    def _ls_remote(
        self, url: str, *patterns: str, deadline: _Deadline, options: tuple[str, ...] = ()
    ) -> list[tuple[str, str]]:
        try:
            out = self._git("ls-remote", *options, url, *patterns, deadline=deadline, url=url)
        except _GitFailed as exc:
            raise RepositoryUnreachable(f"cannot read repository {url}: {exc.brief}") from None
        rows = []
        for line in out.splitlines():
            left, _, right = line.partition("\t")
            rows.append((left.strip(), right.strip()))
        return rows

    def _default_branch(self, url: str, deadline: _Deadline) -> str:
        for left, right in self._ls_remote(url, "HEAD", options=("--symref",), deadline=deadline):
            if left.startswith("ref:") and right == "HEAD":
                return left.removeprefix("ref:").strip().removeprefix("refs/heads/")
        raise UnknownRevision(f"repository {url} has no default branch (is it empty?)")

    def _resolve_ref(self, url: str, branch: str, deadline: _Deadline) -> str:
        if branch.startswith("-") or branch.startswith("refs/"):
            raise UnknownRevision(f"git_branch {branch!r} is not a branch name")
        try:
            self._git("check-ref-format", "--branch", branch, deadline=deadline)
        except _GitFailed:
            raise UnknownRevision(f"git_branch {branch!r} is not a valid branch name") from None
        # Annotated tags: the peeled ``^{}`` entry names the commit, not the tag object.
        wanted = (f"refs/heads/{branch}", f"refs/tags/{branch}^{{}}", f"refs/tags/{branch}")
        rows = {ref: sha for sha, ref in self._ls_remote(url, *wanted, deadline=deadline)}
        for ref in wanted:
            if ref in rows:
                return rows[ref]
        heads = [
            r.removeprefix("refs/heads/")
            for _, r in self._ls_remote(url, options=("--heads",), deadline=deadline)
        ]
        shown = ", ".join(sorted(heads)[:20]) + (", ..." if len(heads) > 20 else "")
        raise UnknownRevision(
            f"branch {branch!r} not found in repository {url}; branches: {shown or '(none)'}"
        )

    # -- store and checkouts (called under the repository lock) ------------------------------

    def _ensure_store(self, repo_dir: Path, deadline: _Deadline) -> Path:
        store = repo_dir / "store.git"
        tmp_root = repo_dir / "tmp"
        # Leftovers of a crashed writer: nobody else writes here while we hold the lock.
        shutil.rmtree(tmp_root, ignore_errors=True)
        tmp_root.mkdir(parents=True, exist_ok=True)
        (repo_dir / "checkouts").mkdir(exist_ok=True)
        if (store / "HEAD").is_file() and (store / "objects").is_dir():
            return store
        shutil.rmtree(store, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix="store.", dir=tmp_root))
        self._git("init", "-q", "--bare", str(tmp), deadline=deadline)
        for key, value in (("gc.auto", "0"), ("maintenance.auto", "false")):
            self._git("config", key, value, cwd=tmp, deadline=deadline)
        os.rename(tmp, store)
        return store

    def _has_commit(self, store: Path, rev: str, deadline: _Deadline) -> str | None:
        """Full SHA of commit ``rev`` if the store has it; an ambiguous prefix raises."""
        try:
            out = self._git(
                "rev-parse", "--verify", f"{rev}^{{commit}}", cwd=store, deadline=deadline
            )
        except _GitFailed as exc:
            if "ambiguous" in exc.text:
                raise UnknownRevision(
                    f"commit {rev!r} is ambiguous; give more hexadecimal digits"
                ) from None
            return None
        return out.strip() or None

    def _fetch(self, store: Path, url: str, *refspecs: str, depth: int | None, deadline: _Deadline):
        args = ["fetch", "--quiet", "--no-tags"]
        if depth is not None:
            args.append(f"--depth={depth}")
        elif (store / "shallow").exists():
            args.append("--unshallow")
        self._git(*args, url, *refspecs, cwd=store, deadline=deadline, url=url)

    def _ensure_commit(
        self, store: Path, url: str, commit: str, branch: str | None, deadline: _Deadline
    ) -> str:
        """Fetch as little as possible so that ``commit`` is in the store; return its full SHA."""
        found = self._has_commit(store, commit, deadline)
        if found:
            return found
        attempts: list[tuple[tuple[str, ...], int | None]] = []
        if _FULL_SHA.match(commit) and self.shallow:
            attempts.append(((commit,), 1))
            if branch:
                attempts.append(((f"+refs/heads/{branch}:refs/oet/branches/{branch}",), 1))
        attempts.append((("+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"), None))
        for refspecs, depth in attempts:
            try:
                self._fetch(store, url, *refspecs, depth=depth, deadline=deadline)
            except _GitFailed as exc:
                # Servers refuse single commits in many wordings; only the final, plain fetch
                # of all branches tells whether the repository can be read at all.
                if depth is None:
                    raise RepositoryUnreachable(
                        f"cannot fetch from repository {url}: {exc.brief}"
                    ) from None
                continue
            found = self._has_commit(store, commit, deadline)
            if found:
                # A ref keeps the commit's objects safe from any garbage collection.
                self._git(
                    "update-ref", f"refs/oet/commits/{found}", found, cwd=store, deadline=deadline
                )
                return found
        raise UnknownRevision(f"commit {commit!r} not found in repository {url}")

    def _materialise(
        self, store: Path, repo_dir: Path, commit: str, final: Path, deadline: _Deadline
    ) -> None:
        """Write the tree of ``commit`` into a temporary folder, then rename it into place."""
        tmp = Path(tempfile.mkdtemp(prefix=f"{commit}.", dir=repo_dir / "tmp"))
        index = tmp.with_name(tmp.name + ".index")
        env = {"GIT_DIR": str(store), "GIT_INDEX_FILE": str(index), "GIT_WORK_TREE": str(tmp)}
        try:
            self._git("read-tree", commit, cwd=tmp, env=env, deadline=deadline)
            self._git("checkout-index", "--all", "--force", cwd=tmp, env=env, deadline=deadline)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            index.unlink(missing_ok=True)
        LOGGER.info("checked out %s at %s into %s", store.parent.name, commit, final)

    def _result(
        self,
        url: str,
        commit: str,
        root: Path,
        branch: str | None,
        script: str | None,
        reused: bool,
        lease: FileLock | None = None,
        hold: bool = False,
    ) -> Checkout:
        try:
            script_file = None if script is None else find_script(root, script, url, commit)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        if lease is not None and not hold:
            lease.release()
            lease = None
        return Checkout(url, commit, root, branch, script_file, reused, lease)


def find_script(root: Path, script: str, url: str = "", commit: str = "") -> Path:
    """The absolute path of ``script`` (relative to the repository root) inside ``root``.

    Refuses paths that leave the checkout (``..``, symbolic links pointing outside) and names
    near misses in the error so typos are quick to fix.
    """
    rel = script.removeprefix("git://").lstrip("/")
    where = f" in repository {url}" if url else ""
    at = f" at commit {commit[:12]}" if commit else ""
    base = root.resolve()
    candidate = (base / rel).resolve()
    if not rel or not candidate.is_relative_to(base):
        raise ScriptNotFound(f"script path {script!r} points outside the repository")
    if candidate.is_file():
        return candidate
    name = Path(rel).name
    near = sorted(str(p.relative_to(base)) for p in base.rglob(name) if p.is_file())[:5]
    hint = f"; files with that name: {', '.join(near)}" if near else ""
    raise ScriptNotFound(f"script {rel!r} not found{where}{at}{hint}")


class _GitFailed(Exception):
    """Internal: a git command exited non-zero (``text`` is its stderr)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    @property
    def brief(self) -> str:
        """git's own complaint in one line (the ``fatal:``/``error:`` lines, joined)."""
        lines = [ln.strip() for ln in self.text.splitlines() if ln.strip()]
        key = [ln for ln in lines if ln.startswith(("fatal:", "error:"))] or lines[:2]
        return " / ".join(key)[:500] or "git failed without a message"


@dataclass(frozen=True)
class _Deadline:
    """When one checkout's git work must end (``time.monotonic()``), and its cancel event."""

    at: float
    cancel: threading.Event | None
