"""A device whose engine cannot start reports FAULT / FAILED and refuses commands clearly."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tango

from tests.support.tango_server import DeviceServerProcess

pytestmark = pytest.mark.timeout(120)
BROKEN_SERVER = Path(__file__).with_name("broken_server.py")


@pytest.fixture(scope="module")
def broken() -> Iterator[tango.DeviceProxy]:
    devices = {"oso/oet/7": {}}
    command = [sys.executable, str(BROKEN_SERVER)]
    with DeviceServerProcess(
        command, devices, "BrokenOETDevice/test", device_class="BrokenOETDevice"
    ) as server:
        yield server.proxy("oso/oet/7")


def test_engine_failure_is_fault_and_failed_health(broken: tango.DeviceProxy) -> None:
    assert broken.state() == tango.DevState.FAULT
    assert "cannot be started (test)" in broken.status()
    assert broken.healthState == 2  # FAILED
    assert broken.subarrayId == 7  # from the device name


@pytest.mark.parametrize(
    ("command", "argument"), [("Prepare", '{"script": {}}'), ("Start", "{}"), ("Abort", None)]
)
def test_commands_are_refused_as_engine_unavailable(
    broken: tango.DeviceProxy, command: str, argument: str | None
) -> None:
    with pytest.raises(tango.DevFailed) as excinfo:
        broken.command_inout(command, *(() if argument is None else (argument,)))
    assert excinfo.value.args[0].reason == "OET_ENGINE_UNAVAILABLE"
    assert "cannot be started" in excinfo.value.args[0].desc
