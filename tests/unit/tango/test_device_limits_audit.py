"""OETDevice at the trust boundary (issue 13): bounded arguments, short refusals, audit trail.

A real server process with the real engine (the module server of conftest).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tango

from tests.support.lrc_client import LrcClient
from tests.support.tango_server import DeviceServerProcess

from .conftest import DEVICE, SERVER_COMMAND, body

LOG_FOLDER: dict[str, Path] = {}


@pytest.fixture(scope="module")
def server(script_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """conftest's server, with its own LogFolder (not the working directory's ``logs``)."""
    LOG_FOLDER["path"] = tmp_path_factory.mktemp("device-logs")
    properties = {
        "ScriptRoots": [str(script_dir)],
        "StateDatabase": str(tmp_path_factory.mktemp("state") / "oet.sqlite"),
        "StopGraceSeconds": 1.0,
        "WarmWorkers": 1,
        "LogFolder": str(LOG_FOLDER["path"]),
    }
    with DeviceServerProcess(
        SERVER_COMMAND, {DEVICE: properties}, "OETDeviceServer/trust", env={"OET_WARM_WORKERS": "1"}
    ) as process:
        yield process


pytestmark = pytest.mark.timeout(120)


def refusal(device: tango.DeviceProxy, command: str, argument: str) -> tango.DevError:
    with pytest.raises(tango.DevFailed) as info:
        device.command_inout(command, argument)
    return info.value.args[0]


def summary(device: tango.DeviceProxy, procedure_id: int) -> dict:
    return json.loads(device.GetProcedure(str(procedure_id)))


class TestLimits:
    @pytest.mark.parametrize("command", ["Prepare", "Start", "Stop", "RunActivity", "AddSbd"])
    def test_ten_thousand_deep_json_is_an_invalid_request(self, device, command):
        error = refusal(device, command, "[" * 10_000 + "]" * 10_000)
        assert error.reason == "OET_INVALID_REQUEST"
        assert "deeper" in error.desc or "nested" in error.desc

    def test_deep_object_inside_script_args_is_refused(self, device, script_dir):
        deep = json.loads(body(script_dir, "hello.py"))
        deep["script_args"] = {
            "init": {"args": [], "kwargs": {"x": json.loads("[" * 40 + "]" * 40)}}
        }
        assert refusal(device, "Prepare", json.dumps(deep)).reason == "OET_INVALID_REQUEST"

    def test_huge_argument_is_refused_without_being_echoed(self, device, script_dir):
        request = json.loads(body(script_dir, "hello.py"))
        request["script_args"] = {"init": {"args": ["x" * 2_000_000], "kwargs": {}}}
        error = refusal(device, "Prepare", json.dumps(request))
        assert error.reason == "OET_INVALID_REQUEST" and "at most" in error.desc
        assert len(error.desc) < 300

    def test_script_args_beyond_their_limit_are_refused(self, device, script_dir):
        request = json.loads(body(script_dir, "hello.py"))
        request["script_args"] = {"init": {"args": ["y" * 300_000], "kwargs": {}}}
        error = refusal(device, "Prepare", json.dumps(request))
        assert error.reason == "OET_INVALID_REQUEST" and "script_args of" in error.desc

    def test_unknown_key_is_quoted_by_a_short_prefix_only(self, device):
        error = refusal(device, "Prepare", json.dumps({"k" * 500_000: 1}))
        assert error.reason == "OET_INVALID_REQUEST" and len(error.desc) < 600

    def test_nul_in_script_uri_is_an_invalid_request(self, device, script_dir):
        request = {
            "script": {"script_type": "filesystem", "script_uri": f"file://{script_dir}/a\x00.py"}
        }
        assert refusal(device, "Prepare", json.dumps(request)).reason == "OET_INVALID_REQUEST"

    def test_device_still_works_after_all_that(self, device, script_dir):
        outcome = LrcClient(device).invoke("Prepare", body(script_dir, "hello.py"))
        assert outcome.result_code is not None


class TestAudit:
    def test_requested_by_is_recorded_for_create_start_and_stop(self, device, script_dir):
        prepared = json.loads(body(script_dir, "forever.py"))
        LrcClient(device).invoke("Prepare", json.dumps({**prepared, "requested_by": "alice"}))
        pid = max(p["id"] for p in json.loads(device.procedures))
        # forever.py never returns: do not wait for Start to complete
        device.command_inout("Start", json.dumps({"procedure_id": pid, "requested_by": "bob"}))
        stop = {"procedure_id": pid, "run_abort": False, "requested_by": "carol"}
        LrcClient(device).invoke("Stop", json.dumps(stop))
        audit = summary(device, pid)["audit"]
        assert [(a["action"], a["user"]) for a in audit] == [
            ("created", "alice"),
            ("started", "bob"),
            ("stopped", "carol"),
        ]
        assert all(isinstance(a["at"], float) for a in audit)

    def test_plain_tango_client_is_recorded_by_its_identity(self, device, script_dir):
        LrcClient(device).invoke("Prepare", body(script_dir, "hello.py"))
        pid = max(p["id"] for p in json.loads(device.procedures))
        user = summary(device, pid)["audit"][0]["user"]
        assert user.startswith("tango")

    @pytest.mark.parametrize("user", [17, "", "x" * 500, "line\nbreak"])
    def test_malformed_requested_by_is_refused(self, device, script_dir, user):
        request = {**json.loads(body(script_dir, "hello.py")), "requested_by": user}
        error = refusal(device, "Prepare", json.dumps(request))
        assert error.reason == "OET_INVALID_REQUEST" and "requested_by" in error.desc


class TestLogFolder:
    @pytest.mark.parametrize(
        "target", ["file::/tmp/oet-evil.log", "file::../escape.log", "file::a/../../x.log"]
    )
    def test_file_targets_outside_the_log_folder_are_refused(self, device, target):
        with pytest.raises(tango.DevFailed) as info:
            device.loggingTargets = [target]
        assert info.value.args[0].reason == "OET_INVALID_REQUEST"
        assert "outside the log folder" in info.value.args[0].desc
        assert not Path("/tmp/oet-evil.log").exists()

    def test_file_target_inside_the_log_folder_is_written(self, device):
        try:
            device.loggingTargets = ["file::trust-test.log"]
            (target,) = device.loggingTargets
            assert target == f"file::{LOG_FOLDER['path'].resolve() / 'trust-test.log'}"
            assert Path(target.removeprefix("file::")).is_file()
        finally:
            device.loggingTargets = []


def test_confine_log_file_resolves_links_and_dots(tmp_path):
    from ska_oso_oet.tango.logs import LoggingTargetError, confine_log_file

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "link").symlink_to(tmp_path)
    assert confine_log_file("a/b.log", tmp_path / "logs") == str(tmp_path / "logs" / "a" / "b.log")
    for name in ("link/x.log", "../x.log", str(tmp_path / "x.log"), "."):
        with pytest.raises(LoggingTargetError):
            confine_log_file(name, tmp_path / "logs")
