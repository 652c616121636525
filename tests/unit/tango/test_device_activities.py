"""Activities and git scripts through a real OETDevice server (real engine, real workers).

One server per module (``server`` below overrides the conftest's to add the SB store, git and
environment settings); each test leaves no procedure running. Git repositories are local and
the only dependency is a wheel the test builds, so everything works offline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import tango

from ska_oso_oet.tango.ska import ResultCode, TaskStatus
from tests.support.gitrepos import LocalRepo, build_wheel, make_repo
from tests.support.lrc_client import LrcClient, expect_rejected
from tests.support.tango_events import EventTracer, close_hubs
from tests.support.tango_server import DeviceServerProcess

from .conftest import DEVICE, SERVER_COMMAND

pytestmark = pytest.mark.timeout(180)

SBD_ID = "sbd-t0001-20261121-00001"
GREETER = (
    "import oettiny\n\n\ndef init(subarray_id=1):\n    pass\n\n\n"
    "def main(*args, sb_json=None, sbi_id=None, **kwargs):\n"
    "    print(oettiny.greet(sbi_id))\n"
)
ECHO = """
import json
from pubsub import pub

def init(*args, **kwargs):
    global INIT
    INIT = {"args": list(args), "kwargs": kwargs}

def main(*args, sb_json=None, sbi_id=None, **kwargs):
    with open(sb_json) as stream:
        sbd = json.load(stream)
    pub.sendMessage("user.script.announce", msg_src="echo", msg=json.dumps(
        {"init": INIT, "main": {"args": list(args), "kwargs": kwargs},
         "sbd_id": sbd["sbd_id"], "targets": sbd["targets"], "sbi_id": sbi_id}))
