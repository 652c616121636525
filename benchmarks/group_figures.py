"""Figure L1: linked groups (issue 14). A group of three subarrays, each OETDevice in a device
server of its own, the OETGroups device in another; a benchmark client subscribes to each
device's ``lastEvent``.

* member fails -> every other member STOPPED: from the arrival of the failing member's FAILED
  event to the arrival of the last STOPPED event of the others (same client clock);
* member's device server killed (SIGKILL) -> every other member STOPPED: from the kill.

The stack is its own (like S1/H1): database, three device servers, the groups server and the
baseline device. Baseline: the bare command -> change event round trip of the minimal device,
measured in the same run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tango

from .harness import HERE, OetClient, script_uri
from .stats import combine, latency
from .tango_figures import Baseline, Plan

GROUPS = "oso/oet/groups"
MEMBERS = (1, 2, 3)
START_TIMEOUT = 120.0
TARGET_MS = 100


class _Process:
    def __init__(self, name: str, command: list[str], env: dict[str, str], folder: Path):
        self.name, self.command, self.env = name, command, env
        self.log = folder / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True,
            )  # fmt: skip

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


class LinkedStack:
    """PyDatabaseds, one OETDeviceServer per member subarray, OETGroupsServer, baseline."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="oet-bench-linked-")
        self.folder = Path(self._tmp.name)
        self.tango_host = ""
        self.servers: dict[int, _Process] = {}
        self.others: list[_Process] = []

    def trl(self, device: str) -> str:
        return f"tango://{self.tango_host}/{device}"

    def __enter__(self) -> LinkedStack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OET_")}
        db_env = {**env, "PYTANGO_DATABASE_NAME": str(self.folder / "tango.sqlite")}
        database = _Process(
            "database",
            [str(Path(sys.executable).parent / "PyDatabaseds"), "--port", "0", "--host",
             "127.0.0.1", "--print-host-port", "2"],
            db_env, self.folder,
        )  # fmt: skip
        database.start()
        self.others.append(database)
        port = self._wait_output(database, r"Database DS listening on:.*, port=(\d+)\.")
        self.tango_host = f"127.0.0.1:{port}"
        env = {**env, "TANGO_HOST": self.tango_host}
        self._wait(lambda: tango.Database("127.0.0.1", int(port)).get_info(), "database")
        db = tango.Database("127.0.0.1", int(port))
        for n in MEMBERS:
            self._register(db, f"oso/oet/{n}", "OETDevice", f"OETDeviceServer/l{n}", {
                "SubarrayId": [str(n)], "ScriptRoots": [str(HERE / "scripts")],
                "StateDatabase": [str(self.folder / f"history-{n}.sqlite")],
                "StopGraceSeconds": ["0.5"], "WarmWorkers": ["2"],
            })  # fmt: skip
            self.servers[n] = _Process(
                f"server-{n}", [sys.executable, "-m", "ska_oso_oet.tango.server", f"l{n}"],
                env, self.folder,
            )  # fmt: skip
        self._register(db, GROUPS, "OETGroups", "OETGroupsServer/bench", {
            "OETDevices": [f"oso/oet/{n}" for n in MEMBERS],
            "StateDatabase": [str(self.folder / "groups.sqlite")],
        })  # fmt: skip
        self._register(db, "bench/baseline/1", "BenchBaseline", "BenchBaseline/b", {})
        groups = _Process(
            "groups", [sys.executable, "-m", "ska_oso_oet.tango.groups_server", "bench"],
            env, self.folder,
        )  # fmt: skip
        baseline = _Process(
            "baseline", [sys.executable, str(HERE / "baseline_device.py"), "b"],
            {**env, "TANGO_DS_EVENT_BUFFER_HWM": "200000"}, self.folder,
        )  # fmt: skip
        for process in (*self.servers.values(), groups, baseline):
            process.start()
        self.others += [groups, baseline]
        for n in MEMBERS:
            self.wait_device(f"oso/oet/{n}")
        self.wait_device(GROUPS)
        self.wait_device("bench/baseline/1")

    @staticmethod
    def _register(db: Any, name: str, cls: str, server: str, props: dict[str, list]) -> None:
        info = tango.DbDevInfo()
        info.name, info._class, info.server = name, cls, server
        db.add_device(info)
        if props:
            db.put_device_property(name, props)

    def _wait_output(self, process: _Process, pattern: str) -> str:
        def found() -> str | None:
            match = re.search(pattern, process.log.read_text(errors="replace"))
            return match.group(1) if match else None

        return self._wait(found, process.name)

    def wait_device(self, device: str) -> None:
        proxy = tango.DeviceProxy(self.trl(device))

        def answering() -> bool:
            proxy.ping()
            return proxy.state() in (tango.DevState.ON, tango.DevState.RUNNING)

        self._wait(answering, device)

    @staticmethod
    def _wait(predicate: Any, what: str) -> Any:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(tango.DevFailed, OSError):
                value = predicate()
                if value:
                    return value
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start")
            time.sleep(0.05)  # waiting for a child process to come up

    def restart(self, n: int) -> None:
        self.servers[n].kill()
        self.servers[n].start()
        self.wait_device(f"oso/oet/{n}")

    def stop(self) -> None:
        for process in [*self.servers.values(), *reversed(self.others)]:
            process.stop()
        self._tmp.cleanup()


