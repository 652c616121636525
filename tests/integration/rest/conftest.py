"""The real stack for gateway tests: PyDatabaseds on sqlite, OETDeviceServer, oet-gateway.

Each runs as its own process, exactly as in production, on free loopback ports. Fixtures are
module-scoped (starting the stack takes seconds); tests create their own procedures and leave
nothing running. Processes are stopped politely (SIGTERM), then killed, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tango
from httpx_sse import connect_sse

DEVICE = "oso/oet/1"
SERVER = "OETDeviceServer/resttest"
TIMEOUT = 60.0
PYTHON = sys.executable
BIN = Path(sys.executable).parent

SCRIPTS = {
    "hello.py": """
from pubsub import pub

def init(subarray_id=1, greeting="hello"):
    global GREETING
    GREETING = f"{greeting} from subarray {subarray_id}"

def main(count=3):
    for i in range(count):
        pub.sendMessage("user.script.announce", msg_src="hello", msg=f"{GREETING} #{i}")
""",
    "activity.py": """
import json
from pubsub import pub

def init(subarray_id=1):
    pass

def main(*args, sb_json=None, sbi_id=None, scans=1):
    with open(sb_json) as f:
        sbd_id = json.load(f)["sbd_id"]
    pub.sendMessage("user.script.announce", msg_src="activity", msg=f"{sbd_id} {sbi_id} x{scans}")
""",
    "fail.py": """
def main():
    raise ValueError("the script failed on purpose")
""",
    "forever.py": """
import time
from pubsub import pub

def main():
    pub.sendMessage("user.script.announce", msg_src="forever", msg="looping")
    while True:
        time.sleep(0.1)