"""


def decode(value: str) -> dict:
    return json.loads(value)


def reason_of(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.args[0].reason


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> LocalRepo:
    repo = make_repo(tmp_path_factory.mktemp("repo") / "scripts-repo")
    repo.commit(
        {"scripts/greet.py": GREETER, "requirements.txt": "oettiny==1.0\n"}, "greeting script"
    )
    return repo


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def properties(
    script_dir: Path, repo: LocalRepo, state: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    (script_dir / "echo.py").write_text(ECHO)
    (script_dir / "activity_fail.py").write_text(
        "def main(**kwargs):\n    raise ValueError('boom in main')\n"
    )
    (script_dir / "activity_forever.py").write_text(
        "import threading\nfrom pubsub import pub\n\n\ndef main(**kwargs):\n"
        "    pub.sendMessage('user.script.announce', msg_src='forever', msg='running')\n"
        "    threading.Event().wait()\n"
    )
    wheels = tmp_path_factory.mktemp("wheels")
    build_wheel(wheels, "oettiny", "1.0")
    caches = tmp_path_factory.mktemp("caches")
    return {
        "ScriptRoots": [str(script_dir)],
        "StateDatabase": str(state / "oet.sqlite"),
        "SBStore": str(state / "sbds"),
        "StopGraceSeconds": 1.0,
        "WarmWorkers": 1,
        "AllowedRepositories": [repo.url],
        "GitCacheDir": str(caches / "git"),
        "EnvironmentsDir": str(caches / "envs"),
        "PipOptions": [f"--no-index --find-links {wheels}"],
        "GitTimeout": 60.0,
    }


@pytest.fixture(scope="module")
def server(properties: dict) -> Iterator[DeviceServerProcess]:
    with DeviceServerProcess(
        SERVER_COMMAND, {DEVICE: properties}, "OETDeviceServer/activities"
    ) as process:
        yield process
    assert process.process is not None and process.process.returncode == 0, process.output()


def sbd_document(script_dir: Path, repo: LocalRepo) -> dict:
    return {
        "sbd_id": SBD_ID,
        "telescope": "ska_mid",
        "interface": "https://schema.skao.int/ska-oso-pdm-sbd/0.1",
        "metadata": {"version": 1, "created_by": "test"},
        "targets": [{"target_id": "M31"}, {"target_id": "3C286"}],
        "activities": {
            "observe": {
                "kind": "filesystem",
                "path": f"file://{script_dir / 'echo.py'}",
                "function_args": {
                    "init": {"args": [], "kwargs": {"subarray_id": 1, "mode": "sbd"}},
                    "main": {"args": [1, 2], "kwargs": {"a": "sbd", "b": "sbd"}},
                },
            },
            "forever": {
                "kind": "filesystem",
                "path": f"file://{script_dir / 'activity_forever.py'}",
            },
            "broken": {"kind": "filesystem", "path": f"file://{script_dir / 'activity_fail.py'}"},
            "greet": {
                "kind": "git",
                "repo": repo.url,
                "path": "git://scripts/greet.py",
                "branch": "main",
                "function_args": {"init": {"kwargs": {"subarray_id": 1}}},
            },
            "nobranch": {
                "kind": "git",
                "repo": repo.url,
                "path": "git://scripts/greet.py",
                "branch": "no-such-branch",
            },
        },
    }


@pytest.fixture
def sbd(device: tango.DeviceProxy, script_dir: Path, repo: LocalRepo) -> dict:
    document = sbd_document(script_dir, repo)
    assert decode(device.AddSbd(json.dumps(document))) == document
    return document


def run_activity(device: tango.DeviceProxy, name: str, timeout: float = 60.0, **body: object):
    request = {"activity_name": name, "sbd_id": SBD_ID, **body}
    return LrcClient(device).invoke("RunActivity", json.dumps(request), timeout=timeout)


def run_body(**fields: object) -> str:
    return json.dumps({"activity_name": "observe", "sbd_id": SBD_ID, **fields})


def topics_of(tracer: EventTracer, activity_id: int) -> list[str]:
    return [
        e["topic"]
        for e in map(json.loads, tracer.values("lastEvent"))
        if e["topic"].startswith("activity.") and e["activity_id"] == activity_id
    ]


class TestFilesystemActivities:
    def test_activity_runs_with_merged_arguments_and_publishes_its_lifecycle(
        self, device: tango.DeviceProxy, sbd: dict
    ) -> None:
        with EventTracer(device, ["lastEvent", "activities", "scriptMessage"]) as tracer:
            outcome = run_activity(
                device,
                "observe",
                script_args={
                    "init": {"kwargs": {"extra": 1}},
                    "main": {"args": [9], "kwargs": {"b": "request", "c": 3}},
                },
            )
            assert outcome.statuses[-1] == TaskStatus.COMPLETED, outcome
            assert outcome.result[0] == ResultCode.OK
            summary = decode(outcome.result[1])
            aid = summary["id"]
            tracer.wait_for(
                lambda v: any(a["id"] == aid and a["state"] == "COMPLETE" for a in decode(v)),
                "activities",
            )
            message = decode(tracer.wait_for(lambda v: "sbi_id" in v, "scriptMessage"))
        assert summary["state"] == "COMPLETE" and summary["command_id"] == outcome.command_id
        assert [s for s, _ in summary["activity_states"]] == [
            "TODO", "REQUESTED", "PREPARED", "RUNNING", "COMPLETE",
        ]  # fmt: skip
        main = summary["script_args"]["main"]
        assert main["args"] == [9]
        assert {k: main["kwargs"][k] for k in "abc"} == {"a": "sbd", "b": "request", "c": 3}
        assert main["kwargs"]["sbi_id"] == summary["sbi_id"]
        assert summary["script_args"]["init"]["kwargs"] == {
            "subarray_id": 1, "mode": "sbd", "extra": 1,
        }  # fmt: skip
        # the script really received the merged arguments and the SBD
        assert message["init"]["kwargs"] == {"subarray_id": 1, "mode": "sbd", "extra": 1}
        assert message["main"] == {"args": [9], "kwargs": {"a": "sbd", "b": "request", "c": 3}}
        assert message["sbd_id"] == SBD_ID and message["sbi_id"] == summary["sbi_id"]
        assert message["targets"] == sbd["targets"]
        assert topics_of(tracer, aid) == [
            "activity.lifecycle.requested",
            "activity.lifecycle.prepared",
            "activity.lifecycle.running",
            "activity.lifecycle.complete",
        ]
        procedure = decode(device.GetProcedure(str(summary["procedure_id"])))
        assert procedure["state"] == "COMPLETE"
        assert decode(device.GetActivity(str(aid)))["state"] == "COMPLETE"
        assert decode(device.GetActivity(outcome.command_id))["id"] == aid
        assert device.CheckLongRunningCommandStatus(outcome.command_id) == "COMPLETED"

    def test_prepare_only_stops_at_prepared_then_start_runs_it(
        self, device: tango.DeviceProxy, sbd: dict
    ) -> None:
        prepared = run_activity(device, "observe", prepare_only=True)
        assert prepared.result[0] == ResultCode.OK
        summary = decode(prepared.result[1])
        assert summary["state"] == "PREPARED" and summary["prepare_only"] is True
        pid = summary["procedure_id"]
        assert decode(device.GetProcedure(str(pid)))["state"] == "READY"
        with EventTracer(device, "activities") as tracer:
            started = LrcClient(device).invoke("Start", json.dumps({"procedure_id": pid}))
            assert started.result[0] == ResultCode.OK
            tracer.wait_for(
                lambda v: any(
                    a["id"] == summary["id"] and a["state"] == "COMPLETE" for a in decode(v)
                ),
                "activities",
            )
        final = decode(device.GetActivity(str(summary["id"])))
        assert [s for s, _ in final["activity_states"]][-3:] == ["PREPARED", "RUNNING", "COMPLETE"]

    def test_failing_script_fails_the_activity_with_the_stack_trace(
        self, device: tango.DeviceProxy, sbd: dict
    ) -> None:
        outcome = run_activity(device, "broken")
        assert outcome.statuses[-1] == TaskStatus.FAILED
        assert outcome.result[0] == ResultCode.FAILED
        assert "boom in main" in outcome.result[1] and "broken" in outcome.result[1]
        assert decode(device.GetActivity(outcome.command_id))["state"] == "FAILED"
        assert device.state() == tango.DevState.ON and device.healthState == 0

    def test_stopped_activity_completes_aborted(self, device: tango.DeviceProxy, sbd: dict) -> None:
        with EventTracer(device, ["_lrcEvent", "scriptMessage"]) as tracer:
            (_,), (command_id,) = device.RunActivity(
                json.dumps({"activity_name": "forever", "sbd_id": SBD_ID})
            )
            tracer.wait_for(lambda v: v == "running", "scriptMessage")
            # a second activity cannot start while this one runs: refused, nothing created
            before = decode(device.activities)
            message = expect_rejected(
                device, "RunActivity", json.dumps({"activity_name": "observe", "sbd_id": SBD_ID})
            )
            assert message.startswith("OET_STATE_CONFLICT: ")
            LrcClient(device).invoke("Stop", "{}")
            final = tracer.wait_for(
                lambda v: v[0] == command_id and "result" in json.loads(v[1]), "_lrcEvent"
            )
        result = json.loads(final[1])["result"]
        assert result[0] == ResultCode.ABORTED and decode(result[1])["state"] == "STOPPED"
        assert [a["id"] for a in decode(device.activities)][: len(before)] == [
            a["id"] for a in before
        ]

    @pytest.mark.parametrize(
        ("argument", "reason"),
        [
            (run_body(activity_name="nope"), "OET_INVALID_REQUEST"),
            (json.dumps({"activity_name": "observe"}), "OET_INVALID_REQUEST"),
            ("{not json", "OET_INVALID_REQUEST"),
            (run_body(x=1), "OET_INVALID_REQUEST"),
            (run_body(script_args={"main": 3}), "OET_INVALID_REQUEST"),
            (run_body(script_args={"main": {"args": 3}}), "OET_INVALID_REQUEST"),
            (run_body(prepare_only="yes"), "OET_INVALID_REQUEST"),
        ],
    )
    def test_bad_requests_are_refused_and_create_nothing(
        self, device: tango.DeviceProxy, sbd: dict, argument: str, reason: str
    ) -> None:
        activities, procedures = device.activities, device.procedures
        finished = len(device.lrcFinished)
        with pytest.raises(tango.DevFailed) as excinfo:
            device.RunActivity(argument)
        assert reason_of(excinfo) == reason
        assert excinfo.value.args[0].desc
        assert device.activities == activities and device.procedures == procedures
        assert len(device.lrcFinished) == finished

    def test_an_unknown_sbd_is_rejected_and_creates_nothing(
        self, device: tango.DeviceProxy, sbd: dict
    ) -> None:
        activities, procedures = device.activities, device.procedures
        message = expect_rejected(device, "RunActivity", run_body(sbd_id="sbd-none"))
        assert message.startswith("OET_NOT_FOUND: ") and "sbd-none" in message
        assert device.activities == activities and device.procedures == procedures

    def test_sbd_documents_are_validated_and_read_back(
        self, device: tango.DeviceProxy, sbd: dict
    ) -> None:
        assert decode(device.GetSbd(SBD_ID)) == sbd
        for bad in ("{not json", "[]", '{"sbd_id": "x y", "activities": {}}',
                    '{"sbd_id": "sbd-1", "activities": {"a": {"kind": "ftp", "path": "x"}}}'):  # fmt: skip
            with pytest.raises(tango.DevFailed) as excinfo:
                device.AddSbd(bad)
            assert reason_of(excinfo) == "OET_INVALID_REQUEST", bad
        with pytest.raises(tango.DevFailed) as excinfo:
            device.GetSbd("sbd-none")
        assert reason_of(excinfo) == "OET_NOT_FOUND"
        with pytest.raises(tango.DevFailed) as excinfo:
            device.GetActivity("99999")
        assert reason_of(excinfo) == "OET_NOT_FOUND"


class TestGit:
    def test_git_activity_with_its_own_environment(
        self, device: tango.DeviceProxy, sbd: dict, repo: LocalRepo
    ) -> None:
        with EventTracer(device, "lastEvent") as tracer:
            outcome = run_activity(device, "greet", create_env=True, timeout=120)
            assert outcome.result[0] == ResultCode.OK, outcome.result
            summary = decode(outcome.result[1])
            pid = summary["procedure_id"]
            tracer.wait_for(
                lambda v: (
                    decode(v)["topic"] == "script.stdout"
                    and decode(v)["procedure_id"] == pid
                    and decode(v)["stream"] == "stdout"
                ),
                "lastEvent",
            )
            lines = [
                e["line"]
                for e in map(json.loads, tracer.values("lastEvent"))
                if e["topic"] == "script.stdout"
                and e["procedure_id"] == pid
                and e["stream"] == "stdout"
            ]
        assert lines == [f"hello {summary['sbi_id']} from oettiny 1.0"]
        procedure = decode(device.GetProcedure(str(pid)))
        assert procedure["script"]["git_args"]["git_commit"] == repo.head()
        assert procedure["script"]["create_env"] is True
        assert "PREP_ENV" in [s for s, _ in procedure["history"]["process_states"]]

    def test_git_prepare_with_create_env_through_the_device(
        self, device: tango.DeviceProxy, repo: LocalRepo
    ) -> None:
        request = {
            "script": {
                "script_type": "git",
                "script_uri": "git://scripts/greet.py",
                "git_args": {"git_repo": repo.url, "git_branch": "main"},
                "create_env": True,
            }
        }
        prepared = LrcClient(device).invoke("Prepare", json.dumps(request), timeout=120)
        assert prepared.result[0] == ResultCode.OK, prepared.result
        summary = decode(prepared.result[1])
        states = [s for s, _ in summary["history"]["process_states"]]
        assert states[:4] == ["CREATING", "IDLE", "PREP_ENV", "IDLE"] and states[-1] == "READY"
        assert summary["script"]["git_args"]["git_commit"] == repo.head()
        started = LrcClient(device).invoke("Start", json.dumps({"procedure_id": summary["id"]}))
        assert started.result[0] == ResultCode.OK

    def test_git_failures_through_the_device(self, device: tango.DeviceProxy, sbd: dict) -> None:
        request = {
            "script": {
                "script_type": "git",
                "script_uri": "git://scripts/greet.py",
                "git_args": {"git_repo": "https://evil.example/r.git"},
            }
        }
        with pytest.raises(tango.DevFailed) as excinfo:
            device.Prepare(json.dumps(request))
        assert reason_of(excinfo) == "OET_INVALID_REQUEST"
        assert "not allowed" in excinfo.value.args[0].desc

        outcome = run_activity(device, "nobranch")
        assert outcome.result[0] == ResultCode.FAILED
        assert "no-such-branch" in outcome.result[1]
        assert device.state() == tango.DevState.ON and device.healthState == 0


def test_activity_history_survives_a_server_restart(
    server: DeviceServerProcess, module_proxy: tango.DeviceProxy, properties: dict
) -> None:
    """Runs last: it stops the module's server and starts a new one on the same state."""
    before = decode(module_proxy.activities)
    assert len(before) >= 3, "the module's tests ran activities"
    close_hubs()
    assert server.stop() == 0, server.output()
    with DeviceServerProcess(
        SERVER_COMMAND, {DEVICE: properties}, "OETDeviceServer/activities"
    ) as restarted:
        proxy = restarted.proxy(DEVICE)
        after = decode(proxy.activities)
        assert decode(proxy.GetActivity(str(before[-1]["id"]))) == before[-1]
        assert decode(proxy.GetSbd(SBD_ID))["sbd_id"] == SBD_ID
    assert after == before
