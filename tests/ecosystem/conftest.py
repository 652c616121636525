"""The embedded OET stack that the ecosystem tools (tangogql, itango, dsconfig) are tried on.

A real Tango database (``PyDatabaseds`` on sqlite) with ``oso/oet/1`` registered and a real
``OETDeviceServer``, started with the same functions ``oet-stack`` uses, once per session.
The tools reach it the way they reach any Tango facility: through ``TANGO_HOST``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tango

from ska_oso_oet import stack

DEVICE = "oso/oet/1"
REPO = Path(__file__).resolve().parents[2]

SCRIPTS = {
    "announce.py": """
from pubsub import pub

def init(subarray_id=1):
    global where
    where = f"subarray {subarray_id}"

def main(count=3):
    for i in range(count):
        pub.sendMessage("user.script.announce", msg_src="announce", msg=f"scan {i} on {where}")
""",
}


@dataclass
class EcosystemStack:
    tango_host: str
    data_dir: Path
    script_dir: Path
    env: dict[str, str]

    def proxy(self, name: str = DEVICE) -> tango.DeviceProxy:
        proxy = tango.DeviceProxy(f"tango://{self.tango_host}/{name}")
        proxy.set_timeout_millis(10_000)
        return proxy

    def prepare_body(self, script: str = "announce.py") -> str:
        uri = f"file://{self.script_dir / script}"
        return json.dumps({"script": {"script_type": "filesystem", "script_uri": uri}})


@pytest.fixture(scope="session")
def oet_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EcosystemStack]:
    script_dir = tmp_path_factory.mktemp("eco-scripts")
    for name, text in SCRIPTS.items():
        (script_dir / name).write_text(text)
    data_dir = tmp_path_factory.mktemp("eco-stack")
    options: argparse.Namespace = stack.build_parser().parse_args(
        ["--subarrays", "1", "--data-dir", str(data_dir), "--scripts", str(script_dir)]
    )
    processes = stack.Stack()
    env = {**os.environ, "OET_WARM_WORKERS": "1"}
    try:
        tango_host, _ = stack.start_registered_database(options, processes, env)
        server = stack.start_device_server(data_dir, options.host, env)
        processes.add(stack.SERVER, server)
        stack.wait_for_devices(tango_host, [DEVICE], server, data_dir)
        yield EcosystemStack(tango_host, data_dir, script_dir, env)
    finally:
        processes.stop()


def require_executable(name: str) -> str:
    """Path of a console script of the project's virtualenv, or skip the test."""
    import sys

    candidate = Path(sys.executable).with_name(name)
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (pip install -e '.[ecosystem]')")
    return found
