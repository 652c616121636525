"""The real C++ Tango tools from Debian, for tests: MariaDB + DataBaseds (``tango-db``),
TangoAccessControl (``tango-accesscontrol``) and Starter (``tango-starter``).

:func:`require_debian_tango` installs the packages once per machine (``apt-get``, as root;
a lock file makes concurrent sessions install once) and skips the test with a clear message
where that is impossible. :class:`CppTangoDatabase` runs a private MariaDB server (its own
data folder, loopback TCP port) loaded with Debian's Tango schema, and the C++ ``DataBaseds``
on it, exactly as ``/etc/init.d/tango-db`` would but without touching the machine's services.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

TANGO_BIN = Path("/usr/lib/tango")
PACKAGES = ("mariadb-server", "mariadb-client", "tango-db", "tango-accesscontrol", "tango-starter")
REQUIRED = (
    TANGO_BIN / "DataBaseds",
    TANGO_BIN / "TangoAccessControl",
    TANGO_BIN / "Starter",
    Path("/usr/sbin/mariadbd"),
    Path("/usr/bin/mariadb-install-db"),
    Path("/usr/bin/mariadb"),
)
SCHEMA = Path("/usr/share/dbconfig-common/data/tango-db/install/mysql")
DB_USER, DB_PASSWORD = "tango", "tango-test"
START_TIMEOUT = 60.0
_INSTALL_LOCK = Path("/tmp/oet-debian-tango-install.lock")


def require_debian_tango() -> None:
    """Install the Debian Tango packages if missing; skip (with the reason) if impossible."""
    if all(p.exists() for p in REQUIRED):
        return
    if shutil.which("apt-get") is None:
        pytest.skip("the C++ Tango tools need Debian's apt-get (tango-db, tango-starter, ...)")
    if os.geteuid() != 0:
        pytest.skip("installing Debian's tango-db/tango-starter/tango-accesscontrol needs root")
    with _INSTALL_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installation for all concurrent sessions
        if all(p.exists() for p in REQUIRED):
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        # dbconfig-common would try to reach a MariaDB that is not running: the tests load
        # the schema themselves.
        subprocess.run(
            ["debconf-set-selections"],
            input="tango-db tango-db/dbconfig-install boolean false\n",
            text=True,
            check=True,
        )
        for command in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
        ):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                pytest.skip(f"{' '.join(command)} failed: {done.stderr[-500:]}")
    missing = [str(p) for p in REQUIRED if not p.exists()]
    if missing:
        pytest.skip(f"installed, but still missing: {missing}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited ({process.returncode}): {tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process.args[0]} not listening on {port}: {tail(log)}")
        time.sleep(0.1)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(process: subprocess.Popen | None, timeout: float = 20.0) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class CppTangoDatabase:
    """A private MariaDB with the Tango schema and the C++ DataBaseds in front of it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.datadir = folder / "mariadb"
        self.socket = folder / "mariadb.sock"
        self.sql_port = free_port()
        self.port = free_port()
        self.tango_host = f"127.0.0.1:{self.port}"
        self.mariadb: subprocess.Popen | None = None
        self.databaseds: subprocess.Popen | None = None
        self.access_control: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a C++ Tango database server (and TangoAccessControl) needs to find MariaDB."""
        return {
            **os.environ,
            "MYSQL_HOST": f"127.0.0.1:{self.sql_port}",
            "MYSQL_USER": DB_USER,
            "MYSQL_PASSWORD": DB_PASSWORD,
            "MYSQL_DATABASE": "tango",
            "TANGO_HOST": self.tango_host,
        }

    def __enter__(self) -> CppTangoDatabase:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # A MariaDB of its own for temporary tables: mariadbd removes every "#sql*" file of its
        # tmpdir when it starts, so two instances sharing /tmp (two test runs on one machine)
        # delete each other's tables ("Unknown table 'mysql.tmp_user_nopasswd'" at install).
        tmpdir = self.folder / "tmp"
        tmpdir.mkdir(exist_ok=True)
        install_log = self.folder / "mariadb-install.log"
        with install_log.open("w") as log:
            subprocess.run(
                [
                    "mariadb-install-db",
                    "--no-defaults",
                    f"--datadir={self.datadir}",
                    f"--tmpdir={tmpdir}",
                    "--user=root",
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=120,
            )
        log_path = self.folder / "mariadb.log"
        with log_path.open("w") as log:
            self.mariadb = subprocess.Popen(
                [
                    "/usr/sbin/mariadbd",
                    "--no-defaults",
                    f"--datadir={self.datadir}",
                    f"--tmpdir={tmpdir}",
                    f"--socket={self.socket}",
                    f"--port={self.sql_port}",
                    "--bind-address=127.0.0.1",
                    "--user=root",
                    f"--pid-file={self.folder / 'mariadb.pid'}",
                    "--skip-log-bin",
                    "--innodb-buffer-pool-size=32M",
                    "--performance-schema=OFF",
                    # TangoAccessControl 9.3 inserts rows without their timestamp columns,
                    # which MariaDB's default strict mode refuses (docs/tango-access-control.md)
                    "--sql-mode=NO_ENGINE_SUBSTITUTION",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.sql_port, self.mariadb, log_path, START_TIMEOUT)
        self.sql(
            "CREATE DATABASE tango;"
            f"CREATE USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}';"
            f"CREATE USER '{DB_USER}'@'localhost' IDENTIFIED BY '{DB_PASSWORD}';"
            f"GRANT ALL ON tango.* TO '{DB_USER}'@'127.0.0.1';"
            f"GRANT ALL ON tango.* TO '{DB_USER}'@'localhost';",
            database=None,
        )
        self.sql(SCHEMA.read_text())  # Debian's own schema, stored procedures and defaults
        self.start_databaseds()

    def start_databaseds(self) -> None:
        log_path = self.folder / "DataBaseds.log"
        with log_path.open("a") as log:
            self.databaseds = subprocess.Popen(
                [
                    str(TANGO_BIN / "DataBaseds"),
                    "2",
                    "-ORBendPoint",
                    f"giop:tcp:127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        wait_for_port(self.port, self.databaseds, log_path, START_TIMEOUT)
        self.wait_for_device("sys/database/2", self.databaseds, log_path)

    def wait_for_device(self, name: str, process: subprocess.Popen, log: Path) -> None:
        import tango

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                tango.DeviceProxy(f"tango://{self.tango_host}/{name}").ping()
                return
            except tango.DevFailed:
                if process.poll() is not None:
                    raise RuntimeError(f"{name}'s server exited: {tail(log)}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} does not answer: {tail(log)}") from None
                time.sleep(0.2)

    def sql(self, statements: str, database: str | None = "tango") -> str:
        """Run SQL as MariaDB's root (unix socket); returns the tab-separated output."""
        command = ["mariadb", "--no-defaults", "-uroot", f"--socket={self.socket}", "-N", "-B"]
        if database:
            command.append(database)
        done = subprocess.run(
            command, input=statements, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"SQL failed: {done.stderr}")
        return done.stdout

    def start_access_control(self) -> None:
        """Run TangoAccessControl/1 (sys/access_control/1, registered by the schema) and
        declare it as the control system's access-control service."""
        import tango

        db = tango.Database("127.0.0.1", self.port)
        db.put_property("CtrlSystem", {"Services": ["AccessControl/tango:sys/access_control/1"]})
        log_path = self.folder / "TangoAccessControl.log"
        with log_path.open("a") as log:
            self.access_control = subprocess.Popen(
                [
                    str(TANGO_BIN / "TangoAccessControl"),
                    "1",
                    "-ORBendPoint",
                    "giop:tcp:127.0.0.1:0",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                # SUPER_TANGO: the service itself must not ask itself whether it may export
                env={**self.env, "SUPER_TANGO": "true"},
                start_new_session=True,
            )
        self.wait_for_device("sys/access_control/1", self.access_control, log_path)

    def close(self) -> None:
        stop(self.access_control)
        stop(self.databaseds)
        stop(self.mariadb, timeout=60)


DEVICESERVERS_JSON = Path(__file__).resolve().parents[2] / "deviceservers" / "oet.json"


def json2tango(tango_host: str, config: Path = DEVICESERVERS_JSON) -> subprocess.CompletedProcess:
    """Register ``config`` with dsconfig's json2tango, as a facility (and the chart) does."""
    executable = Path(sys.executable).with_name("json2tango")
    if not executable.exists() and shutil.which("json2tango") is None:
        pytest.skip("dsconfig's json2tango is not installed (pip install '.[ecosystem]')")
    command = [str(executable) if executable.exists() else "json2tango", "-w", "-a", "-u"]
    env = {**os.environ, "TANGO_HOST": tango_host}
    done = subprocess.run(
        [*command, str(config)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode in (0, 2), done.stdout + done.stderr  # 2: changes were written
    return done


class OetServer:
    """OETDeviceServer/oet run as ``oet-stack`` runs it, against a given Tango database."""

    def __init__(self, tango_host: str, data_dir: Path, env: dict[str, str]):
        self.tango_host = tango_host
        self.data_dir = data_dir
        self.env = {**env, "TANGO_HOST": tango_host}
        self.process: subprocess.Popen | None = None

    def start(self, devices: list[str]) -> None:
        from ska_oso_oet import stack

        self.process = stack.start_device_server(self.data_dir, "127.0.0.1", self.env)
        stack.wait_for_devices(self.tango_host, devices, self.process, self.data_dir)

    def stop(self) -> int | None:
        from ska_oso_oet import stack

        if self.process is None:
            return None
        stack.stop_process(self.process)
        code = self.process.returncode
        self.process = None
        return code

    def log(self) -> str:
        return tail(self.data_dir / "OETDeviceServer.log", 200)