def _linked_group(
    groups: tango.DeviceProxy, devs: dict[int, OetClient], fail_when: Path | None
) -> dict[int, int]:
    """Three READY members linked, then started; subarray -> procedure id."""
    pids = {n: dev.prepare_ready(script_uri("linked.py"))[0] for n, dev in devs.items()}
    groups.CreateGroup(json.dumps({"procedures": list(pids.values()), "force": False}))
    for n, dev in devs.items():
        start = dev.events.mark()
        kwargs = {"fail_when": str(fail_when)} if fail_when and n == MEMBERS[0] else {}
        dev.start(pids[n], **kwargs)
        dev.wait_state(pids[n], "RUNNING", start)
    return pids


def _last_stopped(devs: dict[int, OetClient], pids: dict[int, int], marks: dict[int, int],
                  skip: int) -> float:  # fmt: skip
    return max(devs[n].wait_state(pids[n], "STOPPED", marks[n])[0] for n in devs if n != skip)


def l1_linked_groups(plan: Plan) -> dict[str, Any]:
    """Halting of a linked group of three: after a member's failure and after a kill -9 of a
    member's device server."""
    with LinkedStack() as stack:
        base = Baseline(stack)  # type: ignore[arg-type]  # duck-typed: trl() only
        devs = {n: OetClient(stack, f"oso/oet/{n}") for n in MEMBERS}  # type: ignore[arg-type]
        groups = tango.DeviceProxy(stack.trl(GROUPS))
        groups.set_timeout_millis(10_000)
        floor = [base.ping_event() for _ in range(plan.n)]
        kind = "bare Tango command -> change event (minimal device)"
        try:
            failures = []
            for i in range(plan.n):
                trigger = stack.folder / f"fail-{i}"
                pids = _linked_group(groups, devs, trigger)
                marks = {n: dev.events.mark() for n, dev in devs.items()}
                time.sleep(plan.pace)  # the members' loops are running
                trigger.touch()
                failed, _ = devs[MEMBERS[0]].wait_state(pids[MEMBERS[0]], "FAILED", marks[1])
                failures.append(_last_stopped(devs, pids, marks, MEMBERS[0]) - failed)
            kills = []
            for i in range(max(1, plan.cold)):
                victim = MEMBERS[i % len(MEMBERS)]
                pids = _linked_group(groups, devs, None)
                marks = {n: dev.events.mark() for n, dev in devs.items()}
                time.sleep(plan.pace)
                killed = time.perf_counter()
                stack.servers[victim].kill()
                kills.append(_last_stopped(devs, pids, marks, victim) - killed)
                devs[victim].close()
                stack.restart(victim)
                devs[victim] = OetClient(stack, f"oso/oet/{victim}")  # type: ignore[arg-type]
        finally:
            for dev in devs.values():
                with contextlib.suppress(Exception):
                    dev.stop_all()
                    dev.close()
            base.close()
    target = f"median <= {TARGET_MS} ms"
    main = latency(failures, baseline=floor, target_ms=TARGET_MS, target=target,
                   baseline_kind=kind)  # fmt: skip
    parts = {
        "server_killed": latency(
            kills, baseline=floor, target_ms=TARGET_MS, target=target, baseline_kind=kind
        ),
    }
    return combine(main, parts)
