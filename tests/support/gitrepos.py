"""Test helpers: local git repositories and a tiny installable package, built on the fly.

Everything here works without network, so tests of the git clone cache and the virtualenv
cache (and the service/device tests built on them later) can create realistic sources in a
``tmp_path``:

- :func:`make_repo` creates a repository with a default branch; :class:`LocalRepo` then adds
  commits, branches and tags, and gives its ``file://`` URL.
- :func:`build_wheel` writes a pure-Python wheel by hand (a wheel is a zip with metadata), so
  ``pip install --no-index --find-links <dir> <name>`` works offline without any build backend.

The helpers drive the ``git`` command line directly (not GitPython) so that they stay
independent of the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import subprocess
import threading
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: Fixed identity and dates so commits are reproducible and never read the user's git config.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "OET Test",
    "GIT_AUTHOR_EMAIL": "oet-test@example.invalid",
    "GIT_COMMITTER_NAME": "OET Test",
    "GIT_COMMITTER_EMAIL": "oet-test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}


def git(cwd: Path, *args: str) -> str:
    """Run ``git args...`` in ``cwd`` and return its stripped standard output."""
    env = {**os.environ, **_GIT_ENV}
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout.strip()


@dataclass
class LocalRepo:
    """A non-bare repository in a test folder, edited through commits."""

    path: Path

    @property
    def url(self) -> str:
        """The ``file://`` URL of the repository (what a user would pass as ``git_repo``)."""
        return self.path.resolve().as_uri()

    def commit(self, files: Mapping[str, str | bytes | None], message: str = "change") -> str:
        """Write (or, for None, delete) ``files`` relative to the root, commit them and
        return the new commit's full SHA."""
        for rel, content in files.items():
            target = self.path / rel
            if content is None:
                git(self.path, "rm", "-q", "--", rel)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
            git(self.path, "add", "--", rel)
        git(self.path, "commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self, ref: str = "HEAD") -> str:
        """Full SHA of ``ref`` (default: the checked-out commit)."""
        return git(self.path, "rev-parse", f"{ref}^{{commit}}")

    def branch(self, name: str, start: str = "HEAD") -> None:
        """Create branch ``name`` at ``start`` and switch to it."""
        git(self.path, "switch", "-q", "-c", name, start)

    def switch(self, name: str) -> None:
        """Switch the working copy to an existing branch."""
        git(self.path, "switch", "-q", name)

    def tag(self, name: str, ref: str = "HEAD", annotated: bool = True) -> None:
        """Tag ``ref``; annotated tags exercise peeling (``tag^{}``) in resolution."""
        if annotated:
            git(self.path, "tag", "-a", "-m", name, name, ref)
        else:
            git(self.path, "tag", name, ref)


def make_repo(path: Path, default_branch: str = "main") -> LocalRepo:
    """Create an empty repository at ``path`` whose default branch is ``default_branch``."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", default_branch)
    # Local identity too, for anyone running plain ``git commit`` in the folder.
    git(path, "config", "user.name", _GIT_ENV["GIT_AUTHOR_NAME"])
    git(path, "config", "user.email", _GIT_ENV["GIT_AUTHOR_EMAIL"])
    return LocalRepo(path)


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def build_wheel(
    dest: Path,
    name: str = "oettiny",
    version: str = "1.0",
    module_source: str | None = None,
    requires: tuple[str, ...] = (),
) -> Path:
    """Write a pure-Python wheel for package ``name`` into ``dest`` and return its path.

    The package holds one module, ``<name>/__init__.py``, with ``module_source`` (by default it
    defines ``VERSION`` and ``greet()``). ``requires`` become ``Requires-Dist`` lines, so
    dependency chains between test packages are possible. No build backend or network needed.
    """
    dest.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    if module_source is None:
        module_source = (
            f'VERSION = "{version}"\n\n\ndef greet(who: str) -> str:\n'
            f'    return f"hello {{who}} from {name} {version}"\n'
        )
    info = f"{dist}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    files = {
        f"{dist}/__init__.py": module_source.encode(),
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: oet-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        f"{info}/top_level.txt": f"{dist}\n".encode(),
    }
    record_lines = [f"{path},{_record_hash(data)},{len(data)}" for path, data in files.items()]
    record_lines.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record_lines) + "\n").encode()
    wheel = dest / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


#: A script for git repositories in tests: ``init`` records its arguments, ``main`` returns a
#: greeting, optionally from the tiny package when the environment has it.
SCRIPT_SOURCE = '''\
"""Test script living in a git repository."""

def init(*args, **kwargs):
    global INIT_ARGS
    INIT_ARGS = (args, kwargs)


def main(*args, **kwargs):
    try:
        import oettiny
    except ImportError:
        return "no oettiny"
    return oettiny.greet("script")
'''


def make_script_repo(path: Path, requirements: str | None = "oettiny==1.0\n") -> LocalRepo:
    """A repository with ``scripts/hello.py`` and (unless None) a ``requirements.txt``,
    committed on ``main``: the usual starting point for git-script tests."""
    repo = make_repo(path)
    files: dict[str, str | bytes | None] = {"scripts/hello.py": SCRIPT_SOURCE}
    if requirements is not None:
        files["requirements.txt"] = requirements
    repo.commit(files, "initial script")
    return repo


# --------------------------------------------------------------------------------------------
# Repositories built the way SKA's script repositories are: Python projects whose scripts
# import the project's own package. ``dep`` is the file:// URL (or path) of a dependency
# wheel made with :func:`build_wheel` (package ``oetdep``).

#: ``scripts/observe.py``: imports the project's package and the dependency at load time (so
#: a prepared procedure holds its commit's code), prints what it sees when run.
OBSERVE_SCRIPT = """\
import os
import sys

import obsproj
import oetdep


def main(*args, **kwargs):
    print(f"code={obsproj.CODE} dep={oetdep.VERSION} cwd={os.getcwd()}")
    print(f"obsproj from {obsproj.__file__}")
    try:
        import pubsub  # noqa: F401
        print("pubsub visible")
    except ImportError:
        print("pubsub missing")
"""


def _package(code: str, where: str = "src/obsproj") -> dict[str, str | bytes | None]:
    return {f"{where}/__init__.py": f'CODE = "{code}"\n', "scripts/observe.py": OBSERVE_SCRIPT}


def pep621_files(dep: str, code: str = "v1", layout: str = "src") -> dict[str, str | bytes | None]:
    """A PEP 621 project (``src`` or ``flat`` layout) depending on the wheel at ``dep``."""
    pyproject = (
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "obsproj"\nversion = "0.1.0"\ndependencies = ["oetdep @ {dep}"]\n'
    )
    where = "src/obsproj" if layout == "src" else "obsproj"
    return {"pyproject.toml": pyproject, **_package(code, where)}


def poetry_files(dep_path: str, code: str = "v1") -> dict[str, str | bytes | None]:
    """A Poetry project: the wheel as a path dependency, a library inside the repository as
    a ``develop`` path dependency, and a dev group that must not be installed."""
    pyproject = f'''\
[tool.poetry]
name = "obsproj"
version = "0.1.0"
description = "observing scripts"
authors = ["OET Test <oet-test@example.invalid>"]
packages = [{{include = "obsproj", from = "src"}}]

[tool.poetry.dependencies]
python = "^3.10"
oetdep = {{path = "{dep_path}"}}
helper = {{path = "libs/helper", develop = true}}

[tool.poetry.group.dev.dependencies]
nosuchpackage-for-tests = "^1.0"

[build-system]
requires = ["poetry-core>=2.0"]
build-backend = "poetry.core.masonry.api"
'''
    helper = (
        '[tool.poetry]\nname = "helper"\nversion = "0.1.0"\ndescription = ""\n'
        'authors = ["x <x@example.invalid>"]\n\n[tool.poetry.dependencies]\npython = "^3.10"\n'
    )
    return {
        "pyproject.toml": pyproject,
        "libs/helper/pyproject.toml": helper,
        "libs/helper/helper/__init__.py": 'NAME = "helper from the repository"\n',
        **_package(code),
    }


def editable_requirements_files(dep: str, code: str = "v1") -> dict[str, str | bytes | None]:
    """A flat project whose ``requirements.txt`` says ``-e .`` next to the dependency."""
    return {
        "requirements.txt": f"-e .\noetdep @ {dep}\n",
        "setup.py": "from setuptools import setup\nsetup(name='obsproj', packages=['obsproj'])\n",
        **_package(code, "obsproj"),
    }


def hanging_server() -> tuple[socket.socket, list[socket.socket], threading.Event]:
    """A TCP server that accepts connections and never answers (a stuck git server or package
    index). Close it with :func:`close_hanging_server`."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return server, held, stop


def close_hanging_server(
    server: socket.socket, held: list[socket.socket], stop: threading.Event
) -> None:
    stop.set()
    server.close()
    for conn in held:
        conn.close()


def hanging_build_project(dest: Path) -> Path:
    """A source project whose in-tree build backend never finishes: installing it keeps an
    environment build busy, offline (``requires = []``: build isolation fetches nothing)."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "hang_backend"\nbackend-path = ["."]\n\n'
        '[project]\nname = "hangpkg"\nversion = "1.0"\n'
    )
    (dest / "hang_backend.py").write_text(
        "import threading\n\n\ndef _forever(*args, **kwargs):\n"
        "    threading.Event().wait()\n\n\nget_requires_for_build_wheel = _forever\n"
        "prepare_metadata_for_build_wheel = _forever\nbuild_wheel = _forever\n"
        "build_sdist = _forever\nget_requires_for_build_sdist = _forever\n"
    )
    return dest
