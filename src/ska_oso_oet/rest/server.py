"""``oet-gateway``: serve the REST gateway with uvicorn.

Flags override ``OET_REST_*`` environment variables, which override the defaults of
:class:`~.settings.RestSettings`. The app itself is built by uvicorn's factory mode from the
environment, so flags are handed over as ``OET_REST_*`` variables of this process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from ..logging_format import logging_config
from .auth import Authenticator, exposure_problem, hash_token
from .protocol import BoundedHttpToolsProtocol
from .settings import RestSettings

#: The tags field of the gateway's log lines.
LOG_TAGS = "service:oet-gateway"
#: uvicorn's exit code when it could not start (e.g. its port is taken).
STARTUP_FAILURE = 3
LOGGER = logging.getLogger(__name__)

_FLAGS = {
    "host": "OET_REST_HOST",
    "port": "OET_REST_PORT",
    "device": "OET_REST_DEVICE",
    "devices": "OET_REST_DEVICES",
    "tango_host": "OET_REST_TANGO_HOST",
    "base_path": "OET_REST_BASE_PATH",
    "v7_path": "OET_REST_V7_PATH",
    "log_level": "OET_REST_LOG_LEVEL",
    "access_log": "OET_REST_ACCESS_LOG",
    "auth_tokens_file": "OET_REST_AUTH_TOKENS_FILE",
    "oidc_issuer": "OET_REST_OIDC_ISSUER",
    "oidc_audience": "OET_REST_OIDC_AUDIENCE",
    "oidc_jwks_url": "OET_REST_OIDC_JWKS_URL",
    "oidc_roles_claim": "OET_REST_OIDC_ROLES_CLAIM",
    "max_body_bytes": "OET_REST_MAX_BODY_BYTES",
}


def uvicorn_options() -> dict[str, Any]:
    """The event loop and HTTP protocol the gateway runs on: uvloop, and httptools with a
    bounded request head (:mod:`.protocol`); tests serve the app with the same."""
    return {"loop": "uvloop", "http": BoundedHttpToolsProtocol}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="oet-gateway",
        description="Serve the OET REST API (and its event stream) in front of an OETDevice.",
        epilog="Every option can also be set with the environment variable in brackets.",
    )
    parser.add_argument(
        "--host",
        help="address to listen on [OET_REST_HOST] (default 127.0.0.1; any other address "
        "needs authentication or --insecure-no-auth)",
    )
    parser.add_argument("--port", type=int, help="port to listen on [OET_REST_PORT] (default 5000)")
    parser.add_argument(
        "--fd",
        type=int,
        help="serve this inherited socket, bound already, instead of --host/--port (how "
        "oet-stack hands over the port it holds)",
    )
    parser.add_argument(
        "--device",
        help="Tango name of the OETDevice to front [OET_REST_DEVICE] (default oso/oet/1)",
    )
    parser.add_argument(
        "--devices",
        help="more devices, comma-separated: all are one OET at the base path, and each is "
        "also served alone under /subarray/<n> [OET_REST_DEVICES]",
    )
    parser.add_argument(
        "--tango-host",
        help="HOST:PORT of the Tango database [OET_REST_TANGO_HOST] (default: $TANGO_HOST)",
    )
    parser.add_argument("--base-path", help="URL prefix [OET_REST_BASE_PATH] (default /api/v1.0)")
    parser.add_argument(
        "--v7-path",
        help="URL prefix of the v7 API, '' for none [OET_REST_V7_PATH] "
        "(default /ska-oso-oet/oet/api/v7)",
    )
    parser.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        help="[OET_REST_LOG_LEVEL] (default info)",
    )
    parser.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_const",
        const=False,
        default=None,
        help="no log line per request [OET_REST_ACCESS_LOG=false]",
    )
    auth = parser.add_argument_group("authentication (docs/security.md)")
    auth.add_argument(
        "--auth-tokens-file",
        help="JSON file of hashed bearer tokens with users and roles [OET_REST_AUTH_TOKENS_FILE]",
    )
    auth.add_argument(
        "--oidc-issuer", help="accept access tokens of this OIDC issuer [OET_REST_OIDC_ISSUER]"
    )
    auth.add_argument(
        "--oidc-audience", help="required 'aud' of access tokens [OET_REST_OIDC_AUDIENCE]"
    )
    auth.add_argument(
        "--oidc-jwks-url",
        help="the issuer's JWKS [OET_REST_OIDC_JWKS_URL] (default: from its discovery document)",
    )
    auth.add_argument(
        "--oidc-roles-claim",
        help="claim listing the OET roles, dotted for nested claims [OET_REST_OIDC_ROLES_CLAIM] "
        "(default roles)",
    )
    auth.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=None,
        help="serve without authentication on a non-loopback address: anyone who can reach it "
        "can run scripts [OET_REST_INSECURE_NO_AUTH]",
    )
    auth.add_argument(
        "--hash-token",
        action="store_true",
        help="read a token on standard input, print its tokens-file entry and exit",
    )
    parser.add_argument(
        "--max-body-bytes", type=int, help="largest request body [OET_REST_MAX_BODY_BYTES]"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``oet-gateway``."""
    args = parse_args(argv)
    if args.hash_token:
        _print_token_entry(sys.stdin.readline().strip())
        return
    inherited = None
    if args.fd is not None:
        if args.host is not None or args.port is not None:
            sys.exit("oet-gateway: --fd serves a bound socket: give no --host or --port with it")
        inherited = _inherited_socket(args.fd)
        # the address actually served: the exposure check below must judge that one
        args.host, args.port = inherited.getsockname()[:2]
    if args.insecure_no_auth:
        os.environ["OET_REST_INSECURE_NO_AUTH"] = "true"
    for name, variable in _FLAGS.items():
        value = getattr(args, name)
        if value is not None:
            os.environ[variable] = str(value)
    try:
        settings = RestSettings()
    except ValueError as exc:  # pydantic's ValidationError: report it like argparse would
        sys.exit(f"oet-gateway: invalid configuration: {exc}")
    problem = exposure_problem(settings)
    if problem:
        sys.exit(f"oet-gateway: {problem}")
    try:  # a broken tokens file is a configuration error, not a crash at the first request
        Authenticator.from_settings(settings)
    except ValueError as exc:
        sys.exit(f"oet-gateway: invalid configuration: {exc}")
    if settings.insecure_no_auth and not settings.auth_tokens_file and not settings.oidc_issuer:
        print(
            f"oet-gateway: WARNING: serving {settings.host} WITHOUT AUTHENTICATION "
            "(--insecure-no-auth): anyone who can reach it can run scripts",
            file=sys.stderr,
        )
    options: dict[str, Any] = {
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        # SKA-format lines for everything, uvicorn's access and error logs included
        "log_config": logging_config(settings.log_level, tags=LOG_TAGS),
        "access_log": settings.access_log,
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
        "proxy_headers": True,
        **uvicorn_options(),
    }
    if inherited is None:
        uvicorn.run("ska_oso_oet.rest.app:create_app", **options)
        return
    server = uvicorn.Server(uvicorn.Config("ska_oso_oet.rest.app:create_app", **options))
    LOGGER.info(
        "serving http://%s:%d (socket %d, bound by the process that started this one)",
        settings.host,
        settings.port,
        args.fd,
    )
    server.run(sockets=[inherited])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def _inherited_socket(fd: int) -> socket.socket:
    """The TCP socket behind descriptor ``fd`` (its family read from it)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        sys.exit(f"oet-gateway: --fd {fd} is no socket of this process: {exc}")
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
        sys.exit(f"oet-gateway: --fd {fd} is not a TCP socket")
    return sock


def _print_token_entry(token: str) -> None:
    if len(token) < 16:
        sys.exit(
            "oet-gateway: a token needs at least 16 characters (try secrets.token_urlsafe(32))"
        )
    entry = {"sha256": hash_token(token), "user": "USER", "roles": ["viewer"]}
    print(json.dumps(entry))


if __name__ == "__main__":
    main()
