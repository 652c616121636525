"""``oet`` end to end against a real gateway over the fake device: output, requests, exit codes."""

from __future__ import annotations

import threading
import time

import pytest

from ska_oso_oet.cli import exit_codes
from ska_oso_oet.cli.http import OetHttp
from ska_oso_oet.cli.main import main


def oet(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return exited.value.code or 0, out, err


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def prepare_calls(device):
    return [arg for name, arg in device.calls if name == "Prepare"]


def test_create_passes_words_and_pairs_to_init_and_prints_the_table(server_url, device, capsys):
    code, out, _ = oet(
        capsys, "create", "file:///scripts/a.py", "hello", "3", "--verbose=true", "--n", "[1, 2]"
    )
    assert code == 0
    header, _rule, row = out.splitlines()[:3]
    assert header.split() == ["ID", "Script", "Creation", "Time", "State"]
    assert row.split()[:2] == ["1", "file:///scripts/a.py"] and row.split()[-1] == "CREATING"
    assert prepare_calls(device) == [
        {
            "script": {"script_type": "filesystem", "script_uri": "file:///scripts/a.py"},
            "script_args": {
                "init": {
                    "args": ["hello", 3],
                    "kwargs": {"subarray_id": 1, "verbose": True, "n": [1, 2]},
                }
            },
        }
    ]


def test_create_git_script_with_git_arguments(server_url, device, capsys):
    code, _, _ = oet(
        capsys, "procedure", "create", "git://scripts/b.py", "--subarray_id=1",
        "--git_repo=https://git.example/r.git", "--git-branch", "dev", "--create_env",
    )  # fmt: skip
    assert code == 0
    body = prepare_calls(device)[0]
    assert body["script"] == {
        "script_type": "git",
        "script_uri": "git://scripts/b.py",
        "git_args": {"git_repo": "https://git.example/r.git", "git_branch": "dev"},
        "create_env": True,
    }
    assert body["script_args"]["init"]["kwargs"] == {"subarray_id": 1}


def test_create_git_script_without_a_repository_leaves_it_to_the_default(
    server_url, device, capsys
):
    code, _, _ = oet(capsys, "procedure", "create", "git://scripts/b.py")
    assert code == 0
    assert prepare_calls(device)[0]["script"]["git_args"] == {}


@pytest.mark.parametrize(
    "argv",
    [
        ("create", "file:///a.py", "--git_repo=x"),
        ("create", "http://a.py"),
        ("create", "git://a.py", "--create_env=maybe"),
        ("create", "file:///a.py", "--9x=1"),
        ("start", "--listen=maybe"),
    ],
)
def test_bad_arguments_print_one_line_and_exit_2(server_url, device, capsys, argv):
    code, _out, err = oet(capsys, *argv)
    assert code == exit_codes.USAGE
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error: ")
    assert not prepare_calls(device)


def test_list_and_unknown_pid(server_url, device, capsys):
    oet(capsys, "create", "file:///a.py")
    oet(capsys, "create", "file:///b.py")
    code, out, _ = oet(capsys, "list")
    assert code == 0 and "file:///a.py" in out and "file:///b.py" in out
    code, out, _ = oet(capsys, "procedure", "list", "--pid=2")
    assert "file:///b.py" in out and "file:///a.py" not in out
    code, out, err = oet(capsys, "list", "--pid", "99")
    assert code == exit_codes.NOT_FOUND
    assert err.strip() == (
        "Error: Server encountered error 404 Not Found: ResourceNotFound: "
        "No information available for PID=99"
    )


def test_start_without_listening_starts_the_last_created_with_main_args(server_url, device, capsys):
    oet(capsys, "create", "file:///a.py")
    oet(capsys, "create", "file:///b.py")
    code, out, _ = oet(capsys, "start", "bob", "--simulate=false", "--listen=False")
    assert code == 0
    assert out.splitlines()[2].split()[-1] == "RUNNING"
    assert (
        "Start",
        {
            "procedure_id": 2,
            "script_args": {"main": {"args": ["bob"], "kwargs": {"simulate": False}}},
        },
    ) in device.calls


def follow_start(capsys, device, argv, finish):
    """Run ``oet start`` (following events) while another thread plays the script's part."""

    def script_side():
        wait_until(lambda: any(p["state"] == "RUNNING" for p in device.procedures.values()))
        pid = next(p for p, s in device.procedures.items() if s["state"] == "RUNNING")
        device.announce(pid, "hello from the script")
        finish(pid)

    helper = threading.Thread(target=script_side)
    helper.start()
    try:
        return oet(capsys, *argv)
    finally:
        helper.join()


def test_start_follows_events_until_the_procedure_completes(server_url, device, capsys):
    oet(capsys, "create", "file:///a.py")
    code, out, _ = follow_start(capsys, device, ["start"], lambda pid: device.finish(pid))
    assert code == 0
    lines = out.splitlines()
    assert "Events" in lines
    events = lines[lines.index("Events") + 3 :]
    assert "- Procedure 1 is RUNNING" in events
    assert "- Script message: hello from the script" in events
    assert events[-1] == "- Procedure 1 (file:///a.py) execution complete on subarray 1"


def test_start_reports_a_failure_with_its_stack_trace_and_exit_8(server_url, device, capsys):
    oet(capsys, "create", "file:///a.py")
    code, out, _ = follow_start(
        capsys, device, ["start", "--pid=1"],
        lambda pid: device.finish(pid, "FAILED", stacktrace="Traceback:\nValueError: boom"),
    )  # fmt: skip
    assert code == exit_codes.PROCEDURE_FAILED
    assert "- Procedure 1 stack trace:\nTraceback:\nValueError: boom" in out
    assert "execution failed" in out.splitlines()[-1]


def test_start_refuses_a_finished_procedure(server_url, device, capsys):
    oet(capsys, "create", "file:///a.py")
    device.finish(1, "FAILED", stacktrace="x")
    code, _, err = oet(capsys, "start")
    assert code == exit_codes.CONFLICT
    assert "The last procedure created is in FAILED state" in err
    code, _, err = oet(capsys, "start", "--pid=1")
    assert code == exit_codes.CONFLICT and "Cannot start a procedure in state FAILED." in err


def test_start_conflict_from_the_server_exits_5(server_url, device, capsys):
    oet(capsys, "create", "file:///a.py")
    oet(capsys, "create", "file:///b.py")
    assert oet(capsys, "start", "--pid=1", "--listen=False")[0] == 0
    code, _, err = oet(capsys, "start", "--pid=2", "--listen", "False")
    assert code == exit_codes.CONFLICT and "409 Conflict" in err


def test_stop_the_running_procedure(server_url, device, capsys):
    code, out, _ = oet(capsys, "stop")
    assert (code, out.strip()) == (0, "No procedures to stop")
    oet(capsys, "create", "file:///a.py")
    oet(capsys, "start", "--listen=False")
    code, out, _ = oet(capsys, "stop", "--run_abort")
    assert code == 0
    assert out.strip() == "Successfully stopped script with ID 1 and aborted subarray activity"
    assert ("Stop", {"procedure_id": 1, "run_abort": True}) in device.calls
    code, out, _ = oet(capsys, "procedure", "stop", "--pid=1")
    assert out.strip() == "Cannot stop script with ID 1: Script is not running"


def test_describe_shows_history_arguments_git_and_stack_trace(server_url, device, capsys):
    oet(capsys, "create", "git://s.py", "--git_repo=https://g/r.git", "--git_commit=abc123", "x")
    oet(capsys, "start", "--listen=False", "--k=2")
    device.finish(1, "FAILED", stacktrace="Traceback (most recent call last):\nKeyError: 'k'")
    code, out, _ = oet(capsys, "describe")
    assert code == 0
    assert f"{server_url}/procedures/1" in out
    assert "RUNNING 1" in out
    assert out.index("CREATING") < out.index("RUNNING 1") < out.index("FAILED")
    assert "init" in out and "['x']" in out and "main" in out and "{'k': 2}" in out
    assert "https://g/r.git" in out and "abc123" in out
    assert out.rstrip().endswith(
        "Stack Trace:\n------------\nTraceback (most recent call last):\nKeyError: 'k'"
    )


def test_listen_prints_readable_lines_and_ctrl_c_exits_cleanly(
    server_url, device, capsys, monkeypatch
):
    real_events = OetHttp.events

    def events_then_ctrl_c(self, *args, **kwargs):
        for count, event in enumerate(real_events(self, *args, on_open=produce, **kwargs), 1):
            yield event
            if count == 3:
                raise KeyboardInterrupt

    def produce():
        device.announce(4, "first")
        device.emit("script.log", procedure_id=4, level="INFO", logger="s", message="logged")
        device.emit("sb.lifecycle.allocated", sb_id="sbi-1")

    monkeypatch.setattr(OetHttp, "events", events_then_ctrl_c)
    code, out, err = oet(capsys, "listen")
    assert code == 0 and err == ""
    assert out.splitlines() == [
        "- Script message: first",
        "- Script log INFO s: logged",
        "- Resources allocated using SB sbi-1",
    ]


def test_server_down_is_one_line_and_exit_3(capsys, monkeypatch):
    monkeypatch.setenv("OET_REST_URI", "http://127.0.0.1:9/api/v1.0")
    code, _out, err = oet(capsys, "list")
    assert code == exit_codes.UNREACHABLE
    assert err.startswith("Error: Cannot reach the OET REST server at http://127.0.0.1:9/api/v1.0")
    assert len(err.strip().splitlines()) == 1


def test_older_url_settings_ending_in_procedures_still_work(server_url, capsys):
    code, _, _ = oet(capsys, "--server-url", f"{server_url}/procedures", "list")
    assert code == 0


SBD = {
    "sbd_id": "sbd-c-1",
    "activities": {"observe": {"kind": "filesystem", "path": "file:///scripts/observe.py"}},
}


def test_activity_run_follows_its_procedure_and_list_describe(server_url, device, capsys):
    device.sbds["sbd-c-1"] = SBD

    def finish(pid):
        device.set_state(pid, "RUNNING")
        device.finish(pid)

    code, out, err = follow_activity(capsys, device, finish)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID",
        "Activity",
        "SB",
        "ID",
        "Creation",
        "Time",
        "Procedure",
        "ID",
        "State",
    ]
    assert lines[2].split()[:3] == ["1", "observe", "sbd-c-1"]
    assert lines[-1].endswith("execution complete")
    sent = next(arg for name, arg in device.calls if name == "RunActivity")
    assert sent["script_args"] == {"main": {"args": [], "kwargs": {"n": 2}}}
    code, out, _ = oet(capsys, "activity", "list")
    assert code == 0 and "observe" in out
    code, out, _ = oet(capsys, "activity", "describe", "--aid=1")
    assert code == 0 and "sbi-fake-00001" in out
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "Activity", "SB", "ID", "Procedure", "ID", "State"]
    assert lines[2].split()[:3] == ["1", "observe", "sbd-c-1"]
    assert "Prepare Only" in out and "Script Arguments" in out
    assert any(line.split() == ["main", "[]", "{}"] for line in lines)  # the fake's arguments


