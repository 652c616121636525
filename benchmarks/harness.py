"""The stack under test and the clients that measure it.

:class:`BenchStack` runs ``oet-stack`` (Tango database on sqlite, ``OETDeviceServer`` with 16
devices, REST gateway) as a subprocess, exactly as a user starts it, plus the minimal
:mod:`baseline device <benchmarks.baseline_device>` registered in the same database.
:class:`EventLog` collects change events with their arrival time; :class:`OetClient` drives
one ``OETDevice`` through a ``DeviceProxy`` and waits on its ``lastEvent`` change events.

Timestamps are ``time.perf_counter()`` in this (the client) process: every figure is what a
client sees, from just before it sends a request to the arrival of the event that answers it.
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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: A client that must absorb long event bursts raises its ZMQ buffer (docs/tango.md).
os.environ.setdefault("TANGO_EVENT_BUFFER_HWM", "200000")

import tango  # (after the buffer setting)

from ska_oso_oet.vocabulary import FINAL_STATES, ProcedureState

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE / "scripts"
SUBARRAYS = 16
#: Short grace so that the SIGTERM-ignoring case of P3 takes half a second, not three.
STOP_GRACE_SECONDS = 0.5
BASELINE_DEVICE = "bench/baseline/1"
START_TIMEOUT = 120.0


def warm_workers() -> str:
    """The warm pool of the benchmark's device server: the product's (``WarmWorkers`` of
    ``deviceservers/oet.json``), or OET_BENCH_WARM_WORKERS to compare sizes."""
    chosen = os.environ.get("OET_BENCH_WARM_WORKERS")
    if chosen:
        return chosen
    config = json.loads((HERE.parent / "deviceservers" / "oet.json").read_text())
    devices = config["servers"]["OETDeviceServer"]["oet"]["OETDevice"]
    return str(devices["oso/oet/1"]["properties"]["WarmWorkers"][0])


def script_uri(name: str) -> str:
    return f"file://{SCRIPTS / name}"


class BenchStack:
    """``oet-stack --subarrays 16`` and the baseline device, in a temporary folder."""

    def __init__(self, subarrays: int = SUBARRAYS):
        self.subarrays = subarrays
        self._tmp = tempfile.TemporaryDirectory(prefix="oet-bench-")
        self.data_dir = Path(self._tmp.name)
        #: Where benchmark git repositories live (allowed by the devices).
        self.git_repos = self.data_dir / "git-bench"
        self.tango_host = ""
        self.rest_url = ""
        self.output: list[str] = []
        self._stack: subprocess.Popen[str] | None = None
        self._baseline: subprocess.Popen[bytes] | None = None

    # -- start -------------------------------------------------------------------------------
    def start(self) -> BenchStack:
        config = self.data_dir / "oet.json"
        config.write_text(json.dumps(self._dsconfig()))
        command = [
            sys.executable, "-m", "ska_oso_oet.stack", "--subarrays", str(self.subarrays),
            "--data-dir", str(self.data_dir / "stack"), "--config", str(config),
            "--scripts", str(SCRIPTS), "--rest-port", "0", "--rest-host", "127.0.0.1",
        ]  # fmt: skip
        self._stack = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            cwd=self.data_dir,
        )
        deadline = time.monotonic() + START_TIMEOUT
        assert self._stack.stdout is not None
        for line in self._stack.stdout:
            self.output.append(line.rstrip())
            if line.startswith("TANGO_HOST="):
                self.tango_host = line.split("=", 1)[1].strip()
            match = re.match(r"REST API (\S+) \(fronting oso/oet/1\)", line)
            if match:
                self.rest_url = match.group(1)
            if "Ctrl-C stops the stack" in line or time.monotonic() > deadline:
                break
        if not (self.tango_host and self.rest_url):
            self.stop()
            raise RuntimeError("oet-stack did not start:\n" + "\n".join(self.output[-30:]))
        threading.Thread(target=self._drain, daemon=True).start()
        self._start_baseline()
        return self

    def _dsconfig(self) -> dict[str, Any]:
        devices = {
            f"oso/oet/{n}": {
                "properties": {
                    "SubarrayId": [str(n)],
                    "HistorySize": ["10"],
                    "StopGraceSeconds": [str(STOP_GRACE_SECONDS)],
                    "WarmWorkers": [warm_workers()],
                    # G2's local repositories and their file:// dependencies (offline).
                    "AllowedRepositories": [f"{self.git_repos.as_uri()}/*"],
                    "PipOptions": ["--no-index"],
                }
            }
            for n in range(1, self.subarrays + 1)
        }
        return {"servers": {"OETDeviceServer": {"oet": {"OETDevice": devices}}}}

    def _drain(self) -> None:
        assert self._stack is not None and self._stack.stdout is not None
        for line in self._stack.stdout:
            self.output.append(line.rstrip())

    def _start_baseline(self) -> None:
        host, port = self.tango_host.rsplit(":", 1)
        db = tango.Database(host, int(port))
        info = tango.DbDevInfo()
        info.name, info._class, info.server = BASELINE_DEVICE, "BenchBaseline", "BenchBaseline/b"
        db.add_device(info)
        # the same server-side event buffer as OETDeviceServer, so that bursts compare fairly
        env = {**os.environ, "TANGO_HOST": self.tango_host, "TANGO_DS_EVENT_BUFFER_HWM": "200000"}
        log = (self.data_dir / "baseline.log").open("wb")
        self._baseline = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "baseline_device.py"),
                "b",
                "-ORBendPoint",
                f"giop:tcp:{host}:0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=self.data_dir,
        )
        log.close()
        proxy = tango.DeviceProxy(self.trl(BASELINE_DEVICE))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                proxy.ping()
                return
            except tango.DevFailed:
                if self._baseline.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the baseline device did not start") from None
                time.sleep(0.1)  # waiting for a child process to come up

    # -- use ---------------------------------------------------------------------------------
    def trl(self, device: str) -> str:
        return f"tango://{self.tango_host}/{device}"

    def pids(self) -> dict[str, int]:
        """Pids of the device server and the gateway (for profiling)."""
        found = {}
        for name, pattern in (
            ("OETDeviceServer", "ska_oso_oet.tango.server"),
            ("gateway", "ska_oso_oet.rest.server"),
            ("baseline", "baseline_device.py"),
        ):
            out = subprocess.run(
                ["pgrep", "-f", pattern], capture_output=True, text=True
            ).stdout.split()
            mine = [int(p) for p in out if _in_tree(int(p), self.data_dir)]
            if mine:
                found[name] = mine[0]
        return found

    # -- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        for process, sig in ((self._baseline, signal.SIGTERM), (self._stack, signal.SIGINT)):
            if process is None or process.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._tmp.cleanup()

    def __enter__(self) -> BenchStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _in_tree(pid: int, data_dir: Path) -> bool:
    """True if the process runs from this stack's folder (other stacks may run meanwhile)."""
    try:
        return Path(f"/proc/{pid}/cwd").resolve() == data_dir.resolve()
    except OSError:
        return False


