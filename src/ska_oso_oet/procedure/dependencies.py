"""Dependency specifications: what a repository asks to have installed for its scripts.

:func:`read_dependency_spec` reads a checkout into a :class:`DependencySpec` that keeps two
things apart:

- the **dependencies** (third-party packages, and paths or URLs outside the checkout): they go
  into the shared environment, whose key is a hash of their canonical text, so formatting,
  comments and ordering do not force a rebuild while any real change does;
- the repository's **own code** (the project itself, ``-e .``, ``./libs/x``, Poetry path
  dependencies inside the repository): never installed, but given as :attr:`local_paths`,
  import roots inside the checkout of the procedure's exact commit, which the engine puts in
  front of the environment for that procedure only. Two commits with the same dependencies
  share one environment and each still imports its own code.

Layouts: PEP 621 ``[project]`` (src/ and flat), Poetry (read with ``poetry-core``: main group
plus requested groups and extras, path, git and URL dependencies), ``requirements.txt``, and no
declaration at all.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement

from .errors import OetError


class EnvironmentFailure(OetError):
    """A script's virtual environment could not be provided; the message says why."""

    code = "OET_ENVIRONMENT_ERROR"


class DependencySpecError(EnvironmentFailure):
    """The repository's dependency declaration cannot be read or is not supported."""


