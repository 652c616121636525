"""The REST gateway as a service of ``oet-stack`` (see :mod:`ska_oso_oet.stack`).

``oet-stack`` calls :func:`add_arguments` while building its parser and :func:`start` once the
devices answer. The gateway runs as its own process (``python -m ska_oso_oet.rest.server``)
fronting one device, and :func:`start` returns once it has reached that device, after printing
the API's URL. Nothing here imports FastAPI or Tango, so ``oet-stack --help`` stays quick.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

START_TIMEOUT = 60.0
_RUNNING = "Uvicorn running on "


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


def start(context: Any) -> subprocess.Popen[bytes] | None:
    """Start ``oet-gateway`` for the stack and wait until it has reached its device.

    :param context: the stack's ``StackContext`` (options, tango_host, devices, data_dir, env)
    """
    options = context.options
    if getattr(options, "no_rest", False) or not context.devices:
        return None
    host = options.rest_host or options.host
    device = options.rest_device or context.devices[0]
    log_path = context.data_dir / "oet-gateway.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    command = [
        sys.executable, "-m", "ska_oso_oet.rest.server", "--host", host,
        "--port", str(options.rest_port), "--device", device, "--tango-host", context.tango_host,
    ]  # fmt: skip
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=context.env, start_new_session=True
        )
    try:
        url = _wait_until_serving(process, log_path, offset)
    except BaseException:
        process.terminate()
        process.wait(10)
        raise
    print(f"REST API {url} (fronting {device}); e.g. OET_REST_URI={url} oet list", flush=True)
    return process


def _wait_until_serving(process: subprocess.Popen[bytes], log_path: Any, offset: int) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    base = None
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"oet-gateway exited with code {process.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"oet-gateway not ready within {START_TIMEOUT} s; see {log_path}")
        if base is None:
            text = log_path.read_bytes()[offset:].decode(errors="replace")
            if _RUNNING in text:
                base = text.split(_RUNNING, 1)[1].split()[0]
        if base is not None:
            url = base.replace("://0.0.0.0:", "://localhost:") + "/api/v1.0"
            try:
                with urllib.request.urlopen(f"{url}/procedures", timeout=5):
                    return url  # 200: the gateway reached its device
            except (urllib.error.URLError, OSError):
                pass  # 503 until the device is reached, or not listening yet
        time.sleep(0.1)  # waiting for a child process to become ready
