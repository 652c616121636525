"""The import contract of docs/architecture.md ("Layers").

``lint-imports`` (import-linter, contracts in ``pyproject.toml``) checks the layering in
``make lint``; these tests run it too, prove on a copy of the sources that it does catch a
violation, and check the modules that must stay standard-library only, which import-linter
cannot express: the vocabulary (imported by the clients), the worker and its protocol (run as
plain files under a script's own virtualenv, where nothing of ours is installed).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ska_oso_oet

PACKAGE = Path(ska_oso_oet.__file__).parent
ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent))


def _lint_imports(sources: Path) -> subprocess.CompletedProcess[str]:
    if LINT_IMPORTS is None:
        pytest.fail("lint-imports is not installed: pip install -e '.[dev]'")
    env = {**os.environ, "PYTHONPATH": str(sources)}
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def test_the_sources_keep_the_contract() -> None:
    result = _lint_imports(PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "message"),
    [
        (
            "procedure/domain.py",
            "import tango",
            "ska_oso_oet.procedure is not allowed to import tango",
        ),
        (
            "rest/errors.py",
            "from ..tango import ska",
            "ska_oso_oet.rest is not allowed to import ska_oso_oet.tango",
        ),
        (
            "rest/errors.py",
            "from ..procedure import domain",
            "ska_oso_oet.rest is not allowed to import ska_oso_oet.procedure",
        ),
        (
            "cli/errors.py",
            "import tango",
            "ska_oso_oet.cli is not allowed to import tango",
        ),
        (
            "events.py",
            "from .activity import domain",
            "ska_oso_oet.events is not allowed to import ska_oso_oet.activity",
        ),
    ],
)
def test_a_violation_is_reported(tmp_path: Path, module: str, line: str, message: str) -> None:
    copy = tmp_path / "ska_oso_oet"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / module).open("a") as f:
        f.write(f"\n{line}  # noqa\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    broken = [ln for ln in result.stdout.splitlines() if ln.endswith("BROKEN")]
    assert broken, result.stdout
    assert message in result.stdout


_OPTIONAL = {"ImportError", "ModuleNotFoundError", "Exception"}


def _guarded(node: ast.Try) -> bool:
    """A ``try`` whose handlers let the import fail (``except ImportError`` and the like)."""
    for handler in node.handlers:
        names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(n, ast.Name) and n.id in _OPTIONAL for n in names):
            return True
    return False


def _required_imports(path: Path) -> set[str]:
    """Top-level names of the imports a module cannot run without (``"."`` for a relative
    one); an import inside ``try: ... except ImportError`` is optional and not counted."""
    names: set[str] = set()

    def visit(node: ast.AST, optional: bool) -> None:
        if isinstance(node, ast.Import) and not optional:
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not optional:
            names.add("." if node.level else (node.module or "").split(".")[0])
        elif isinstance(node, ast.Try):
            for child in node.body:
                visit(child, optional or _guarded(node))
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, optional)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, optional)

    visit(ast.parse(path.read_text(), str(path)), False)
    return names


@pytest.mark.parametrize(
    "module", ["vocabulary.py", "procedure/worker.py", "procedure/protocol.py", "script.py"]
)
def test_module_needs_only_the_standard_library(module: str) -> None:
    imported = _required_imports(PACKAGE / module)
    foreign = sorted(name for name in imported if name not in sys.stdlib_module_names)
    assert foreign == [], f"{module} needs {foreign}: it must run on the standard library alone"


def test_the_stdlib_check_sees_a_foreign_import(tmp_path: Path) -> None:
    script = tmp_path / "m.py"
    script.write_text(
        "import os\nfrom . import sibling\n"
        "def f():\n    import jsonpickle.ext\n"
        "try:\n    import pubsub\nexcept ImportError:\n    pass\n"
        "try:\n    import psutil\nexcept KeyError:\n    pass\n"
    )
    assert _required_imports(script) - set(sys.stdlib_module_names) == {".", "jsonpickle", "psutil"}
