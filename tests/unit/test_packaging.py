"""What the image and the chart ship: console scripts that exist, examples found through a
setting (not the source tree), a security context on every workload, the cluster domain a value."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "charts" / "ska-oso-oet" / "templates"


@pytest.mark.parametrize(
    "entry",
    sorted(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"].items()),
)
def test_every_console_script_points_at_a_real_function(entry: tuple[str, str]) -> None:
    name, target = entry
    module, _, function = target.partition(":")
    assert callable(getattr(importlib.import_module(module), function)), name


def test_the_image_ships_the_examples_and_says_where() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY examples/ /opt/oet/examples/" in dockerfile
    assert "OET_EXAMPLES_DIR=/opt/oet/examples" in dockerfile
    assert "!examples/" in (REPO / ".dockerignore").read_text().splitlines()


def test_oet_stack_finds_the_examples_through_the_setting(tmp_path: Path) -> None:
    (tmp_path / "sbds").mkdir()
    code = "from ska_oso_oet import stack; print(stack.EXAMPLE_SBDS)"
    env = {**os.environ, "OET_EXAMPLES_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(tmp_path / "sbds")


@pytest.mark.parametrize("template", ["deviceserver.yaml", "gateway.yaml", "dsconfig.yaml"])
def test_every_workload_has_pod_and_container_security_contexts(template: str) -> None:
    text = (TEMPLATES / template).read_text()
    assert "toYaml $root.Values.podSecurityContext" in text or (
        "toYaml .Values.podSecurityContext" in text
    )
    containers = len(
        re.findall(r"^\s+- name: [\w-]+\n\s+(?:image|securityContext|\{\{)", text, re.M)
    )
    contexts = len(re.findall(r"Values\.securityContext", text))
    assert contexts >= 1 and contexts >= containers - 1, (template, containers, contexts)


def test_the_cluster_domain_is_a_value() -> None:
    assert "cluster.local" not in (TEMPLATES / "deviceserver.yaml").read_text().replace(
        'default "cluster.local"', ""
    )
    assert (
        "cluster_domain: cluster.local"
        in (REPO / "charts" / "ska-oso-oet" / "values.yaml").read_text()
    )