""",
}


def wait_for(
    predicate: Callable[[], Any], timeout: float = TIMEOUT, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy (for process readiness only)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.05)


class ManagedProcess:
    """A subprocess with its output in a log file; stop() is SIGTERM, then SIGKILL."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path):
        self.name, self.command, self.env = name, command, env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self) -> None:
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes()[self._offset :].decode(errors="replace")
        return ""

    def wait_for_output(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.output()[-4000:]}")
            return re.search(pattern, self.output())

        return wait_for(found, timeout, f"{self.name} printing {pattern!r}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the group: scripts' workers too
        self.process.wait()


class Stack:
    """Database, device server and gateway of one test module."""

    def __init__(self, tmp: Path, tango_host: str):
        self.tmp, self.tango_host = tmp, tango_host
        self.scripts = tmp / "scripts"
        self.scripts.mkdir()
        for name, text in SCRIPTS.items():
            (self.scripts / name).write_text(text)
        # The processes get this test's settings only, whatever the calling environment holds.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("OET_REST_", "OET_"))}
        self.env = {**inherited, "TANGO_HOST": tango_host, "PYTHONUNBUFFERED": "1"}
        self.device_server = ManagedProcess(
            "device-server", [PYTHON, "-m", "ska_oso_oet.tango.server", SERVER.split("/")[1]],
            self.env, tmp,
        )  # fmt: skip
        self.gateway = ManagedProcess(
            "gateway",
            [PYTHON, "-m", "ska_oso_oet.rest.server", "--host", "127.0.0.1", "--port", "0",
             "--device", DEVICE],
            {**self.env, "OET_REST_KEEPALIVE_SECONDS": "1", "OET_REST_STOP_WAIT_SECONDS": "20"},
            tmp,
        )  # fmt: skip
        self.url = ""

    def script_uri(self, name: str) -> str:
        return f"file://{self.scripts / name}"

    def register_device(self) -> None:
        host, port = self.tango_host.split(":")
        db = tango.Database(host, int(port))
        info = tango.DbDevInfo()
        info.name, info._class, info.server = DEVICE, "OETDevice", SERVER
        db.add_device(info)
        db.put_device_property(
            DEVICE,
            {
                "ScriptRoots": [str(self.scripts)],
                "StateDatabase": [str(self.tmp / "history.sqlite")],
                "EnvironmentsDir": [str(self.tmp / "envs")],
                "GitCacheDir": [str(self.tmp / "git")],
                "StopGraceSeconds": ["2"],
                "WarmWorkers": ["1"],
            },
        )

    def start_device_server(self) -> None:
        self.device_server.start()
        self.start_device_server_wait()

    def start_device_server_wait(self) -> None:
        """Until the device answers (after a start or a restart)."""
        proxy = tango.DeviceProxy(f"tango://{self.tango_host}/{DEVICE}")

        def answering() -> bool:
            if self.device_server.process.poll() is not None:
                raise AssertionError(f"device server exited:\n{self.device_server.output()}")
            try:
                proxy.ping()
                return proxy.state() in (tango.DevState.ON, tango.DevState.RUNNING)
            except tango.DevFailed:
                return False

        wait_for(answering, what="device server answering")

    def start_gateway(self) -> None:
        self.gateway.start()
        match = self.gateway.wait_for_output(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")
        self.url = match.group(1) + "/api/v1.0"
        self.wait_gateway_connected()

    def wait_gateway_connected(self, timeout: float = TIMEOUT) -> None:
        def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.url}/procedures", timeout=5).status_code == 200
            return False

        wait_for(ready, timeout, "gateway reaching the device")

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


def start_database(tmp: Path) -> tuple[ManagedProcess, str]:
    """PyDatabaseds (pytango-db) on an sqlite file and a free port; returns it and TANGO_HOST."""
    env = {**os.environ, "PYTANGO_DATABASE_NAME": str(tmp / "tango_database.sqlite")}
    database = ManagedProcess(
        "database",
        [str(BIN / "PyDatabaseds"), "--port", "0", "--host", "127.0.0.1", "--print-host-port", "2"],
        env,
        tmp,
    )
    database.start()
    try:
        port = int(database.wait_for_output(r"Database DS listening on:.*, port=(\d+)\.").group(1))

        def answering() -> bool:
            with contextlib.suppress(tango.DevFailed):
                tango.Database("127.0.0.1", port).get_info()
                return True
            return False

        wait_for(answering, what="database answering")
    except BaseException:
        database.stop()
        raise
    return database, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    database, tango_host = start_database(tmp)
    stack = Stack(tmp, tango_host)
    try:
        stack.register_device()
        stack.start_device_server()
        stack.start_gateway()
        yield stack
    finally:
        stack.gateway.stop()
        stack.device_server.stop()
        database.stop()


class EventStream:
    """Collects ``/stream`` in a background thread; tests wait on conditions over it."""

    def __init__(self, url: str, last_event_id: str | None = None):
        self.url = url
        self.events: list[dict[str, Any]] = []
        self.ids: list[int] = []
        self.arrival: list[float] = []
        self.comments = 0
        self._changed = threading.Condition()
        self._opened = threading.Event()
        self._stop = threading.Event()
        self._headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> EventStream:
        self._thread.start()
        assert self._opened.wait(TIMEOUT), f"stream did not open: {self.error}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(10, read=5)) as http,
                connect_sse(http, "GET", f"{self.url}/stream", headers=self._headers) as source,
            ):
                for sse in source.iter_sse():
                    if self._stop.is_set():
                        return
                    if not sse.data:
                        self._opened.set()
                        continue
                    with self._changed:
                        self.events.append(json.loads(sse.data))
                        self.ids.append(int(sse.id))
                        self.arrival.append(time.perf_counter())
                        self._changed.notify_all()
        except BaseException as exc:
            self.error = exc
            with self._changed:
                self._changed.notify_all()

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        with self._changed:
            ok = self._changed.wait_for(
                lambda: self.error is not None or any(predicate(e) for e in self.events), timeout
            )
            match = next((e for e in self.events if predicate(e)), None)
        if match is None:
            topics = [(e.get("topic"), e.get("procedure_id")) for e in self.events][-20:]
            raise AssertionError(f"no such event (ok={ok}, error={self.error}); last: {topics}")
        return match

    def of(self, procedure_id: int) -> list[dict[str, Any]]:
        with self._changed:
            return [e for e in self.events if e.get("procedure_id") == procedure_id]