@dataclass(frozen=True)
class DependencySpec:
    """What a checkout needs: shared dependencies, and its own code by import root.

    ``text`` is the canonical text hashed into the environment key: the sorted requirement
    lines plus any installer options (``--find-links`` ...) of a requirements file. Paths in
    it are as written (relative to the repository), so every commit hashes alike.
    ``requirements`` are the lines handed to the installer, with relative paths made absolute.
    """

    #: "pyproject", "poetry", "requirements" or "none".
    kind: str
    text: str
    requirements: tuple[str, ...] = ()
    source: Path | None = None
    #: Root of the checkout the spec was read from.
    base_dir: Path | None = None
    #: Installer options from a requirements file (``--find-links``, ``--index-url``, ...).
    options: tuple[str, ...] = ()
    #: Import roots inside the checkout (the project's ``src`` or its root, local packages):
    #: put in front of the environment of this procedure only, never installed.
    local_paths: tuple[Path, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.text.strip()

    def describe(self) -> str:
        return f"{self.source.name} ({self.kind})" if self.source else "no dependencies"


def read_dependency_spec(
    root: Path, groups: Sequence[str] = (), extras: Sequence[str] = ()
) -> DependencySpec:
    """The dependency specification of the checkout at ``root``.

    Order: ``pyproject.toml`` with ``[project].dependencies`` (setuptools' dynamic
    ``dependencies = {file = ...}`` is read too), then Poetry (``[tool.poetry]``), then
    ``requirements.txt``; with none of them there are no dependencies. ``groups`` names the
    Poetry groups installed besides ``main``; ``extras`` the project's extras to install.

    :raises DependencySpecError: naming the file and the entry that cannot be used
    """
    root = Path(root).resolve()
    reader = _Reader(root, tuple(groups), tuple(extras))
    kind, source = reader.read_root()
    return DependencySpec(
        kind,
        reader.canonical_text(),
        tuple(sorted(set(reader.install))),
        source,
        root,
        tuple(reader.options),
        tuple(dict.fromkeys(reader.local)),
    )


def requirements_spec(text: str, base_dir: Path | None = None) -> DependencySpec:
    """A specification from requirement lines given directly (tests, ad-hoc environments)."""
    lines = tuple(sorted({ln for ln in (_clean(line) for line in text.splitlines()) if ln}))
    return DependencySpec("requirements", "\n".join(lines), lines, None, base_dir)


def import_roots(project: Path) -> list[Path]:
    """Where the packages of the project at ``project`` are imported from, without installing.

    Honours the declared layout where there is one (Poetry ``packages``/``from``,
    setuptools ``package-dir`` and ``packages.find.where``, hatch wheel ``packages``); else a
    ``src/`` folder holding Python code (src layout), else the project folder (flat layout).
    """
    project = Path(project)
    data = _load_toml(project / "pyproject.toml", strict=False)
    tool = data.get("tool") or {}
    found: list[Path] = []
    for entry in (tool.get("poetry") or {}).get("packages") or ():
        if isinstance(entry, dict) and "include" in entry:
            found.append(project / str(entry.get("from", "")))
    setuptools = tool.get("setuptools") or {}
    package_dir = setuptools.get("package-dir") or {}
    if isinstance(package_dir, dict) and isinstance(package_dir.get(""), str):
        found.append(project / package_dir[""])
    packages = setuptools.get("packages")
    if isinstance(packages, dict):
        where = (packages.get("find") or {}).get("where") or ()
        found.extend(project / str(w) for w in where)
    hatch = ((tool.get("hatch") or {}).get("build") or {}).get("targets") or {}
    for rel in (hatch.get("wheel") or {}).get("packages") or ():
        found.append((project / str(rel)).parent)
    inside = [p.resolve() for p in found if p.resolve().is_relative_to(project.resolve())]
    if inside:
        return list(dict.fromkeys(inside))
    src = project / "src"
    if src.is_dir() and any(
        p.suffix == ".py" or (p / "__init__.py").exists() for p in src.iterdir()
    ):
        return [src.resolve()]
    return [project.resolve()]


# --------------------------------------------------------------------------------------------
# Reading


class _Reader:
    """Collects dependencies and local import roots, following local projects recursively."""

    def __init__(self, root: Path, groups: tuple[str, ...], extras: tuple[str, ...]):
        self.root = root
        self.groups = groups
        self.extras = extras
        #: canonical (hashed) form -> install form
        self.hashed: set[str] = set()
        self.install: list[str] = []
        self.options: list[str] = []
        self.hashed_options: list[str] = []
        self.local: list[Path] = []
        self._projects_seen: set[Path] = set()

    def canonical_text(self) -> str:
        return "\n".join([*self.hashed_options, *sorted(self.hashed)])

    def read_root(self) -> tuple[str, Path | None]:
        pyproject = self.root / "pyproject.toml"
        requirements = self.root / "requirements.txt"
        kind = self.read_project(self.root, top=True) if pyproject.is_file() else None
        source: Path | None = pyproject
        if kind is None:
            self._projects_seen.add(self.root)
            kind, source = "none", None
            if requirements.is_file():
                self.read_requirements(requirements, set())
                kind, source = "requirements", requirements
        # The repository's own code, whatever declares (or does not declare) it.
        self.local.extend(import_roots(self.root))
        return kind, source

    # -- projects -----------------------------------------------------------------------------

    def read_project(self, project: Path, top: bool = False) -> str | None:
        self._projects_seen.add(project.resolve())
        return self._read_project(project, top)

    def _read_project(self, project: Path, top: bool) -> str | None:
        """Add the dependencies of the project at ``project`` and its import roots.

        Returns the kind read, or None when ``pyproject.toml`` declares no dependencies
        (only then may the top level fall back to ``requirements.txt``).
        """
        pyproject = project / "pyproject.toml"
        where = self.rel(pyproject)
        data = _load_toml(pyproject, strict=True, where=where)
        table = data.get("project")
        poetry = (data.get("tool") or {}).get("poetry")
        if table is not None and not isinstance(table, dict):
            raise DependencySpecError(f"{where}: [project] must be a table")
        if isinstance(poetry, dict) and (
            "dependencies" in poetry or "group" in poetry or table is None
        ):
            self.read_poetry(project, where)
            return "poetry"
        if table is None:
            if top:
                return None
            self.local.extend(import_roots(project))  # e.g. a setup.py project with a pyproject
            return "pyproject"
        dynamic = table.get("dynamic") or []
        declared = "dependencies" in table or "dependencies" in dynamic
        if top and not declared and (project / "requirements.txt").is_file():
            return None  # the project declares none here; its requirements.txt does
        if "dependencies" in dynamic:
            files = _setuptools_dynamic_files(data)
            if files is None:
                if top and (project / "requirements.txt").is_file():
                    return None
                raise DependencySpecError(
                    f"{where}: [project].dependencies are dynamic and OET cannot compute them; "
                    "list them in [project].dependencies or in a requirements.txt"
                )
            for rel in files:
                self.read_requirements(project / rel, set())
        deps = table.get("dependencies", [])
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise DependencySpecError(f"{where}: [project].dependencies must be a list of strings")
        optional = table.get("optional-dependencies") or {}
        for extra in self.extras if top else ():
            extra_deps = optional.get(extra)
            if extra_deps is None:
                raise DependencySpecError(
                    f"{where}: no extra {extra!r} in [project.optional-dependencies] "
                    f"(extras: {', '.join(sorted(optional)) or 'none'})"
                )
            deps = [*deps, *extra_deps]
        for dep in deps:
            self.add_requirement(dep, project, where)
        self.local.extend(import_roots(project))
        return "pyproject"

    def read_poetry(self, project: Path, where: str) -> None:
        try:
            from poetry.core.factory import Factory
        except ImportError:  # pragma: no cover - a dependency of the OET
            raise DependencySpecError(
                f"{where}: reading Poetry projects needs poetry-core"
            ) from None
        try:
            package = Factory().create_poetry(project).package
        except Exception as exc:  # poetry-core raises RuntimeError/ValueError and others
            message = " ".join(str(exc).split())
            raise DependencySpecError(f"{where}: invalid Poetry project: {message}") from None
        groups = ["main", *self.groups]
        known = package.dependency_group_names()
        dependencies = []
        for group in groups:
            if group == "main":
                dependencies.extend(package.requires)
            elif group in known:
                dependencies.extend(package.dependency_group(group).dependencies)
            else:
                raise DependencySpecError(
                    f"{where}: no Poetry dependency group {group!r} "
                    f"(groups: {', '.join(sorted(known))})"
                )
        extra_names = {e for extra in self.extras for e in package.extras.get(extra, ())}
        for extra in self.extras:
            if extra not in package.extras:
                raise DependencySpecError(f"{where}: no Poetry extra {extra!r}")
        for dependency in dependencies:
            if dependency.is_optional() and dependency.name not in {d.name for d in extra_names}:
                continue
            full_path = getattr(dependency, "full_path", None)
            if full_path is not None:  # a path dependency (directory or file)
                written = str(getattr(dependency, "path", full_path))
                self.add_path(Path(full_path), project, where, written, dependency.name)
                continue
            try:
                line = dependency.to_pep_508()
            except Exception as exc:  # pragma: no cover - poetry-core's own limits
                raise DependencySpecError(
                    f"{where}: Poetry dependency {dependency.name!r} cannot be used: {exc}"
                ) from None
            line = re.sub(r'\s*;\s*extra == "[^"]*"', "", line)
            try:
                Requirement(line)
            except InvalidRequirement:
                raise DependencySpecError(
                    f"{where}: Poetry dependency {dependency.name!r} ({dependency.pretty_constraint}) "
                    "has no standard (PEP 508) form; use a single range or a requirements.txt"
                ) from None
            self.add(line, line)
        self.local.extend(import_roots(project))

    def add_local_project(self, project: Path, deps: bool = True) -> None:
        """Local code: its import roots in front; its dependencies (if declared) shared."""
        project = project.resolve()
        if project in self._projects_seen:
            return
        self._projects_seen.add(project)
        if deps and (project / "pyproject.toml").is_file():
            self.read_project(project)
        else:
            self.local.extend(import_roots(project))

    # -- requirement lines --------------------------------------------------------------------

    def add(self, hashed: str, install: str) -> None:
        hashed = " ".join(hashed.split())
        if hashed not in self.hashed:
            self.hashed.add(hashed)
            self.install.append(install)

    def add_requirement(self, line: str, base: Path, where: str) -> None:
        """One PEP 508 requirement, or a path/URL one; local paths become local code."""
        line = " ".join(line.split())
        if not line:
            return
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            requirement = None
        url = requirement.url if requirement is not None else None
        if requirement is not None and url is None:
            self.add(line, line)
            return
        target = url or line
        name = requirement.name if requirement is not None else None
        path = _local_path(target, base)
        if path is None:  # a URL (git+https://, https://, file:// outside): shared
            self.add(line, line)
            return
        self.add_path(path, base, where, line, name)

    def add_path(self, path: Path, base: Path, where: str, written: str, name: str | None) -> None:
        path = path.resolve()
        if path.is_relative_to(self.root):
            if path.is_dir():
                self.add_local_project(path)
                return
            if path.is_file():  # a wheel or archive kept in the repository: a dependency
                relative = path.relative_to(self.root).as_posix()
                self.add(
                    f"{name} @ repo:{relative}" if name else f"repo:{relative}",
                    _install_form(name, path),
                )
                return
            raise DependencySpecError(f"{where}: {written!r}: path {self.rel(path)} does not exist")
        if base.resolve().is_relative_to(self.root) and not _is_absolute(written):
            raise DependencySpecError(
                f"{where}: {written!r} points outside the repository; "
                "use an absolute path or a URL for code that lives elsewhere"
            )
        if not path.exists():
            raise DependencySpecError(f"{where}: {written!r}: path {path} does not exist")
        self.add(_install_form(name, path), _install_form(name, path))

    def read_requirements(self, path: Path, seen: set[Path]) -> None:
        """A requirements file: option lines kept, nested ``-r``/``-c`` inlined, local paths
        turned into local code."""
        path = path.resolve()
        where = self.rel(path)
        if path in seen:
            return
        seen.add(path)
        if not path.is_relative_to(self.root):
            raise DependencySpecError(f"{where}: refers to a file outside the repository")
        try:
            raw = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DependencySpecError(f"cannot read {where}: {exc}") from None
        for line in (_clean(ln) for ln in raw.replace("\\\n", " ").splitlines()):
            if not line:
                continue
            option = re.match(r"^(-[a-zA-Z]|--[a-z-]+)(?:[ =](.*))?$", line)
            if option is None:
                self.add_requirement(line, path.parent, where)
                continue
            flag, value = option.group(1), (option.group(2) or "").strip()
            if flag in ("-r", "--requirement", "-c", "--constraint"):
                self.read_requirements(path.parent / value, seen)
            elif flag in ("-e", "--editable"):
                self.add_requirement(value, path.parent, where)
            elif flag in ("-f", "--find-links") and _local_path(value, path.parent):
                local = _local_path(value, path.parent)
                assert local is not None
                shown = (
                    local.relative_to(self.root).as_posix()
                    if local.is_relative_to(self.root)
                    else str(local)
                )
                self.hashed_options.append(f"{flag} {shown}")
                self.options.extend([flag, str(local)])
            else:
                self.hashed_options.append(line)
                self.options.extend([flag, value] if value else [flag])

    def rel(self, path: Path) -> str:
        path = Path(path)
        return (
            path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)
        )


