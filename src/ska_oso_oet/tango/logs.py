"""SKA logging of devices: the device tag and the ``loggingTargets`` of SKA devices.

Lines have the SKA format of :mod:`ska_oso_oet.logging_format` (shared with the gateway and
``oet-stack``), tagged ``tango-device:<name>``. Targets are ``console::cout``,
``file::<path>``, ``syslog::<url>`` (``file:///dev/log``, ``udp://host:514``,
``tcp://host:601``) and ``tango::logger`` (the Tango Logging Service of the device).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

from ..logging_format import (  # noqa: F401 (re-exported: this module's former contents)
    SKA_DATE_FORMAT,
    SKA_LOG_FORMAT,
    SkaFormatter,
    configure_process_logging,
)
from .ska import LoggingLevel

LOG_FILE_MAX_BYTES = 1024 * 1024

#: Python level for each SKA ``loggingLevel`` (Python has no OFF: CRITICAL comes closest).
PYTHON_LEVELS = {
    LoggingLevel.OFF: logging.CRITICAL + 10,
    LoggingLevel.FATAL: logging.CRITICAL,
    LoggingLevel.ERROR: logging.ERROR,
    LoggingLevel.WARNING: logging.WARNING,
    LoggingLevel.INFO: logging.INFO,
    LoggingLevel.DEBUG: logging.DEBUG,
}
#: log4tango levels (cppTango's Level.hh), used for the device's Tango logger.
TANGO_LEVELS = {
    LoggingLevel.OFF: 100,
    LoggingLevel.FATAL: 200,
    LoggingLevel.ERROR: 300,
    LoggingLevel.WARNING: 400,
    LoggingLevel.INFO: 500,
    LoggingLevel.DEBUG: 600,
}
_PYTHON_TO_TANGO = [
    (logging.CRITICAL, 200),
    (logging.ERROR, 300),
    (logging.WARNING, 400),
    (logging.INFO, 500),
    (logging.NOTSET, 600),
]
TARGET_TYPES = ("console", "file", "syslog", "tango")
MAX_TARGETS = 4


class LoggingTargetError(ValueError):
    """A ``loggingTargets`` entry that cannot be used."""


class DeviceTagFilter(logging.Filter):
    """Stamps ``tango-device:<name>`` into the tags field of a device's records."""

    def __init__(self, device_name: str):
        super().__init__()
        self.tag = f"tango-device:{device_name}"

    def filter(self, record: logging.LogRecord) -> bool:
        record.tags = self.tag
        return True


class TangoLoggingServiceHandler(logging.Handler):
    """Sends records to the device's log4tango logger (the Tango Logging Service)."""

    def __init__(self, tango_logger: Any):
        super().__init__()
        self.tango_logger = tango_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = next(t for p, t in _PYTHON_TO_TANGO if record.levelno >= p)
            self.tango_logger.log(level, self.format(record))
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


def sanitise_targets(
    targets: Iterable[str] | None, device_name: str, log_folder: str | os.PathLike | None = None
) -> list[str]:
    """Normalise ``<type>[::<name>]`` entries, filling in default names; raise on bad ones.

    With ``log_folder``, ``file::`` targets are confined to it (see :func:`confine_log_file`):
    anyone who may write loggingTargets could otherwise create or append to any file the
    server can write."""
    defaults = {
        "console": "cout",
        "file": f"{device_name.replace('/', '_')}.log",
        "syslog": "",
        "tango": "logger",
    }
    result: list[str] = []
    for raw in targets or ():
        target = raw.strip()
        if not target:
            continue
        kind, _, name = target.partition("::")
        if kind not in defaults:
            raise LoggingTargetError(
                f"invalid logging target type {kind!r}; options are {list(TARGET_TYPES)}"
            )
        name = name or defaults[kind]
        if not name:
            raise LoggingTargetError(
                f"logging target type {kind!r} needs a name, e.g. syslog::udp://host:514"
            )
        if kind == "syslog":
            syslog_address(name)  # validate now, not when the first record is emitted
        if kind == "file" and log_folder is not None:
            name = confine_log_file(name, log_folder)
        result.append(f"{kind}::{name}")
    if len(result) > MAX_TARGETS:
        raise LoggingTargetError(f"at most {MAX_TARGETS} logging targets are allowed")
    return result


def confine_log_file(name: str, log_folder: str | os.PathLike) -> str:
    """The absolute path of log file ``name`` (relative names are relative to ``log_folder``),
    refused unless it lies inside ``log_folder`` once symbolic links and ``..`` are resolved."""
    folder = os.path.realpath(log_folder)
    path = os.path.realpath(os.path.join(folder, name))
    if os.path.commonpath([folder, path]) != folder or path == folder:
        shown = name if len(name) <= 120 else name[:120] + "..."
        raise LoggingTargetError(
            f"file logging target {shown!r} is outside the log folder {folder} (LogFolder)"
        )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def syslog_address(url: str) -> tuple[tuple[str, int] | str, socket.SocketKind | None]:
    """Address and socket type for ``file://path``, ``udp://host:port`` or ``tcp://host:port``."""
    parsed = urlparse(url)
    if parsed.scheme in ("file", ""):
        path = parsed.netloc + parsed.path
        if not path:
            raise LoggingTargetError(f"syslog target {url!r} has an empty path")
        return path, None
    if parsed.scheme in ("udp", "tcp"):
        try:
            port = parsed.port
        except ValueError as exc:
            raise LoggingTargetError(f"syslog target {url!r} has an invalid port") from exc
        if not parsed.hostname or not port:
            raise LoggingTargetError(f"syslog target {url!r} needs host and port")
        kind = socket.SOCK_DGRAM if parsed.scheme == "udp" else socket.SOCK_STREAM
        return (parsed.hostname, port), kind
    raise LoggingTargetError(f"syslog target {url!r} must use file://, udp:// or tcp://")


def create_handler(target: str, tango_logger: Any = None) -> logging.Handler:
    """A handler for one sanitised target, formatting in the SKA format."""
    kind, _, name = target.partition("::")
    handler: logging.Handler
    if kind == "console":
        handler = logging.StreamHandler(sys.stdout)
    elif kind == "file":
        handler = logging.handlers.RotatingFileHandler(name, "a", LOG_FILE_MAX_BYTES, 2)
    elif kind == "syslog":
        address, socktype = syslog_address(name)
        handler = logging.handlers.SysLogHandler(address=address, socktype=socktype)
    elif kind == "tango":
        if tango_logger is None:
            raise LoggingTargetError("the tango logging target needs the device's Tango logger")
        handler = TangoLoggingServiceHandler(tango_logger)
    else:
        raise LoggingTargetError(f"invalid logging target {target!r}")
    handler.setFormatter(SkaFormatter())
    handler.name = target
    return handler


def update_handlers(logger: logging.Logger, targets: list[str], tango_logger: Any = None) -> None:
    """Make ``logger``'s handlers match ``targets``: drop the others, add the missing ones."""
    current = {h.name: h for h in logger.handlers}
    for name, handler in current.items():
        if name not in targets:
            logger.removeHandler(handler)
            handler.close()
    for target in targets:
        if target not in current:
            logger.addHandler(create_handler(target, tango_logger))