def is_event(topic: str, procedure_id: int, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda e: (
        e.get("topic") == topic
        and e.get("procedure_id") == procedure_id
        and all(e.get(k) == v for k, v in fields.items())
    )


class Telescope(Stack):
    """Several devices in several device servers behind one gateway: ``servers`` maps a server
    instance to the subarrays of its devices (``oso/oet/<n>``)."""

    def __init__(self, tmp: Path, tango_host: str, servers: dict[str, list[int]]):
        super().__init__(tmp, tango_host)
        self.servers = servers
        self.subarrays = sorted(n for numbers in servers.values() for n in numbers)
        self.device_servers = {
            instance: ManagedProcess(
                f"device-server-{instance}",
                [PYTHON, "-m", "ska_oso_oet.tango.server", instance],
                self.env,
                tmp,
            )
            for instance in servers
        }
        self.device_server = self.device_servers[next(iter(servers))]
        others = ",".join(f"oso/oet/{n}" for n in self.subarrays[1:])
        self.gateway = ManagedProcess(
            "gateway",
            [PYTHON, "-m", "ska_oso_oet.rest.server", "--host", "127.0.0.1", "--port", "0",
             "--device", f"oso/oet/{self.subarrays[0]}", "--devices", others],
            {**self.env, "OET_REST_KEEPALIVE_SECONDS": "1", "OET_REST_STOP_WAIT_SECONDS": "20",
             "OET_REST_RECONNECT_SECONDS": "0.5"},
            tmp,
        )  # fmt: skip

    def register_device(self) -> None:
        host, port = self.tango_host.split(":")
        db = tango.Database(host, int(port))
        for instance, numbers in self.servers.items():
            for n in numbers:
                info = tango.DbDevInfo()
                info.name, info._class = f"oso/oet/{n}", "OETDevice"
                info.server = f"OETDeviceServer/{instance}"
                db.add_device(info)
                db.put_device_property(
                    info.name,
                    {
                        "SubarrayId": [str(n)],
                        "ScriptRoots": [str(self.scripts)],
                        "StateDatabase": [str(self.tmp / f"history-{n}.sqlite")],
                        "EnvironmentsDir": [str(self.tmp / "envs")],
                        "GitCacheDir": [str(self.tmp / "git")],
                        "StopGraceSeconds": ["2"],
                        "WarmWorkers": ["1"],
                        "AbortScript": [f"file://{self.scripts / 'abort.py'}"],
                        "SBStore": [str(self.tmp / "sbds")],
                    },
                )

    def proxy(self, subarray: int) -> tango.DeviceProxy:
        return tango.DeviceProxy(f"tango://{self.tango_host}/oso/oet/{subarray}")

    def start_device_server(self, instance: str | None = None) -> None:
        for name in [instance] if instance else list(self.servers):
            self.device_servers[name].start()
        for name in [instance] if instance else list(self.servers):
            self.wait_device_server(name)

    def wait_device_server(self, instance: str) -> None:
        process = self.device_servers[instance]
        for n in self.servers[instance]:
            proxy = self.proxy(n)

            def answering(proxy: tango.DeviceProxy = proxy) -> bool:
                if process.process.poll() is not None:
                    raise AssertionError(f"device server exited:\n{process.output()}")
                try:
                    return proxy.state() in (tango.DevState.ON, tango.DevState.RUNNING)
                except tango.DevFailed:
                    return False

            wait_for(answering, what=f"oso/oet/{n} answering")

    def wait_gateway_connected(self, timeout: float = TIMEOUT) -> None:
        def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                health = httpx.get(self.url.replace("/api/v1.0", "/health"), timeout=5)
                return health.status_code == 200
            return False

        wait_for(ready, timeout, "gateway reaching every device")

    def stop(self) -> None:
        self.gateway.stop()
        for process in self.device_servers.values():
            process.stop()


ABORT_SCRIPT = """
from pubsub import pub

def init(subarray_id=1):
    global SUBARRAY
    SUBARRAY = subarray_id

def main():
    pub.sendMessage("user.script.announce", msg_src="abort", msg=f"aborted subarray {SUBARRAY}")
"""


STUBBORN_SCRIPT = """
import signal
import time
from pubsub import pub

def main():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a victim that ignores the stop
    pub.sendMessage("user.script.announce", msg_src="stubborn", msg="ignoring SIGTERM")
    while True:
        time.sleep(0.1)
"""


@pytest.fixture(scope="module")
def telescope(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Telescope]:
    """Subarrays 1 and 2 in one device server, 3 in another, one gateway in front."""
    tmp = tmp_path_factory.mktemp("telescope")
    database, tango_host = start_database(tmp)
    telescope = Telescope(tmp, tango_host, {"first": [1, 2], "second": [3]})
    (telescope.scripts / "abort.py").write_text(ABORT_SCRIPT)
    (telescope.scripts / "stubborn.py").write_text(STUBBORN_SCRIPT)
    try:
        telescope.register_device()
        telescope.start_device_server()
        telescope.start_gateway()
        yield telescope
    finally:
        telescope.stop()
        database.stop()
