"""A device whose engine cannot start reports FAULT / FAILED and refuses commands clearly."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tango

from ska_oso_oet.tango.ska import ResultCode, TaskStatus
from tests.support.lrc_client import LrcClient
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


VALID_PREPARE = '{"script": {"script_type": "filesystem", "script_uri": "file:///tmp/x.py"}}'


@pytest.mark.parametrize(("command", "argument"), [("Prepare", VALID_PREPARE), ("Start", "{}")])
def test_commands_are_refused_as_engine_unavailable(
    broken: tango.DeviceProxy, command: str, argument: str | None
) -> None:
    with pytest.raises(tango.DevFailed) as excinfo:
        broken.command_inout(command, *(() if argument is None else (argument,)))
    assert excinfo.value.args[0].reason == "OET_ENGINE_UNAVAILABLE"
    assert "cannot be started" in excinfo.value.args[0].desc


def test_abort_is_accepted_and_reset_reports_why_it_cannot_recover(
    broken: tango.DeviceProxy,
) -> None:
    aborted = LrcClient(broken).invoke("Abort")
    assert aborted.statuses[-1] == TaskStatus.COMPLETED and aborted.result == [ResultCode.OK, "[]"]
    for command in ("On", "Off", "Standby"):
        with pytest.raises(tango.DevFailed) as excinfo:
            broken.command_inout(command)
        assert excinfo.value.args[0].reason == "API_CommandNotAllowed"
    reset = LrcClient(broken).invoke("Reset", timeout=60)
    assert reset.statuses[-1] == TaskStatus.FAILED and reset.result[0] == ResultCode.FAILED
    assert "cannot be started (test)" in reset.result[1]
    assert broken.state() == tango.DevState.FAULT