class EventLog:
    """Change events of one attribute, with arrival times; parsed lazily by whoever waits,
    so the Tango callback thread only appends (it must keep up with 20,000 events/s)."""

    def __init__(self, decode: Callable[[Any], Any] = json.loads):
        self._decode = decode
        self._changed = threading.Condition()
        self.raw: list[tuple[float, Any]] = []
        self._parsed: dict[int, Any] = {}
        self.errors: list[str] = []

    def __call__(self, event: tango.EventData) -> None:
        arrival = time.perf_counter()
        with self._changed:
            if event.err:
                self.errors.append(event.errors[0].reason)
            else:
                self.raw.append((arrival, event.attr_value.value))
            self._changed.notify_all()

    def add(self, value: Any, arrival: float | None = None) -> None:
        """Record a value that arrived by other means (an SSE message)."""
        arrival = time.perf_counter() if arrival is None else arrival
        with self._changed:
            self.raw.append((arrival, value))
            self._changed.notify_all()

    def mark(self) -> int:
        with self._changed:
            return len(self.raw)

    def entry(self, index: int) -> tuple[float, Any]:
        """(arrival time, decoded value or None) of event ``index``."""
        with self._changed:
            return self.raw[index][0], self._parsed_at(index)

    def _parsed_at(self, index: int) -> Any:
        if index not in self._parsed:
            value = self.raw[index][1]
            try:
                self._parsed[index] = self._decode(value) if value else None
            except ValueError:
                self._parsed[index] = None
        return self._parsed[index]

    def wait_for(
        self,
        predicate: Callable[[Any], bool],
        start: int,
        timeout: float = 30.0,
        hint: str | None = None,
    ) -> tuple[int, float, Any]:
        """(index, arrival time, decoded value) of the first event from ``start`` on that
        matches ``predicate``; raises TimeoutError. With ``hint``, only values containing that
        text are decoded and tested: waiting for one event among a flood then costs the
        client next to nothing, so it does not slow the reception being measured."""
        position = start
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                while position < len(self.raw):
                    value = self.raw[position][1]
                    if hint is None or (isinstance(value, str) and hint in value):
                        data = self._parsed_at(position)
                        if data is not None and predicate(data):
                            return position, self.raw[position][0], data
                    position += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching event within {timeout} s")
                self._changed.wait(remaining)

    def wait_count(self, count: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.raw) >= count, timeout)


