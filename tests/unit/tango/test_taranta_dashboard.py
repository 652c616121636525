"""The Taranta dashboard shipped in ``examples/taranta`` names only what the device has.

Loads the dashboard file as Taranta stores it and checks every device attribute and command
its widgets name against a running OETDevice's own self-description, with the argument type
Taranta will send; and the enum and state attributes it colours are of the types Taranta
colours (DevEnum with labels, DevState).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tango

from .conftest import DEVICE

DASHBOARD = Path(__file__).resolve().parents[3] / "examples" / "taranta" / "oet-device.wj"


def references(node: Any) -> Iterator[dict[str, Any]]:
    """Every {"device": ..., "attribute"|"command": ...} object in a widget's inputs."""
    if isinstance(node, dict):
        if "device" in node and ("attribute" in node or "command" in node):
            yield node
        for value in node.values():
            yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_every_attribute_and_command_exists(
    dashboard: dict[str, Any], device: tango.DeviceProxy
) -> None:
    attributes = {a.name for a in device.attribute_list_query()}
    commands = {c.cmd_name: c for c in device.command_list_query()}
    refs = [r for widget in dashboard["widget"] for r in references(widget["inputs"])]
    assert refs and {r["device"] for r in refs} == {DEVICE}
    for ref in refs:
        if "attribute" in ref:
            assert ref["attribute"] in attributes, ref
        else:
            assert ref["command"] in commands, ref
            in_type = str(commands[ref["command"]].in_type)
            assert in_type == ref["acceptedType"], (ref, in_type)


def test_the_dashboard_has_what_an_operator_needs(dashboard: dict[str, Any]) -> None:
    by_type: dict[str, list[dict]] = {}
    for widget in dashboard["widget"]:
        by_type.setdefault(widget["type"], []).append(widget)
    assert {w["inputs"]["command"]["command"] for w in by_type["COMMAND_WRITER"]} == {
        "Prepare",
        "Start",
        "Stop",
    }
    assert [w["inputs"]["command"]["command"] for w in by_type["COMMAND"]] == ["Abort"]
    assert by_type["DEVICE_STATUS"][0]["inputs"]["state"]["attribute"] == "State"
    tables = {w["inputs"]["attribute"]["attribute"] for w in by_type["SPECTRUM_TABLE"]}
    assert {"procedureIds", "procedureStates", "procedureLeds"} <= tables
    shown = {w["inputs"]["attribute"]["attribute"] for w in by_type["ATTRIBUTE_DISPLAY"]}
    assert {"lastEvent", "runningProcedureState"} <= shown


def test_state_attributes_have_types_taranta_colours(device: tango.DeviceProxy) -> None:
    running = device.get_attribute_config("runningProcedureState")
    assert running.data_type == tango.CmdArgType.DevEnum
    assert {"NONE", "READY", "RUNNING", "FAILED", "COMPLETE"} <= set(running.enum_labels)
    assert device.get_attribute_config("procedureLeds").data_type == tango.CmdArgType.DevState
    assert device.get_attribute_config("procedureLeds").data_format == tango.AttrDataFormat.SPECTRUM
