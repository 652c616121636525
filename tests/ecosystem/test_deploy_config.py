"""Checks of the Helm chart that work without helm or a cluster.

No helm binary is available here (nor in CI), so the templates cannot be rendered. These tests
catch what most often goes wrong instead: a template using a value that ``values.yaml`` does
not define (a typo renders as empty), the dsconfig job registering a property the device does
not have, chart defaults drifting from ``deviceservers/oet.json``, and ``values.schema.json``
accepting values the chart cannot deploy.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from ska_oso_oet.tango.device import OETDevice

from .conftest import REPO

yaml = pytest.importorskip("yaml", reason="needs PyYAML: pip install -e '.[deploy]'")

CHART = REPO / "charts" / "ska-oso-oet"
TEMPLATES = sorted((CHART / "templates").glob("*"))
VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())

#: ``{{- $ds := .Values.deviceServer }}``: template variables bound to a values path
_ALIAS = re.compile(r"\$(\w+)\s*:=\s*(?:\$root|\$)?\.Values\.([\w.]+)")
_DIRECT = re.compile(r"(?:\$root|\$)?\.Values\.([\w.]+)")


def _resolve(path: list[str]) -> bool:
    node: Any = VALUES
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def value_references() -> list[tuple[str, str]]:
    """(template, dotted values path) for every values path a template reads."""
    found = []
    for template in TEMPLATES:
        text = template.read_text()
        aliases = dict(_ALIAS.findall(text))
        for path in _DIRECT.findall(text):
            found.append((template.name, path))
        for alias, base in aliases.items():
            for rest in re.findall(rf"\${alias}\.([\w.]+)", text):
                found.append((template.name, f"{base}.{rest}"))
    return found


def test_templates_only_use_values_that_exist() -> None:
    references = value_references()
    assert len(references) > 40  # the parser found the templates' references
    missing = sorted({(t, p) for t, p in references if not _resolve(p.split("."))})
    assert not missing, missing


def test_dsconfig_registers_only_real_device_properties() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    block = helpers[helpers.index('define "oet.dsconfig"') :]
    registered = set(re.findall(r'"([A-Z]\w+)" \(list', block))
    registered |= set(re.findall(r'set \$p "([A-Z]\w+)"', block))
    known = set(OETDevice.TangoClassClass.device_property_list)
    assert {"SubarrayId", "ScriptRoots", "StateDatabase", "AbortScript"} <= registered
    assert registered <= known, registered - known
    assert set(VALUES["deviceServer"]["properties"]) <= known


def test_chart_defaults_match_deviceservers_config() -> None:
    config = json.loads((REPO / "deviceservers" / "oet.json").read_text())
    devices = config["servers"]["OETDeviceServer"]["oet"]["OETDevice"]
    chart = VALUES["deviceServer"]["properties"]
    for name, device in devices.items():
        for prop, value in device["properties"].items():
            if prop in chart:
                assert str(chart[prop]) == value[0], (name, prop)
    assert (
        len(devices)
        == json.loads((CHART / "values.schema.json").read_text())["properties"]["subarrays"][
            "maximum"
        ]
    )


# ----- values.schema.json ---------------------------------------------------------------------
def validator_class() -> Any:
    """jsonschema's Draft 7 validator, or skip (jsonschema is in the ``deploy`` group)."""
    module = pytest.importorskip("jsonschema", reason="needs pip install -e '.[deploy]'")
    return module.Draft7Validator


SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def errors_for(**changes: Any) -> list[str]:
    values = copy.deepcopy(VALUES)
    for dotted, value in changes.items():
        node = values
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    validator = validator_class()(SCHEMA)
    return [e.message for e in validator.iter_errors(values)]


def test_schema_accepts_the_defaults_and_a_full_deployment() -> None:
    validator_class().check_schema(SCHEMA)
    assert errors_for() == []
    assert (
        errors_for(
            subarrays=4,
            gateway__subarrays=[1, 2, 3, 4],
            gateway__basePath="/oet/{subarray}/api/v1.0",
            deviceServer__instancePerSubarray=True,
            deviceServer__properties={"AbortScript": "file:///scripts/abort.py", "WarmWorkers": 0},
            scripts={"source": "configMap", "mountPath": "/scripts", "files": {"a.py": "x = 1"}},
        )
        == []
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"subarrays": 0},
        {"subarrays": 17},
        {"gateway__subarrays": [0]},
        {"gateway__subarrays": [1, 1]},
        {"global__tango_host": "no-port"},
        {"deviceServer__properties": {"HistorySize": 0}},
        {"deviceServer__properties": {"AbortScript": "/scripts/abort.py"}},
        {"deviceServer__properties": {"Unknown": 1}},
        {"scripts": {"source": "persistentVolumeClaim", "mountPath": "/scripts"}},
        {"scripts": {"source": "configMap", "mountPath": "/scripts", "files": {}}},
        {"persistence__size": "lots"},
        {"image__pullPolicy": "Sometimes"},
        {"gateway__service__type": "ExternalName"},
        {"unknownTopLevel": True},
    ],
    ids=lambda changes: ",".join(changes),
)
def test_schema_rejects_values_the_chart_cannot_deploy(changes: dict[str, Any]) -> None:
    assert errors_for(**changes), changes


def test_rendered_paths_are_absolute() -> None:
    """Paths the chart writes into device properties live on the volumes it mounts."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    paths = re.findall(r'"(/var/lib/oet/[^"]+)"', helpers)
    assert paths and all(
        p.startswith(("/var/lib/oet/state/", "/var/lib/oet/cache/")) for p in paths
    )
    statefulset = (CHART / "templates" / "deviceserver.yaml").read_text()
    assert "mountPath: /var/lib/oet\n" in statefulset
