"""The REST gateway as a service of ``oet-stack`` (see :mod:`ska_oso_oet.stack`).

``oet-stack`` calls :func:`add_arguments` while building its parser, :func:`reserve` before
it starts any child, and :func:`start` as it starts the database. The gateway runs as its own
process (``python -m ska_oso_oet.rest.server``, started through
:meth:`ska_oso_oet.stack.StackContext.start_child`, so that it imports while the database
starts) fronting one device, and :func:`start` returns once it has reached that device, after
printing the API's URL. Nothing here imports FastAPI or Tango, so ``oet-stack --help`` stays
quick.

The REST port is bound by ``oet-stack`` itself (:func:`reserve`), before the database and the
device server start, and every gateway it starts serves that socket (``--fd``):

* a port that is taken stops ``oet-stack`` at once, saying so, with nothing started;
* no child of the stack can take it meanwhile: the database's, the device server's and their
  event channels' ports are ephemeral ones, the range a ``--rest-port`` picked as free may
  come from (a gateway binding last could find its port gone);
* a restarted gateway serves the same port, and nobody else can take it while it restarts:
  requests made in between wait in the socket's queue instead of being refused.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import threading
import time
from typing import Any

START_TIMEOUT = 60.0
#: The name ``oet-stack`` knows the gateway by (its ``reserved`` entry, its log lines).
SERVICE_NAME = "oet-gateway"
MODULE = "ska_oso_oet.rest.server"
#: What the gateway imports before it has TANGO_HOST: its app and tango (its first connection).
PRELOAD = ("tango", "ska_oso_oet.rest.app")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``oet-stack`` options of the gateway."""
    group = parser.add_argument_group("REST gateway")
    group.add_argument(
        "--rest-port",
        type=int,
        default=int(os.environ.get("OET_REST_PORT", "5000")),
        help="port of the REST API (0: a free one) [OET_REST_PORT, default 5000]",
    )
    group.add_argument(
        "--rest-host",
        default=os.environ.get("OET_REST_HOST"),
        help="interface of the REST API [OET_REST_HOST, default: the stack's --host]",
    )
    group.add_argument(
        "--rest-device",
        default=os.environ.get("OET_REST_DEVICE"),
        help="device the REST API fronts [OET_REST_DEVICE, default: the first, oso/oet/1]",
    )
    group.add_argument("--no-rest", action="store_true", help="do not start the REST gateway")


def reserve(options: argparse.Namespace) -> socket.socket | None:
    """Bind the REST port for the stack (``--rest-port 0``: a free one); not listening yet, so
    that connecting is refused until a gateway serves it.

    :raises RuntimeError: the address cannot be bound (taken, or not this machine's)
    """
    if getattr(options, "no_rest", False):
        return None
    host = options.rest_host or options.host
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, options.rest_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise RuntimeError(f"the REST API cannot listen on {host!r}: {exc}") from exc
    try:
        # as uvicorn's own bind: a restarted stack need not wait for old connections' TIME_WAIT
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise RuntimeError(
            f"the REST API cannot listen on {host}:{options.rest_port} ({exc.strerror or exc}); "
            "choose another --rest-port (0: a free one)"
        ) from exc
    return sock


def start(context: Any) -> subprocess.Popen[bytes] | None:
    """Start ``oet-gateway`` for the stack and wait until it has reached its devices.

    The first device (or ``--rest-device``) is served at ``/api/v1.0``, the stack's other
    devices at ``/subarray/<n>/api/v1.0``.

    :param context: the stack's ``StackContext`` (options, tango_host, devices, data_dir, env,
        and in ``reserved`` the socket :func:`reserve` bound)
    """
    options = context.options
    if getattr(options, "no_rest", False) or not context.devices:
        return None
    listening = context.reserved[SERVICE_NAME]
    host, port = listening.getsockname()[:2]
    device = options.rest_device or context.devices[0]
    others = [d for d in context.devices if d != device]
    log_path = context.data_dir / "oet-gateway.log"
    args = ["--fd", str(listening.fileno()), "--device", device]
    if others:
        args += ["--devices", ",".join(others)]
    with log_path.open("ab") as log:
        # Started at once, while the database starts: it imports meanwhile (tango too, which
        # its first connection needs) and runs once it has TANGO_HOST; it dies with
        # oet-stack, however that dies.
        process = context.start_child(
            MODULE, args, log, preload=PRELOAD, pass_fds=[listening.fileno()]
        )
    origin = f"http://{_url_host(host)}:{port}"
    try:
        urls = {device: f"{origin}/api/v1.0"}
        for other in others:
            urls[other] = f"{origin}{subarray_prefix(other)}/api/v1.0"
        for url in urls.values():
            _wait_until_connected(process, log_path, url, context.stopping)
    except BaseException:
        process.terminate()
        process.wait(10)
        raise
    for name, url in urls.items():
        print(f"REST API {url} (fronting {name})", flush=True)
    print(f"  e.g. OET_REST_URI={urls[device]} oet list", flush=True)
    return process


def subarray_prefix(device: str) -> str:
    """Same rule as :func:`ska_oso_oet.rest.app.subarray_prefix` (kept free of FastAPI)."""
    match = re.search(r"(\d+)$", device)
    return f"/subarray/{match.group(1) if match else re.sub(r'[^A-Za-z0-9_-]+', '-', device)}"


def _url_host(host: str) -> str:
    """``host`` as a client on this machine reaches it (any address: loopback)."""
    if host in ("0.0.0.0", "::"):
        return "localhost"
    return f"[{host}]" if ":" in host else host


def _wait_until_connected(
    process: subprocess.Popen[bytes], log_path: Any, url: str, stopping: threading.Event
) -> None:
    """Until ``GET {url}/procedures`` answers 200: the gateway has reached that device."""
    import urllib.error  # here: the oet-stack parent needs it only while it starts
    import urllib.request

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if stopping.is_set():  # oet-stack is shutting down
            raise RuntimeError("oet-gateway start-up abandoned: oet-stack is stopping")
        if process.poll() is not None:
            raise RuntimeError(f"oet-gateway exited with code {process.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"oet-gateway not ready within {START_TIMEOUT} s; see {log_path}")
        try:
            with urllib.request.urlopen(f"{url}/procedures", timeout=5):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.02)  # 503 until the device is reached
