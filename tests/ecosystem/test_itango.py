"""An operator's itango session finds the OET device and runs a procedure with it.

The real ``itango`` console is started with ``TANGO_HOST`` pointing at the embedded stack and
fed a session on standard input, as if typed: ``lsdev`` lists the device (itango's view of the
Tango database), ``Device(...)`` connects, ``Prepare``/``Start`` run a script, and the session
waits for the states an operator would watch. Results are printed as marked JSON lines.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import DEVICE, EcosystemStack, require_executable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SESSION = """\
lsdev oso/oet/.*
import json, time
dev = Device("{device}")
print("STATE", dev.state())
reply = dev.Prepare({prepare!r})
pid = json.loads(dev.GetProcedure(reply[1][0]))["id"]
def wait_for(pid, state, timeout=90):
    deadline = time.monotonic() + timeout
    while json.loads(dev.GetProcedure(str(pid)))["state"] != state:
        assert time.monotonic() < deadline, dev.GetProcedure(str(pid))
        time.sleep(0.05)

wait_for(pid, "READY")
started = dev.Start(json.dumps({{"procedure_id": pid, "script_args": {{"main": {{"kwargs": {{"count": 2}}}}}}}}))
wait_for(pid, "COMPLETE")
summary = json.loads(dev.GetProcedure(str(pid)))
print("RESULT", json.dumps({{"codes": [int(reply[0][0]), int(started[0][0])], "ids": [reply[1][0], started[1][0]], "states": [s for s, _ in summary["history"]["process_states"]], "message": dev.scriptMessage, "procedureStates": list(dev.procedureStates)}}))
exit
"""


def test_itango_session_runs_a_procedure(oet_stack: EcosystemStack, tmp_path: Path) -> None:
    itango = require_executable("itango")
    session = SESSION.format(device=DEVICE, prepare=oet_stack.prepare_body())
    env = {
        **oet_stack.env,
        "IPYTHONDIR": str(tmp_path / "ipython"),  # itango installs its profile there
        "HOME": str(tmp_path),
        "TERM": "dumb",
        "PAGER": "cat",
    }
    done = subprocess.run(
        [itango, "--simple-prompt", "--no-banner", "--colors=NoColor"],
        input=session,
        capture_output=True,
        text=True,
        env=env,
        timeout=150,
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output

    # lsdev: itango lists the device with its server and class from the Tango database
    listing = [line.split() for line in done.stdout.splitlines() if DEVICE in line]
    assert any(
        row[0] == DEVICE and "OETDeviceServer/oet" in row and "OETDevice" in row for row in listing
    ), output
    assert "STATE ON" in done.stdout, output

    result_line = next((line for line in output.splitlines() if "RESULT {" in line), None)
    assert result_line is not None, output
    result = json.loads(result_line.split("RESULT ", 1)[1])
    assert result["codes"] == [1, 1]  # ResultCode.STARTED for both long-running commands
    assert result["ids"][0].endswith("_Prepare") and result["ids"][1].endswith("_Start")
    states = result["states"]
    assert states[0] == "CREATING" and states[-3:] == ["READY", "RUNNING", "COMPLETE"], states
    assert result["message"] == "scan 1 on subarray 1"
    assert result["procedureStates"][-1] == "COMPLETE"