def subscribe(proxy: tango.DeviceProxy, attribute: str, log: EventLog) -> int:
    return proxy.subscribe_event(attribute, tango.EventType.CHANGE_EVENT, log)


def warm_up(proxy: tango.DeviceProxy, attribute: str, poke: Callable[[], None]) -> None:
    """Prove the event channel live: subscribe to ``attribute`` and ``poke`` the device until
    a pushed event arrives (a fresh subscription reaches the server asynchronously)."""
    arrived = threading.Event()

    def seen(event: tango.EventData) -> None:
        if not event.err:
            arrived.set()

    event_id = proxy.subscribe_event(attribute, tango.EventType.CHANGE_EVENT, seen)
    try:
        arrived.clear()  # the first (current-value) event arrives inside subscribe_event
        deadline = time.monotonic() + 60
        while True:
            poke()
            if arrived.wait(0.5):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"events of {proxy.dev_name()} never arrived")
    finally:
        proxy.unsubscribe_event(event_id)


STATECHANGE = "procedure.lifecycle.statechange"
PROCEDURE_CREATED = "procedure.lifecycle.created"
#: text that every statechange event (and no announce) contains: the hint of state waits
NEW_STATE = '"new_state"'


class OetClient:
    """One OETDevice seen through Tango: commands plus its ``lastEvent`` stream."""

    def __init__(self, stack: BenchStack, device: str):
        self.name = device
        self.proxy = tango.DeviceProxy(stack.trl(device))
        self.proxy.set_timeout_millis(10_000)
        self.events = EventLog()
        self.last_sent_wall = 0.0
        self.last_phases: dict[str, float] = {}
        self._event_id = subscribe(self.proxy, "lastEvent", self.events)

        def poke() -> None:
            self.proxy.loggingLevel = self.proxy.loggingLevel

        warm_up(self.proxy, "loggingLevel", poke)

    def close(self) -> None:
        with contextlib.suppress(tango.DevFailed):
            self.proxy.unsubscribe_event(self._event_id)

    # -- commands ----------------------------------------------------------------------------
    def prepare(self, script: str, init: dict[str, Any] | None = None) -> str:
        body: dict[str, Any] = {"script": {"script_type": "filesystem", "script_uri": script}}
        if init:
            body["script_args"] = {"init": {"args": [], "kwargs": init}}
        (_,), (command_id,) = self.proxy.Prepare(json.dumps(body))
        return command_id

    def start(self, procedure_id: int, **kwargs: Any) -> str:
        body: dict[str, Any] = {"procedure_id": procedure_id}
        if kwargs:
            body["script_args"] = {"main": {"args": [], "kwargs": kwargs}}
        (_,), (command_id,) = self.proxy.Start(json.dumps(body))
        return command_id

    def stop(self, procedure_id: int | None = None, grace: float | None = None) -> str:
        body: dict[str, Any] = {} if procedure_id is None else {"procedure_id": procedure_id}
        if grace is not None:
            body["grace"] = grace
        (_,), (command_id,) = self.proxy.Stop(json.dumps(body))
        return command_id

    # -- events ------------------------------------------------------------------------------
    def procedure_of(self, command_id: str, start: int, timeout: float = 30.0) -> int:
        """The id of the procedure a Prepare created (from its ``created`` event)."""
        _, _, data = self.events.wait_for(
            lambda d: (
                d.get("topic") == PROCEDURE_CREATED
                and (d.get("result") or {}).get("command_id") == command_id
            ),
            start,
            timeout,
            hint=PROCEDURE_CREATED,
        )
        return int(data["procedure_id"])

    def wait_state(
        self, procedure_id: int, states: str | set[str], start: int, timeout: float = 30.0
    ) -> tuple[float, str]:
        """Arrival time and state of the first statechange of ``procedure_id`` into one of
        ``states`` (FAILED always ends the wait, as an error)."""
        wanted = {states} if isinstance(states, str) else set(states)

        def match(d: dict[str, Any]) -> bool:
            return (
                d.get("topic") == STATECHANGE
                and d.get("procedure_id") == procedure_id
                and (d.get("new_state") in wanted or d.get("new_state") == "FAILED")
            )

        _, arrival, data = self.events.wait_for(match, start, timeout, hint=NEW_STATE)
        if data["new_state"] not in wanted:
            raise RuntimeError(f"{self.name}: procedure {procedure_id} FAILED (wanted {wanted})")
        return arrival, data["new_state"]

    def prepare_ready(self, script: str, **init: Any) -> tuple[int, float]:
        """Prepare ``script`` and wait for READY: (procedure id, seconds)."""
        start = self.events.mark()
        sent = time.perf_counter()
        self.last_sent_wall = time.time()
        command_id = self.prepare(script, init)
        pid = self.procedure_of(command_id, start)
        arrival, _ = self.wait_state(pid, "READY", start)
        self.last_phases = self._phases(pid, start, arrival - sent)
        return pid, arrival - sent

    def _phases(self, pid: int, start: int, elapsed: float) -> dict[str, float]:
        """Where a prepare's time went, from the engine's timestamps of each state change
        (same machine clock): seconds from the request to each state, and from READY to the
        client seeing it."""
        phases: dict[str, float] = {}
        previous = self.last_sent_wall
        ready_at = None
        for index in range(start, self.events.mark()):
            data = self.events._parsed_at(index)
            if not data or data.get("procedure_id") != pid:
                continue
            if data.get("topic") == "procedure.lifecycle.created":
                stamp = data["result"]["history"]["process_states"][0][1]
                phases["request->CREATING"] = stamp - previous
                previous = stamp
            elif data.get("topic") == STATECHANGE:
                key = f"{data['previous_state']}->{data['new_state']}"
                phases[key] = phases.get(key, 0.0) + data["timestamp"] - previous
                previous = data["timestamp"]
                if data["new_state"] == "READY":
                    ready_at = data["timestamp"]
                    break
        if ready_at is not None:
            phases["READY->client"] = self.last_sent_wall + elapsed - ready_at
        return phases

    def stop_and_wait(self, procedure_id: int, grace: float | None = None) -> float:
        start = self.events.mark()
        sent = time.perf_counter()
        self.stop(procedure_id, grace)
        arrival, _ = self.wait_state(procedure_id, "STOPPED", start)
        return arrival - sent

    def stop_all(self, timeout: float = 30.0) -> None:
        """Stop every active procedure (clean slate between figures)."""
        ids, states = self.proxy.procedureIds, self.proxy.procedureStates
        ids, states = ([] if ids is None else list(ids)), ([] if states is None else list(states))
        for pid, state in zip(ids, states, strict=False):
            if state in FINAL_STATES or state == ProcedureState.UNKNOWN:
                continue
            start = self.events.mark()
            try:
                self.stop(int(pid))
            except tango.DevFailed:
                continue  # finished meanwhile
            with contextlib.suppress(TimeoutError, RuntimeError):
                self.wait_state(int(pid), {"STOPPED", "COMPLETE"}, start, timeout)