def _load_toml(path: Path, strict: bool, where: str = "pyproject.toml") -> dict:
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        if strict:
            raise DependencySpecError(f"cannot read {where}: {exc}") from None
        return {}


def _setuptools_dynamic_files(data: dict) -> list[str] | None:
    dynamic = (((data.get("tool") or {}).get("setuptools") or {}).get("dynamic") or {}).get(
        "dependencies"
    )
    if not isinstance(dynamic, dict) or "file" not in dynamic:
        return None
    files = dynamic["file"]
    return [files] if isinstance(files, str) else [str(f) for f in files]


def _is_absolute(written: str) -> bool:
    target = written.split(" @ ", 1)[-1].strip()
    return target.startswith(("/", "file:///", "file://localhost/"))


def _local_path(target: str, base: Path) -> Path | None:
    """The file system path ``target`` names (relative to ``base``), or None for a URL."""
    target = target.strip()
    if target.startswith("file:"):
        parts = urlsplit(target)
        path = unquote(parts.path)
        return Path(path) if path.startswith("/") else (base / path)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", target):
        return None
    if (
        target.startswith((".", "/"))
        or "/" in target
        or target.endswith((".whl", ".tar.gz", ".zip"))
    ):
        return Path(target) if target.startswith("/") else base / target
    return None


def _install_form(name: str | None, path: Path) -> str:
    return f"{name} @ {path.as_uri()}" if name else path.as_uri()


def _clean(line: str) -> str:
    return " ".join(re.sub(r"(^|\s)#.*$", "", line).split())


def canonical_lines(lines: Iterable[str]) -> tuple[str, ...]:
    """Sorted, whitespace-normalised, de-duplicated requirement lines."""
    return tuple(sorted({" ".join(line.split()) for line in lines if line.strip()}))
