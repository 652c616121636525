"""A real Tango database (PyDatabaseds on sqlite) and a real OETDeviceServer, per module.

Built from the same functions ``oet-stack`` uses, so the test drives the product as operators
run it; clients use only DeviceProxy with full Tango resource locators.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tango

from ska_oso_oet import stack
from tests.support.tango_events import close_hubs
from tests.unit.tango.conftest import write_scripts

DEVICES = ["oso/oet/1", "oso/oet/2"]


@dataclass
class RealStack:
    tango_host: str
    data_dir: Path
    script_dir: Path
    options: argparse.Namespace
    env: dict[str, str]
    processes: stack.Stack
    proxies: dict[str, tango.DeviceProxy] = field(default_factory=dict)

    def proxy(self, name: str) -> tango.DeviceProxy:
        """One proxy per device and server run, so event subscriptions are shared and kept."""
        if name not in self.proxies:
            proxy = tango.DeviceProxy(f"tango://{self.tango_host}/{name}")
            proxy.set_timeout_millis(10_000)
            self.proxies[name] = proxy
        return self.proxies[name]

    def body(self, script: str, **init_kwargs: object) -> str:
        request: dict = {
            "script": {
                "script_type": "filesystem",
                "script_uri": f"file://{self.script_dir / script}",
            }
        }
        if init_kwargs:
            request["script_args"] = {"init": {"args": [], "kwargs": init_kwargs}}
        return json.dumps(request)

    def start_server(self) -> None:
        server = stack.start_device_server(self.data_dir, self.options.host, self.env)
        self.processes.add(stack.SERVER, server)
        stack.wait_for_devices(self.tango_host, DEVICES, server, self.data_dir)

    def stop_server(self) -> int:
        close_hubs(self.proxies.values())
        self.proxies.clear()
        name, server = next((n, p) for n, p in self.processes.processes if n == stack.SERVER)
        stack.stop_process(server)
        self.processes.processes.remove((name, server))
        return server.returncode


@pytest.fixture(scope="module")
def real_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    script_dir = write_scripts(tmp_path_factory.mktemp("scripts"))
    data_dir = tmp_path_factory.mktemp("stack")
    options = stack.build_parser().parse_args(
        [
            "--subarrays",
            str(len(DEVICES)),
            "--data-dir",
            str(data_dir),
            "--scripts",
            str(script_dir),
            "--abort-script",
            f"file://{script_dir / 'abort.py'}",
        ]
    )
    processes = stack.Stack()
    env = {**os.environ, "OET_WARM_WORKERS": "1"}
    try:
        tango_host, _ = stack.start_registered_database(options, processes, env)
        real = RealStack(tango_host, data_dir, script_dir, options, env, processes)
        real.start_server()
        yield real
        close_hubs()
    finally:
        processes.stop()
