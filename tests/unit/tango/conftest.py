"""A real OETDevice server (real engine, Tango file database) per test module."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tango

from tests.support.lrc_client import LrcClient
from tests.support.tango_events import close_hubs
from tests.support.tango_server import DeviceServerProcess

DEVICE = "oso/oet/1"
SERVER_COMMAND = [sys.executable, "-m", "ska_oso_oet.tango.server"]

SCRIPTS = {
    "hello.py": """
from pubsub import pub

def init(subarray_id=1):
    global greeting
    greeting = f"hello from subarray {subarray_id}"

def main(count=3):
    for i in range(count):
        pub.sendMessage("user.script.announce", msg_src="hello", msg=f"{greeting} #{i}")
""",
    "forever.py": """
import threading
from pubsub import pub

def main():
    pub.sendMessage("user.script.announce", msg_src="forever", msg="running")
    threading.Event().wait()
""",
    "many.py": """
from pubsub import pub

def main(count=1000):
    for i in range(count):
        pub.sendMessage("user.script.announce", msg_src="many", msg=i)
""",
    "fail_main.py": """
def main():
    raise ValueError("boom in main")
""",
    "fail_init.py": """
def init(subarray_id=1):
    raise RuntimeError("cannot initialise")

def main():
    pass
""",
    "abort.py": """
from pubsub import pub

def init(subarray_id=1):
    global subarray
    subarray = subarray_id

def main():
    pub.sendMessage("user.script.announce", msg_src="abort", msg=f"aborting subarray {subarray}")
""",
}


@pytest.fixture(scope="module")
def script_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_scripts(tmp_path_factory.mktemp("scripts"))


def write_scripts(folder: Path) -> Path:
    """The test scripts (:data:`SCRIPTS`) written into ``folder`` (made if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in SCRIPTS.items():
        (folder / name).write_text(text)
    return folder


@pytest.fixture(scope="module")
def log_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The device's LogFolder: where its file:: logging targets may write."""
    return tmp_path_factory.mktemp("device-logs").resolve()


@pytest.fixture(scope="module")
def server(
    script_dir: Path, tmp_path_factory: pytest.TempPathFactory, log_folder: Path
) -> Iterator[DeviceServerProcess]:
    properties = {
        "ScriptRoots": [str(script_dir)],
        "AbortScript": f"file://{script_dir / 'abort.py'}",
        "StateDatabase": str(tmp_path_factory.mktemp("state") / "oet.sqlite"),
        "StopGraceSeconds": 1.0,
        "WarmWorkers": 1,
        "LogFolder": str(log_folder),
    }
    env = {"OET_WARM_WORKERS": "1"}
    with DeviceServerProcess(
        SERVER_COMMAND, {DEVICE: properties}, "OETDeviceServer/unit", env=env
    ) as process:
        yield process
    assert process.process is not None and process.process.returncode == 0, process.output()


@pytest.fixture(scope="module")
def module_proxy(server: DeviceServerProcess) -> Iterator[tango.DeviceProxy]:
    """One proxy per module: its event subscriptions are shared and kept (see tango_events)."""
    yield server.proxy(DEVICE)
    close_hubs()


@pytest.fixture
def device(module_proxy: tango.DeviceProxy) -> Iterator[tango.DeviceProxy]:
    """The module's device, ONLINE; a script a failed test left running is stopped after it."""
    if module_proxy.adminMode != 0:
        module_proxy.adminMode = 0
    yield module_proxy
    # Not guarded by runningProcedureId: that attribute may lag a script started just now.
    module_proxy.adminMode = 0
    with contextlib.suppress(tango.DevFailed):  # OET_NOT_FOUND when nothing runs
        LrcClient(module_proxy).invoke("Stop", "{}")


def body(script_dir: Path, name: str, **init_kwargs: object) -> str:
    request: dict = {
        "script": {"script_type": "filesystem", "script_uri": f"file://{script_dir / name}"}
    }
    if init_kwargs:
        request["script_args"] = {"init": {"args": [], "kwargs": init_kwargs}}
    return json.dumps(request)
