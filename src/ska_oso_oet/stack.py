"""``oet-stack``: the whole OET on one machine with one command.

1. starts, all at the same moment, a Tango database (``PyDatabaseds`` from pytango-db, on
   sqlite) on a free port, ``OETDeviceServer`` and the extra services (the REST gateway hooks
   in here, see :data:`SERVICES`): the device server and the gateway import while the database
   starts, then wait for its address (see :mod:`.stack_child`),
2. once the database answers, the device server registers the OET devices ``oso/oet/1..N``
   of the ``deviceservers/`` dsconfig file and starts them; the stack waits until every device
   answers and every service is ready,
3. prints ``TANGO_HOST`` and the device names, and runs until Ctrl-C or SIGTERM, when it stops
   everything in reverse order (scripts are stopped by the device server itself).

While it runs it supervises its children (:class:`Supervisor`): a device server or gateway that
dies is restarted, with back-off, while the others keep running (a gateway crash does not touch
the scripts running on the devices); the Tango database's death stops the whole stack, with
exit code 3 (:data:`EXIT_DATABASE_DIED`), since nothing works without it.

Everything lives under ``--data-dir`` (default ``var/oet-stack``): the Tango database, the
procedure and activity history of each device, the scheduling-block store shared by the devices
(``sbds/``, seeded with the repository's ``examples/sbds``) and the logs of each process.

What ``oet-stack`` prints on stdout (``TANGO_HOST=...``, the devices, the REST URLs) is its
output for people and scripts; its own log messages go to stderr in the SKA log format.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .logging_format import configure_process_logging

SERVER = "OETDeviceServer"
#: The stack's name for its Tango database process.
DATABASE = "PyDatabaseds"
#: Exit codes of ``oet-stack``: stopped on request / could not start / the database died.
EXIT_OK, EXIT_START_FAILED, EXIT_DATABASE_DIED = 0, 1, 3
INSTANCE = "oet"
DEVICE_CLASS = "OETDevice"
#: Linked observation groups (OETGroups), hosted by the same server.
GROUPS_DEVICE = "oso/oet/groups"
MAX_SUBARRAYS = 16
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
_PORT_LINE = re.compile(rb"Database DS listening on:.*, port=(\d+)\.")
_REPOSITORY = Path(__file__).resolve().parents[2]
#: Where the dsconfig file lives in a source checkout.
DEFAULT_CONFIG = _REPOSITORY / "deviceservers" / "oet.json"
#: The example scripts and SBDs of a source checkout (absent from an installed wheel).
EXAMPLE_SCRIPTS = _REPOSITORY / "scripts"
#: The example SBDs: OET_EXAMPLES_DIR (the container image sets it) or the source tree's.
EXAMPLE_SBDS = Path(os.environ.get("OET_EXAMPLES_DIR") or _REPOSITORY / "examples") / "sbds"
#: Placeholder in the example SBDs for the absolute path of the example scripts folder.
SCRIPTS_PLACEHOLDER = "${OET_EXAMPLE_SCRIPTS}"
#: Named explicitly: ``python -m ska_oso_oet.stack`` runs this module as ``__main__``.
LOGGER = logging.getLogger("ska_oso_oet.stack")
LOG_TAGS = "service:oet-stack"


class TangoHost:
    """The database's ``HOST:PORT``, known once it listens. Children started before that (to
    import meanwhile, see :mod:`.stack_child`) are handed it then."""

    def __init__(self, value: str | None = None) -> None:
        self._lock = threading.Lock()
        self._known = threading.Event()
        self._value = value
        self._error: str | None = None
        self._waiting: list[tuple[ChildProcess, dict[str, Any]]] = []
        if value is not None:
            self._known.set()

    def set(self, value: str) -> None:
        with self._lock:
            self._value, waiting, self._waiting = value, self._waiting, []
            self._known.set()
        for process, extra in waiting:
            process.send_setup(value, extra)

    def fail(self, reason: str) -> None:
        """The database will not come: :meth:`get` raises from now on."""
        with self._lock:
            self._error = reason
            self._known.set()

    def get(self, timeout: float = START_TIMEOUT) -> str:
        if not self._known.wait(timeout) or self._value is None:
            raise RuntimeError(self._error or "the Tango database did not start in time")
        return self._value

    def hand_to(self, process: ChildProcess, extra: dict[str, Any] | None = None) -> None:
        """Send ``process`` its setup line now, or once the address is known."""
        with self._lock:
            if self._value is None:
                self._waiting.append((process, extra or {}))
                return
            value = self._value
        process.send_setup(value, extra or {})


@dataclass
class StackContext:
    """What extra services need to know to join the stack."""

    options: argparse.Namespace
    address: TangoHost
    devices: list[str]
    data_dir: Path
    env: dict[str, str]
    #: set once the stack is stopping: a service's start-up wait should give up on it
    stopping: threading.Event = field(default_factory=threading.Event)
    #: what each service's ``reserve`` claimed before any child started, by service name
    #: (the gateway: its listening socket); held by ``oet-stack`` for as long as it runs
    reserved: dict[str, Any] = field(default_factory=dict)

    @property
    def tango_host(self) -> str:
        """``HOST:PORT`` of the database (waits until it listens)."""
        return self.address.get()

    def child_command(self, command: Sequence[str]) -> list[str]:
        """How a service runs its process: so that it dies with ``oet-stack`` (see
        :func:`guarded`)."""
        return guarded(command)

    def start_child(
        self,
        module: str,
        args: Sequence[str],
        stdout: Any,
        preload: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
    ) -> ChildProcess:
        """Start ``python -m module args`` for a service at once, even before the database
        listens: it imports ``preload`` and ``module`` meanwhile and runs once it has
        ``TANGO_HOST`` (see :mod:`.stack_child`); it dies with ``oet-stack``. ``pass_fds``:
        descriptors it inherits (e.g. a listening socket ``reserve`` made)."""
        process = spawn_child(module, args, stdout, self.env, preload, pass_fds=pass_fds)
        self.address.hand_to(process)
        return process


#: A service, started once the database holds the devices, while the device server comes up
#: (in a thread of its own): returns the process it started (the stack stops it first on
#: shutdown) or None. It should wait until the service is ready (the devices reached), and
#: give up once ``context.stopping`` is set.
ServiceStarter = Callable[[StackContext], "subprocess.Popen[bytes] | None"]


@dataclass
class Service:
    name: str
    start: ServiceStarter
    #: adds the service's options to the ``oet-stack`` parser
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    #: claims what the service must own before any child of the stack starts (the gateway's
    #: port: a child's own ephemeral ports could take it otherwise), from the options;
    #: RuntimeError says why it cannot. Its result is ``StackContext.reserved[name]``.
    reserve: Callable[[argparse.Namespace], Any] = lambda options: None


#: Extra services of the stack, started in order. The REST gateway adds itself here.
SERVICES: list[Service] = []


def register_service(service: Service) -> None:
    """Add a service to ``oet-stack`` (e.g. the REST gateway)."""
    SERVICES.append(service)


def child_environment(environ: Any) -> dict[str, str]:
    """The environment of the stack's children: ``environ``, with PyTango's telemetry patching
    off unless telemetry is asked for (``TANGO_TELEMETRY_ENABLE``) or the variable is set: it
    costs each Tango process the OpenTelemetry imports, a fifth of its start here."""
    env = dict(environ)
    if env.get("TANGO_TELEMETRY_ENABLE", "").lower() not in {"on", "1", "true", "yes", "y"}:
        env.setdefault("PYTANGO_DISABLE_TELEMETRY_PATCHING", "1")
    return env


def _register_gateway() -> None:
    from .rest import stack_service  # light: no FastAPI or Tango import

    register_service(
        Service(
            stack_service.SERVICE_NAME,
            stack_service.start,
            stack_service.add_arguments,
            stack_service.reserve,
        )
    )


_register_gateway()


# ----- configuration --------------------------------------------------------------------------
def load_devices(config: Path | None, subarrays: int) -> dict[str, dict[str, list[str]]]:
    """Device name -> properties of ``oso/oet/1..subarrays`` from a dsconfig file."""
    if config is not None and config.exists():
        data = json.loads(config.read_text())
        devices = data["servers"][SERVER][INSTANCE][DEVICE_CLASS]
    else:  # an installed wheel has no deviceservers/ folder: same content, built here
        devices = {f"oso/oet/{n}": {"properties": {"SubarrayId": [str(n)]}} for n in range(1, 17)}
    wanted = [f"oso/oet/{n}" for n in range(1, subarrays + 1)]
    missing = [name for name in wanted if name not in devices]
    if missing:
        raise SystemExit(f"oet-stack: {config} does not define {', '.join(missing)}")
    return {name: dict(devices[name].get("properties", {})) for name in wanted}


def device_properties(
    properties: dict[str, list[str]], name: str, options: argparse.Namespace
) -> dict[str, list[str]]:
    """The dsconfig properties plus the stack's own: history file, SB store, script roots
    (always including the example scripts, which the example SBDs use), abort script."""
    result = {k: [str(v) for v in vs] for k, vs in properties.items()}
    result["StateDatabase"] = [str(options.data_dir / f"{name.replace('/', '_')}.sqlite")]
    result["SBStore"] = [str(sb_store(options))]
    result["ScriptRoots"] = [str(p) for p in script_roots(options)]
    abort = options.abort_script or default_abort_script(options)
    if abort:
        result["AbortScript"] = [abort]
    return result


def script_roots(options: argparse.Namespace) -> list[Path]:
    """``--scripts`` folders (else the engine's defaults, ``OET_SCRIPT_ROOTS`` included), plus
    the repository's ``scripts/`` folder when run from a checkout."""
    from .procedure.config import config_from_sources  # light: no Tango import

    if options.scripts:
        roots = [Path(p).resolve() for p in options.scripts]
    else:
        roots = list(config_from_sources({}, os.environ).script_roots)
    if EXAMPLE_SCRIPTS.is_dir() and EXAMPLE_SCRIPTS not in roots:
        roots.append(EXAMPLE_SCRIPTS)
    return roots


def sb_store(options: argparse.Namespace) -> Path:
    """The scheduling-block store the stack's devices share."""
    return options.data_dir / "sbds"


def seed_sbds(
    store: Path, examples: Path = EXAMPLE_SBDS, scripts: Path = EXAMPLE_SCRIPTS
) -> list[str]:
    """Copy the example SBDs into ``store``, with ``${OET_EXAMPLE_SCRIPTS}`` replaced by the
    absolute path of ``scripts``, so ``oet activity run observe sbd-demo-00001`` works at
    once. An SBD already in the store is left alone (it may have been replaced through the
    API). Returns the ids written."""
    from .activity.sbd_store import DirectorySbdStore  # light: no Tango import

    store_ = DirectorySbdStore(store)
    existing = set(store_.ids())
    written = []
    for path in sorted(examples.glob("*.json")) if examples.is_dir() else []:
        text = path.read_text().replace(SCRIPTS_PLACEHOLDER, str(scripts.resolve()))
        document = json.loads(text)
        if document.get("sbd_id") in existing:
            continue
        written.append(store_.add(document)["sbd_id"])
    return written


def default_abort_script(options: argparse.Namespace) -> str | None:
    """``abort.py`` of the first script root that has one (the repository's ``scripts/``
    when run from a checkout), so Abort works out of the box."""
    roots = [Path(p) for p in options.scripts] if options.scripts else [Path.cwd() / "scripts"]
    for root in roots:
        candidate = root.resolve() / "abort.py"
        if candidate.is_file():
            return f"file://{candidate}"
    return None


# ----- processes ------------------------------------------------------------------------------
#: Runs in each child before its real program: asks Linux to send the child SIGTERM when the
#: thread of oet-stack that started it ends, so that nothing outlives a stack killed by SIGKILL
#: (the setting survives the exec). Exits at once if the stack is already gone.
_ORPHAN_GUARD = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except AttributeError:  # no prctl (not Linux): nothing to ask for
    pass
if os.getppid() != int(sys.argv[1]):
    os._exit(70)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def guarded(command: Sequence[str]) -> list[str]:
    """``command``, run so that it receives SIGTERM if ``oet-stack`` dies, however it dies."""
    return [sys.executable, "-c", _ORPHAN_GUARD, str(os.getpid()), *command]


def _log_file(data_dir: Path, name: str) -> Any:
    return (data_dir / f"{name}.log").open("ab")


class ChildProcess(subprocess.Popen):
    """A child run through :mod:`.stack_child`: it waits for its setup line on stdin and, for
    the device server, reports its devices' readiness on a pipe (:meth:`wait_ready`)."""

    ready_fd: int | None = None
    #: keep stdin open after the setup line until :meth:`release` (the device server starts
    #: its worker fork server when it closes, see :mod:`.stack_child`)
    hold: bool = False

    def send_setup(self, tango_host: str, extra: dict[str, Any]) -> None:
        line = json.dumps({"env": {"TANGO_HOST": tango_host}, **extra}) + "\n"
        try:
            assert self.stdin is not None
            self.stdin.write(line.encode())
            if self.hold:
                self.stdin.flush()
            else:
                self.stdin.close()
        except (OSError, ValueError):  # it died (or was stopped): its waiter sees that
            pass

    def release(self) -> None:
        """End a held stdin (see :attr:`hold`)."""
        self.hold = False
        with contextlib.suppress(OSError, ValueError):
            if self.stdin is not None:
                self.stdin.close()

    def wait_ready(self, check: Callable[[], None], stopping: Any = None) -> dict[str, Any]:
        """The child's readiness report (``{"ready": [...]}`` or ``{"error": ...}``);
        ``check`` raises when what it waits for failed, ``stopping`` makes it give up."""
        assert self.ready_fd is not None
        data = b""
        try:
            while not data.endswith(b"\n"):
                check()
                if stopping is not None and stopping.is_set():
                    raise RuntimeError("stopping while waiting for the devices")
                readable, _, _ = select.select([self.ready_fd], [], [], 0.02)
                if readable:
                    chunk = os.read(self.ready_fd, 65536)
                    if not chunk:  # it exited (check() will say how) or closed the pipe
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            self.wait(1.0)
                        check()
                        raise RuntimeError("it closed its readiness report without a word")
                    data += chunk
        finally:
            os.close(self.ready_fd)
            self.ready_fd = None
        return json.loads(data)


def spawn_child(
    module: str,
    args: Sequence[str],
    stdout: Any,
    env: dict[str, str],
    preload: Sequence[str] = (),
    ready: bool = False,
    pass_fds: Sequence[int] = (),
) -> ChildProcess:
    """Start ``python -m module args`` through :mod:`.stack_child` (guarded by itself, see
    :func:`.stack_child.guard`: no second interpreter; its own session); ``ready``: with a
    readiness pipe (:meth:`ChildProcess.wait_ready`); ``pass_fds``: descriptors it inherits."""
    command = [sys.executable, "-m", "ska_oso_oet.stack_child", "--parent", str(os.getpid())]
    if preload:
        command += ["--preload", ",".join(preload)]
    read_end = write_end = None
    if ready:
        read_end, write_end = os.pipe()
        command += ["--ready-fd", str(write_end)]
    try:
        process = ChildProcess(
            [*command, module, *args],
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            pass_fds=[*pass_fds, *([write_end] if write_end is not None else [])],
        )
    except BaseException:
        for fd in (read_end, write_end):
            if fd is not None:
                os.close(fd)
        raise
    if write_end is not None:
        os.close(write_end)
    process.ready_fd = read_end
    return process


def spawn_database(data_dir: Path, host: str, port: int, env: dict[str, str]) -> subprocess.Popen:
    """Start PyDatabaseds on sqlite (``port`` 0: a free one, see :func:`database_port`)."""
    db_env = {**env, "PYTANGO_DATABASE_NAME": str(data_dir / "tango_database.db")}
    log_path = data_dir / "databaseds.log"
    with log_path.open("wb") as log:
        return subprocess.Popen(
            guarded(
                [
                    _executable("PyDatabaseds"),
                    "--port",
                    str(port),
                    "--host",
                    host,
                    "--print-host-port",
                    "2",
                ]
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=db_env,
            start_new_session=True,
        )


def database_port(process: subprocess.Popen, data_dir: Path, stopping: Any = None) -> int:
    """The port the database listens on, from its start-up line (it says the socket is bound;
    whether the database answers is checked by who uses it, see :mod:`.stack_child`)."""
    log_path = data_dir / "databaseds.log"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        match = _PORT_LINE.search(log_path.read_bytes())
        if match:
            return int(match.group(1))
        _check_alive(process, DATABASE, log_path, deadline)
        if stopping is not None and stopping.is_set():
            raise RuntimeError("stopping while the Tango database starts")
        time.sleep(0.01)  # waiting for a child's start-up line


def start_database(
    data_dir: Path,
    host: str,
    port: int,
    env: dict[str, str],
    devices: dict[str, dict[str, list[str]]] | None = None,
) -> tuple[subprocess.Popen, int]:
    """Start PyDatabaseds on sqlite; return the process and its port once it answers ``get_info``
    (and, given ``devices``, holds them: see :func:`register_devices`). For tools and tests:
    ``oet-stack`` itself starts everything at once (:func:`start`)."""
    process = spawn_database(data_dir, host, port, env)
    log_path = data_dir / "databaseds.log"
    deadline = time.monotonic() + START_TIMEOUT
    try:
        actual = port or database_port(process, data_dir)
        _probe(
            ["database", f"{host}:{actual}"],
            _registration(devices or {}),
            lambda: _check_alive(process, DATABASE, log_path, deadline),
        )
    except BaseException:
        stop_process(process)
        raise
    return process, actual


def registration(devices: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
    """What declares ``devices`` in ``OETDeviceServer/oet`` (for :mod:`.stack_child` and
    :mod:`.stack_probe`), with the OETGroups device of linked groups beside them."""
    declared = {
        name: {**properties, "__class_server__": [DEVICE_CLASS, f"{SERVER}/{INSTANCE}"]}
        for name, properties in devices.items()
    }
    if devices and GROUPS_DEVICE not in declared:
        folder = Path(next(iter(devices.values())).get("StateDatabase", ["."])[0]).parent
        declared[GROUPS_DEVICE] = {
            "OETDevices": list(devices), "StateDatabase": [str(folder / "oso_oet_groups.sqlite")],
            "__class_server__": ["OETGroups", f"{SERVER}/{INSTANCE}"],
        }  # fmt: skip
    return declared


def _registration(devices: dict[str, dict[str, list[str]]]) -> str:
    return json.dumps(registration(devices))


def _probe(
    args: Sequence[str], stdin: str, check: Callable[[], None], stopping: Any = None
) -> None:
    """Run :mod:`.stack_probe` (the parent never imports ``tango``: it would cost it 50 MiB)
    until it exits; ``check`` raises when what it waits for has failed, ``stopping`` makes it
    give up. RuntimeError when the probe fails."""
    # stderr to a file, not a pipe: a chatty probe must not block on it
    with tempfile.TemporaryFile() as errors:
        probe = subprocess.Popen(
            guarded([sys.executable, "-m", "ska_oso_oet.stack_probe", *args]),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        try:
            assert probe.stdin is not None
            probe.stdin.write(stdin.encode())
            probe.stdin.close()
            while True:
                try:
                    code = probe.wait(0.02)
                    break
                except subprocess.TimeoutExpired:
                    check()
                    if stopping is not None and stopping.is_set():
                        raise RuntimeError(f"stopping while waiting for {args[0]}") from None
            if code != 0:
                errors.seek(0)
                reason = errors.read().decode(errors="replace").strip().splitlines()
                raise RuntimeError(f"{args[0]} check failed: {reason[-1] if reason else code}")
        finally:
            if probe.poll() is None:
                probe.kill()
                probe.wait()


def register_devices(tango_host: str, devices: dict[str, dict[str, list[str]]]) -> None:
    """Declare the devices of ``OETDeviceServer/oet`` and their properties."""
    deadline = time.monotonic() + START_TIMEOUT

    def check() -> None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Tango database at {tango_host} did not answer")

    _probe(["database", tango_host], _registration(devices), check)


def start_device_server(
    data_dir: Path,
    host: str,
    env: dict[str, str],
    address: TangoHost | None = None,
    register: dict[str, dict[str, list[str]]] | None = None,
    hold: bool = False,
) -> ChildProcess:
    """Start ``OETDeviceServer`` (at once: it imports while the database starts). Once
    ``address`` (default: ``env["TANGO_HOST"]``) is known and the database answers, it
    declares the devices of ``register`` and starts; :func:`wait_for_devices` waits for them.
    ``hold``: its worker fork server waits for :meth:`ChildProcess.release` (or a script)."""
    process = spawn_device_server(data_dir, host, env)
    process.hold = hold
    (address or TangoHost(env["TANGO_HOST"])).hand_to(
        process, {"register": registration(register or {})}
    )
    return process


def spawn_device_server(data_dir: Path, host: str, env: dict[str, str]) -> ChildProcess:
    """``OETDeviceServer`` started, waiting for its setup line (see :func:`start_device_server`)."""
    with _log_file(data_dir, SERVER) as log:
        return spawn_child(
            "ska_oso_oet.tango.server",
            [INSTANCE, "-ORBendPoint", f"giop:tcp:{host}:0"],
            log,
            env,
            preload=("tango",),
            ready=True,
        )


def wait_for_devices(
    tango_host: str,
    devices: Sequence[str],
    process: subprocess.Popen,
    data_dir: Path,
    stopping: threading.Event | None = None,
    also: Callable[[], None] | None = None,
) -> None:
    """Until every device answers; RuntimeError if the server exits, is not ready within
    START_TIMEOUT, or ``stopping`` is set (``also`` may raise too: another check). A server
    of :func:`start_device_server` checks its devices itself (ping and state through a
    DeviceProxy) and says so; another one is probed."""
    deadline = time.monotonic() + START_TIMEOUT
    log = data_dir / f"{SERVER}.log"

    def check() -> None:
        _check_alive(process, SERVER, log, deadline)
        if also is not None:
            also()

    try:
        if not isinstance(process, ChildProcess) or process.ready_fd is None:
            _probe(["devices", tango_host, *devices], "", check, stopping)
            return
        report = process.wait_ready(check, stopping)
    except RuntimeError as exc:
        if stopping is not None and stopping.is_set():
            raise RuntimeError(f"stopping while {SERVER} starts") from exc
        raise
    if "error" in report:
        raise RuntimeError(f"{SERVER}: {report['error']}; see {log}")
    served = {name.lower() for name in report.get("ready", [])}
    missing = [name for name in devices if name.lower() not in served]
    if missing:
        raise RuntimeError(f"{SERVER} does not serve {', '.join(missing)}; see {log}")


def _check_alive(process: subprocess.Popen, name: str, log: Path, deadline: float) -> None:
    if process.poll() is not None:
        raise RuntimeError(f"{name} exited with code {process.returncode}; see {log}")
    if time.monotonic() > deadline:
        raise RuntimeError(f"{name} did not become ready within {START_TIMEOUT} s; see {log}")


def stop_process(process: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait, then SIGKILL the process group."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _executable(name: str) -> str:
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


# ----- the stack ------------------------------------------------------------------------------
@dataclass
class Stack:
    """The running processes, stopped in reverse order of start.

    A supervisor thread may replace a process it restarted (:meth:`replace`) while the main
    thread reads the list, hence the lock. ``stopping`` is set once shutdown has begun: start-up
    and restart waits give up on it, and nothing is started after it.
    """

    processes: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, process: subprocess.Popen) -> None:
        with self._lock:
            self.processes.append((name, process))

    def replace(self, name: str, old: subprocess.Popen, new: subprocess.Popen) -> bool:
        """Put ``new`` where ``old`` was (same place in the stop order); False, and ``new``
        not added, once the stack is stopping: the caller must stop it itself."""
        with self._lock:
            if self.stopping.is_set():
                return False
            index = self.processes.index((name, old))
            self.processes[index] = (name, new)
            return True

    def stop(self) -> None:
        self.stopping.set()
        with self._lock:
            processes = list(reversed(self.processes))
            self.processes.clear()
        for name, process in processes:
            LOGGER.info("stopping %s (pid %d)", name, process.pid)
            stop_process(process)


def describe_exit(code: int | None) -> str:
    """``"exited with code 1"`` / ``"was killed by SIGKILL"`` for a Popen return code."""
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


@dataclass(frozen=True)
class Backoff:
    """Delays between restarts of a crashing process: ``initial``, doubled after each crash
    up to ``maximum``, and back to ``initial`` once the process ran ``stable_after`` seconds
    (a process that crashes once a day is restarted at once; one that crashes at start-up is
    not restarted in a tight loop)."""

    initial: float = 1.0
    maximum: float = 30.0
    stable_after: float = 60.0

    def next_delay(self, previous: float | None, ran_for: float) -> float:
        if previous is None or ran_for >= self.stable_after:
            return self.initial
        return min(previous * 2, self.maximum)


#: Starts a crashed process anew and returns it once it is ready. On failure (it did not become
#: ready, or the stack began to stop meanwhile) it stops what it started and raises.
Restarter = Callable[[], subprocess.Popen]


class Supervisor:
    """Keeps the stack's processes running: one thread per restartable process waits for its
    exit and restarts it with back-off; the others go on undisturbed (a gateway crash does not
    touch the device server or its running scripts). The Tango database is *critical*: without
    it nothing can work (devices cannot be imported, clients cannot resolve names), so its
    death stops the whole stack instead (:attr:`fatal` says why)."""

    #: How often a process is checked: the delay before a crash is noticed.
    POLL = 0.2

    def __init__(self, stack: Stack, backoff: Backoff | None = None) -> None:
        self.stack = stack
        self.backoff = backoff or Backoff()
        self.fatal: str | None = None
        self._critical: list[tuple[str, subprocess.Popen]] = []
        self._threads: list[tuple[threading.Thread, threading.Event]] = []
        self._released = threading.Event()

    def critical(self, name: str, process: subprocess.Popen) -> None:
        self._critical.append((name, process))

    def restartable(self, name: str, process: subprocess.Popen, restart: Restarter) -> None:
        done = threading.Event()
        thread = threading.Thread(
            target=self._supervise, args=(name, process, restart, done), name=f"supervise-{name}"
        )
        thread.daemon = True  # released in release(); daemon only so a bug cannot hang the exit
        self._threads.append((thread, done))
        thread.start()

    def _supervise(
        self, name: str, process: subprocess.Popen, restart: Restarter, done: threading.Event
    ) -> None:
        try:
            self._keep_running(name, process, restart)
        finally:
            done.set()
            # A process this thread restarted gets its death signal when this thread ends
            # (PR_SET_PDEATHSIG follows the thread): stay until the stack has stopped it.
            self._released.wait()

    def wait(self, stop: threading.Event) -> None:
        """Until ``stop`` is set or a critical process dies (then :attr:`fatal` is set)."""
        while not stop.wait(self.POLL):
            for name, process in self._critical:
                if process.poll() is not None:
                    self.fatal = (
                        f"{name} (pid {process.pid}) {describe_exit(process.returncode)}: the "
                        "devices and the gateway cannot work without the Tango database"
                    )
                    return

    def stop(self, timeout: float = START_TIMEOUT) -> None:
        """End supervision: no restart begins after this; one under way gives up. Then stop
        the stack's processes, then :meth:`release`."""
        self.stack.stopping.set()
        for _, done in self._threads:
            done.wait(timeout)

    def release(self) -> None:
        """Let the supervising threads end (once the processes they started are stopped)."""
        self._released.set()
        for thread, _ in self._threads:
            thread.join(5.0)

    def _keep_running(self, name: str, process: subprocess.Popen, restart: Restarter) -> None:
        stopping = self.stack.stopping
        delay: float | None = None
        started = time.monotonic()
        while True:
            while process.poll() is None:
                if stopping.wait(self.POLL):
                    return
            if stopping.is_set():
                return  # stopped by the stack, not crashed
            ran_for = time.monotonic() - started
            # The child led its own session: what it left in its process group goes with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            delay = self.backoff.next_delay(delay, ran_for)
            LOGGER.error(
                "%s (pid %d) %s (up %.1f s); restarting it in %.1f s (the rest of the stack "
                "keeps running)",
                name, process.pid, describe_exit(process.returncode), ran_for, delay,
            )  # fmt: skip
            while True:
                if stopping.wait(delay):
                    return
                try:
                    new = restart()
                    break
                except Exception as exc:  # e.g. not ready in time: back off and try again
                    if stopping.is_set():
                        return  # it gave up because the stack is stopping
                    delay = min(delay * 2, self.backoff.maximum)
                    LOGGER.error("%s did not restart: %s; trying again in %.1f s", name, exc, delay)
            if not self.stack.replace(name, process, new):
                stop_process(new)  # shutdown began while it started
                return
            process, started = new, time.monotonic()
            LOGGER.info("%s restarted (pid %d)", name, process.pid)


def start_registered_database(
    options: argparse.Namespace, stack: Stack, env: dict[str, str]
) -> tuple[str, list[str]]:
    """Start the Tango database and register the devices of ``options`` in it (no server
    yet). Sets ``env["TANGO_HOST"]``; returns it and the device names. For tests and tools:
    :func:`start` does it all at once."""
    devices = load_devices(options.config, options.subarrays)
    properties = {name: device_properties(props, name, options) for name, props in devices.items()}
    # one probe sees the database answer and registers the devices
    db_process, port = start_database(options.data_dir, options.host, options.port, env, properties)
    stack.add(DATABASE, db_process)
    tango_host = f"{options.host}:{port}"
    LOGGER.info("Tango database (PyDatabaseds, pid %d) at %s", db_process.pid, tango_host)
    env["TANGO_HOST"] = tango_host
    return tango_host, list(devices)


class _Outcome:
    """The result of a thread's wait, for the main thread."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


def start(options: argparse.Namespace, stack: Stack) -> StackContext:
    """Start database, device server and services, all at once; fill ``stack`` as processes
    start. Gives up (RuntimeError) if ``stack.stopping`` is set meanwhile.

    The device server and the services start while the database does (they import meanwhile,
    see :mod:`.stack_child`); a thread waits for the database's port, hands it to them, then
    waits for the devices. The services start in this thread: a child's parent-death signal
    (see :func:`guarded`) fires when the *thread* that started it ends. ``abandon`` makes a
    service's start give up when the database or the device server fails or the stack stops.
    """
    data_dir: Path = options.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    env = child_environment(os.environ)
    address = TangoHost(f"{options.host}:{options.port}" if options.port else None)
    devices = load_devices(options.config, options.subarrays)  # a bad file: nothing started
    # Before any child: a port a service listens on is the stack's from here on (a taken one
    # stops the start now, with nothing started).
    reserved = {service.name: service.reserve(options) for service in SERVICES}
    # The children first: the rest is quick next to their imports.
    db_process = spawn_database(data_dir, options.host, options.port, env)
    stack.add(DATABASE, db_process)
    server = spawn_device_server(data_dir, options.host, env)
    # its fork server waits until the services answer (see ChildProcess.hold)
    server.hold = True
    stack.add(SERVER, server)
    properties = {name: device_properties(props, name, options) for name, props in devices.items()}
    address.hand_to(server, {"register": registration(properties)})
    seed_sbds(sb_store(options))  # in this thread (a thread of its own costs the parent RSS)
    names = list(devices)
    context = StackContext(options, address, names, data_dir, env, stack.stopping, reserved)
    abandon = threading.Event()
    ready = _Outcome()
    db_log = data_dir / "databaseds.log"

    def database_alive() -> None:
        _check_alive(db_process, DATABASE, db_log, time.monotonic() + START_TIMEOUT)

    def wait() -> None:
        try:
            if not options.port:
                port = database_port(db_process, data_dir, stack.stopping)
                address.set(f"{options.host}:{port}")
            LOGGER.info(
                "Tango database (PyDatabaseds, pid %d) at %s", db_process.pid, address.get()
            )
            wait_for_devices(address.get(), names, server, data_dir, stack.stopping, database_alive)
        except BaseException as exc:  # handed to the main thread
            address.fail(str(exc))
            ready.error = exc
            abandon.set()
            ready.done.set()
            return
        ready.done.set()
        while not abandon.is_set():  # the services' waits give up on the stack stopping too
            if stack.stopping.wait(0.05):
                abandon.set()

    threading.Thread(target=wait, name="wait-for-devices", daemon=True).start()
    try:
        for service in SERVICES:
            process = service.start(dataclasses.replace(context, stopping=abandon))
            if process is not None:
                stack.add(service.name, process)
                LOGGER.info("%s (pid %d) started", service.name, process.pid)
        ready.done.wait()
        if ready.error is not None:
            raise ready.error
    except BaseException as exc:
        abandon.set()
        # a failed database or device server explains more than the service that gave up
        # because of it
        cause = ready.error if ready.done.is_set() else None
        if cause is not None and cause is not exc:
            raise cause from exc
        raise
    finally:
        abandon.set()  # ends the watch of wait()
        server.release()  # the stack is up (or gives up): the device server's fork server starts
    env["TANGO_HOST"] = address.get()  # for what the stack starts from now on (restarts)
    LOGGER.info("%s (pid %d) serves %s", SERVER, server.pid, ", ".join(names))
    return context


def restart_device_server(context: StackContext) -> subprocess.Popen:
    """A new ``OETDeviceServer`` for the stack's devices, once they all answer. Its engines
    record the procedures the crashed one was running as FAILED (DESIGN §3)."""
    server = start_device_server(
        context.data_dir, context.options.host, context.env, context.address
    )
    try:
        wait_for_devices(
            context.tango_host, context.devices, server, context.data_dir, context.stopping
        )
    except BaseException:
        stop_process(server)
        raise
    LOGGER.info("%s (pid %d) serves %s", SERVER, server.pid, ", ".join(context.devices))
    return server


def restart_service(service: Service, context: StackContext) -> subprocess.Popen:
    process = service.start(context)
    if process is None:
        raise RuntimeError(f"{service.name} declined to start")
    return process


def supervise(context: StackContext, stack: Stack) -> Supervisor:
    """Watch the processes :func:`start` started: the database as critical, the device server
    and the services as restartable."""
    options = context.options
    backoff = Backoff(
        initial=getattr(options, "restart_delay", Backoff.initial),
        maximum=getattr(options, "max_restart_delay", Backoff.maximum),
    )
    supervisor = Supervisor(stack, backoff)
    services = {service.name: service for service in SERVICES}
    for name, process in list(stack.processes):
        if name == DATABASE:
            supervisor.critical(name, process)
        elif name == SERVER:
            supervisor.restartable(name, process, functools.partial(restart_device_server, context))
        elif name in services:
            restart = functools.partial(restart_service, services[name], context)
            supervisor.restartable(name, process, restart)
    return supervisor


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oet-stack",
        description="Run the OET (Tango database on sqlite, OET device server and services) "
        "until Ctrl-C.",
    )
    parser.add_argument(
        "--subarrays", type=int, default=1, help=f"devices oso/oet/1..N to run (1-{MAX_SUBARRAYS})"
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=0, help="Tango database port (0: a free one)")
    parser.add_argument(
        "--data-dir", type=Path, default=Path("var/oet-stack"), help="databases and logs"
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="dsconfig JSON file")
    parser.add_argument(
        "--scripts",
        action="append",
        metavar="DIR",
        help="folder file:// scripts may come from (repeatable; default: /scripts and "
        "./scripts); the repository's scripts/ folder is always added",
    )
    parser.add_argument(
        "--abort-script",
        help="file:// URI of the abort script (default: abort.py of the script roots)",
    )
    parser.add_argument(
        "--restart-delay",
        type=float,
        default=Backoff.initial,
        metavar="SECONDS",
        help="wait before restarting a crashed device server or gateway; doubled after each "
        f"crash in a row up to --max-restart-delay (default {Backoff.initial:g})",
    )
    parser.add_argument(
        "--max-restart-delay",
        type=float,
        default=Backoff.maximum,
        metavar="SECONDS",
        help=f"longest wait between restarts (default {Backoff.maximum:g})",
    )
    for service in SERVICES:
        service.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    if not 1 <= options.subarrays <= MAX_SUBARRAYS:
        raise SystemExit(f"oet-stack: --subarrays must be between 1 and {MAX_SUBARRAYS}")
    if not 0 < options.restart_delay <= options.max_restart_delay:
        raise SystemExit("oet-stack: need 0 < --restart-delay <= --max-restart-delay")
    options.data_dir = options.data_dir.resolve()
    configure_process_logging(stream=sys.stderr, tags=LOG_TAGS)
    stack = Stack()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stack.stopping.set())
    supervisor: Supervisor | None = None
    try:
        context = start(options, stack)
        supervisor = supervise(context, stack)
        print(f"TANGO_HOST={context.tango_host}")
        for name in context.devices:
            print(f"device {name}")
        print(f"data and logs in {context.data_dir}; Ctrl-C stops the stack", flush=True)
        supervisor.wait(stack.stopping)
        if supervisor.fatal:
            LOGGER.critical("%s; stopping the stack", supervisor.fatal)
            return EXIT_DATABASE_DIED
        return EXIT_OK
    except RuntimeError as exc:
        if stack.stopping.is_set():
            LOGGER.info("start-up interrupted (%s)", exc)
            return EXIT_OK
        LOGGER.error("cannot start: %s", exc)
        return EXIT_START_FAILED
    finally:
        if supervisor is not None:
            supervisor.stop()
        stack.stop()
        if supervisor is not None:
            supervisor.release()
        print("oet-stack stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
