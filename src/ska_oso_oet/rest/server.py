"""``oet-gateway``: serve the REST gateway with uvicorn.

Flags override ``OET_REST_*`` environment variables, which override the defaults of
:class:`~.settings.RestSettings`. The app itself is built by uvicorn's factory mode from the
environment, so flags are handed over as ``OET_REST_*`` variables of this process.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import uvicorn

from ..logging_format import logging_config
from .settings import RestSettings

#: The tags field of the gateway's log lines.
LOG_TAGS = "service:oet-gateway"

_FLAGS = {
    "host": "OET_REST_HOST",
    "port": "OET_REST_PORT",
    "device": "OET_REST_DEVICE",
    "devices": "OET_REST_DEVICES",
    "tango_host": "OET_REST_TANGO_HOST",
    "base_path": "OET_REST_BASE_PATH",
    "log_level": "OET_REST_LOG_LEVEL",
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="oet-gateway",
        description="Serve the OET REST API (and its event stream) in front of an OETDevice.",
        epilog="Every option can also be set with the environment variable in brackets.",
    )
    parser.add_argument("--host", help="address to listen on [OET_REST_HOST] (default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to listen on [OET_REST_PORT] (default 5000)")
    parser.add_argument(
        "--device",
        help="Tango name of the OETDevice to front [OET_REST_DEVICE] (default oso/oet/1)",
    )
    parser.add_argument(
        "--devices",
        help="more devices, comma-separated, each served under /subarray/<n> [OET_REST_DEVICES]",
    )
    parser.add_argument(
        "--tango-host",
        help="HOST:PORT of the Tango database [OET_REST_TANGO_HOST] (default: $TANGO_HOST)",
    )
    parser.add_argument("--base-path", help="URL prefix [OET_REST_BASE_PATH] (default /api/v1.0)")
    parser.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        help="[OET_REST_LOG_LEVEL] (default info)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``oet-gateway``."""
    args = parse_args(argv)
    for name, variable in _FLAGS.items():
        value = getattr(args, name)
        if value is not None:
            os.environ[variable] = str(value)
    try:
        settings = RestSettings()
    except ValueError as exc:  # pydantic's ValidationError: report it like argparse would
        sys.exit(f"oet-gateway: invalid configuration: {exc}")
    uvicorn.run(
        "ska_oso_oet.rest.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # SKA-format lines for everything, uvicorn's access and error logs included
        log_config=logging_config(settings.log_level, tags=LOG_TAGS),
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        proxy_headers=True,
    )


if __name__ == "__main__":
    main()
