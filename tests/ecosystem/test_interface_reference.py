"""The generated Tango interface reference lists exactly what a client of the running device sees.

The reference page (``docs/reference/tango-interface.md``) is generated from the OETDevice
class; this compares it with the live device's own self-description (``command_list_query``,
``attribute_list_query``, the database's property list), so a command, attribute or property
added by other means (dynamic attributes, a base class) cannot be missing from the docs.
"""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType

import pytest
import tango

from .conftest import REPO, EcosystemStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
#: Tango adds these to every device; the reference describes the OET's own interface.
TANGO_BUILTIN_COMMANDS = {"Init", "State", "Status"}
TANGO_BUILTIN_ATTRIBUTES = {"State", "Status"}


def load_generator() -> ModuleType:
    path = REPO / "docs" / "_ext" / "oet_reference.py"
    spec = importlib.util.spec_from_file_location("oet_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def section_names(markdown: str, title: str) -> list[str]:
    """Names in the first column of the table under ``## title``."""
    section = markdown.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE)


def test_reference_matches_the_running_device(oet_stack: EcosystemStack) -> None:
    markdown = load_generator().tango_interface()
    proxy = oet_stack.proxy()

    commands = {c.cmd_name for c in proxy.command_list_query()} - TANGO_BUILTIN_COMMANDS
    assert sorted(section_names(markdown, "Commands")) == sorted(commands)

    attributes = {a.name for a in proxy.attribute_list_query_ex()} - TANGO_BUILTIN_ATTRIBUTES
    assert sorted(section_names(markdown, "Attributes")) == sorted(attributes)

    documented = set(section_names(markdown, "Device properties"))
    class_properties = set(
        tango.Database(*oet_stack.tango_host.split(":"))
        .get_device_property_list(proxy.dev_name(), "*")
        .value_string
    )
    assert class_properties <= documented, class_properties - documented  # set ones documented
    assert {"ScriptRoots", "StateDatabase", "AbortScript", "HistorySize"} <= documented


def test_reference_descriptions_are_the_devices_own(oet_stack: EcosystemStack) -> None:
    """Descriptions on the page are those Tango clients get from the device."""
    markdown = load_generator().tango_interface()
    proxy = oet_stack.proxy()
    for name in ("lastEvent", "procedureStates", "adminMode"):
        description = proxy.get_attribute_config(name).description
        row = next(line for line in markdown.splitlines() if line.startswith(f"| `{name}` |"))
        assert " ".join(description.split()).replace("|", "\\|") in row, (name, description)
    argument = proxy.command_query("Prepare").in_type_desc
    row = next(line for line in markdown.splitlines() if line.startswith("| `Prepare` |"))
    assert " ".join(argument.split()).replace("|", "\\|") in row