def follow_activity(capsys, device, finish):
    def script_side():
        wait_until(lambda: device.activities)
        finish(device.activities[1]["procedure_id"])

    helper = threading.Thread(target=script_side)
    helper.start()
    try:
        return oet(
            capsys, "activity", "run", "observe", "sbd-c-1",
            '--script_args={"main": {"kwargs": {"n": 2}}}',
        )  # fmt: skip
    finally:
        helper.join()


def test_activity_errors_are_one_line(server_url, device, capsys):
    code, _, err = oet(capsys, "activity", "run", "observe", "sbd-none", "--listen=False")
    assert code == exit_codes.NOT_FOUND and err.strip() == (
        "Error: Server encountered error 404 Not Found: ResourceNotFound: no SBD 'sbd-none'"
    )
    code, _, err = oet(capsys, "activity", "run", "observe", "x", "--script_args={bad")
    assert code == exit_codes.USAGE and "--script_args is not valid JSON" in err


def test_device_without_activities_is_one_line_and_exit_7(server_url, device, capsys):
    device.activity_support = False
    code, _, err = oet(capsys, "activity", "list")
    assert code == exit_codes.SERVER_ERROR
    assert err.startswith("Error: Server encountered error 501 Not Implemented: NotImplemented:")


@pytest.mark.parametrize(
    "argv",
    [
        (), ("procedure",), ("activity",), ("create",), ("list",), ("start",), ("stop",),
        ("describe",), ("listen",), ("procedure", "create"), ("procedure", "start"),
        ("activity", "run"), ("activity", "list"), ("activity", "describe"),
    ],
)  # fmt: skip
def test_every_command_has_help(capsys, argv):
    code, out, _ = oet(capsys, *argv, "--help")
    assert code == 0 and "Usage: oet" in out
