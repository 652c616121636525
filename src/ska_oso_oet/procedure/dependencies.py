"""Dependency specifications: what a repository asks to have installed for its scripts.

:func:`read_dependency_spec` reads a checkout's ``pyproject.toml`` or ``requirements.txt`` into
a :class:`DependencySpec` whose canonical text is what the environment cache hashes, so that
formatting changes, comments and reordering do not force a rebuild, while any real change does.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import OetError


class EnvironmentFailure(OetError):
    """A script's virtual environment could not be provided; the message says why."""

    code = "OET_ENVIRONMENT_ERROR"


class DependencySpecError(EnvironmentFailure):
    """The repository's dependency declaration cannot be read or is not supported."""


@dataclass(frozen=True)
class DependencySpec:
    """What to install, read from a repository checkout.

    ``text`` is the canonical requirement text that is hashed into the environment key
    (comments, blank lines and ordering noise removed). pip installs either ``source`` (a
    requirements file, so its own options such as ``--find-links`` are honoured) or, for
    ``pyproject.toml``, the ``requirements`` extracted from it.
    """

    #: "pyproject", "poetry", "requirements" or "none".
    kind: str
    text: str
    requirements: tuple[str, ...] = ()
    source: Path | None = None
    #: Folder pip runs in, so relative paths in requirements resolve inside the checkout.
    base_dir: Path | None = None

    @property
    def is_empty(self) -> bool:
        return not self.text.strip()

    def describe(self) -> str:
        return f"{self.source.name} ({self.kind})" if self.source else "no dependencies"


def read_dependency_spec(root: Path) -> DependencySpec:
    """The dependency specification of the checkout at ``root``.

    Order: ``pyproject.toml`` ``[project].dependencies`` (unless declared dynamic), then
    Poetry's ``[tool.poetry.dependencies]``, then ``requirements.txt``; with none of them the
    environment is a bare virtualenv.
    """
    root = Path(root)
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise DependencySpecError(f"cannot read pyproject.toml: {exc}") from None
        project = data.get("project") or {}
        poetry = (data.get("tool") or {}).get("poetry") or {}
        if "dependencies" in project and "dependencies" not in project.get("dynamic", []):
            deps = project["dependencies"]
            if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
                raise DependencySpecError("pyproject.toml: [project].dependencies must be strings")
            return _from_lines("pyproject", deps, pyproject, root)
        if isinstance(poetry.get("dependencies"), dict):
            return _from_lines(
                "poetry", poetry_requirements(poetry["dependencies"]), pyproject, root
            )
    requirements = root / "requirements.txt"
    if requirements.is_file():
        text = _requirements_text(requirements, root, set())
        return DependencySpec("requirements", text, source=requirements, base_dir=root)
    return DependencySpec("none", "", base_dir=root)


def requirements_spec(text: str, base_dir: Path | None = None) -> DependencySpec:
    """A specification from requirement lines given directly (tests, ad-hoc environments)."""
    lines = [ln for ln in (_clean(line) for line in text.splitlines()) if ln]
    return _from_lines("requirements", lines, None, base_dir)


def _from_lines(kind: str, lines: Iterable[str], source: Path | None, base: Path | None):
    reqs = tuple(sorted({" ".join(line.split()) for line in lines if line.strip()}))
    return DependencySpec(kind, "\n".join(reqs), reqs, source, base)


def _clean(line: str) -> str:
    return " ".join(re.sub(r"(^|\s)#.*$", "", line).split())


def _requirements_text(path: Path, root: Path, seen: set[Path]) -> str:
    """Canonical text of a requirements file, with nested ``-r``/``-c`` files inlined."""
    path = path.resolve()
    if path in seen:
        return ""
    seen.add(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DependencySpecError(f"cannot read {path.name}: {exc}") from None
    out = []
    for line in (_clean(ln) for ln in raw.replace("\\\n", " ").splitlines()):
        if not line:
            continue
        out.append(line)
        nested = re.match(r"^(-r|-c|--requirement|--constraint)[ =]?(\S+)$", line)
        if nested:
            child = (path.parent / nested.group(2)).resolve()
            if child.is_relative_to(root.resolve()) and child.is_file():
                out.append(_requirements_text(child, root, seen))
    return "\n".join(out)


def poetry_requirements(deps: dict) -> list[str]:
    """PEP 508 requirements for Poetry's ``[tool.poetry.dependencies]`` (``python`` skipped).

    Covers the common forms (``^``, ``~``, ``*``, exact and comparison constraints, tables
    with ``version``/``extras``/``markers``/``optional``); anything else (git, path, url,
    multiple constraints) raises :class:`DependencySpecError` naming the dependency.
    """
    out = []
    for name, spec in deps.items():
        if name.lower() == "python":
            continue
        extras, markers = "", ""
        if isinstance(spec, dict):
            unsupported = set(spec) - {"version", "extras", "markers", "optional", "source"}
            if unsupported:
                raise DependencySpecError(
                    f"pyproject.toml: Poetry dependency {name!r} uses {sorted(unsupported)}, "
                    "which OET cannot translate; add a requirements.txt instead"
                )
            if spec.get("optional"):
                continue
            if spec.get("extras"):
                extras = "[" + ",".join(spec["extras"]) + "]"
            markers = f"; {spec['markers']}" if spec.get("markers") else ""
            spec = spec.get("version", "*")
        if not isinstance(spec, str):
            raise DependencySpecError(
                f"pyproject.toml: Poetry dependency {name!r} has an unsupported form; "
                "add a requirements.txt instead"
            )
        out.append(f"{name}{extras}{_poetry_constraint(name, spec)}{markers}")
    return out


def _poetry_constraint(name: str, spec: str) -> str:
    spec = spec.strip()
    if spec in ("", "*"):
        return ""
    if "||" in spec:
        raise DependencySpecError(
            f"pyproject.toml: Poetry constraint {spec!r} of {name!r} (alternatives) is not "
            "supported; add a requirements.txt instead"
        )
    parts = [p.strip() for p in re.split(r",|\s+(?=[<>=!~^])", spec) if p.strip()]
    return ",".join(_poetry_part(name, p) for p in parts)


def _poetry_part(name: str, part: str) -> str:
    if part[0] in "^~" and not part.startswith("~="):
        base = part[1:].strip()
        numbers = re.match(r"^\d+(\.\d+)*", base)
        if not numbers:
            raise DependencySpecError(f"pyproject.toml: bad constraint {part!r} for {name!r}")
        nums = [int(n) for n in numbers.group(0).split(".")]
        if part[0] == "^":
            first = next((i for i, n in enumerate(nums) if n), len(nums) - 1)
            upper = [*nums[:first], nums[first] + 1]
        else:
            upper = [nums[0], nums[1] + 1] if len(nums) > 1 else [nums[0] + 1]
        return f">={base},<{'.'.join(map(str, upper))}"
    if part[0].isdigit():
        return f"=={part}"
    return part
