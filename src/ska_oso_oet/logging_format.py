"""The SKA log line format, shared by every OET process.

Every line looks like::

    1|2026-11-21T17:02:03.123Z|INFO|Thread-3|prepare|device.py#120|tango-device:oso/oet/1|message

(version, UTC time, level, thread, function, file#line, tags, message), which is what SKA log
aggregation parses. The device server (:mod:`ska_oso_oet.tango.logs` adds the device tag and the
``loggingTargets``), the REST gateway (uvicorn's access and error logs included) and
``oet-stack`` all format through :class:`SkaFormatter`. This module imports nothing but the
standard library, so any layer may use it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, TextIO

SKA_LOG_FORMAT = (
    "1|%(asctime)s.%(msecs)03dZ|%(levelname)s|%(threadName)s|%(funcName)s|"
    "%(filename)s#%(lineno)d|%(tags)s|%(message)s"
)
SKA_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


class SkaFormatter(logging.Formatter):
    """Formats records in the SKA line format, with UTC timestamps.

    :param tags: the tags field of records that carry no ``tags`` attribute of their own
        (a device's records get theirs from ``DeviceTagFilter``), e.g. ``service:oet-gateway``
    """

    converter = time.gmtime

    def __init__(self, tags: str = "") -> None:
        super().__init__(fmt=SKA_LOG_FORMAT, datefmt=SKA_DATE_FORMAT)
        self.default_tags = tags

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "tags"):
            record.tags = self.default_tags
        return super().format(record)


_root_lock = threading.Lock()


def configure_process_logging(
    level: int | str = logging.INFO, stream: TextIO | None = None, tags: str = ""
) -> logging.Handler:
    """Give the root logger one SKA-formatted console handler (idempotent); returns it.

    Every logger propagating to the root (uvicorn's, a device's, the stack's) then writes lines
    of the SKA shape. A later call changes nothing (neither handler nor level), so several
    devices of one server can each call it without duplicating lines.

    :param stream: where lines go (default: ``sys.stdout``)
    :param tags: tags of records that carry none
    """
    with _root_lock:
        root = logging.getLogger()
        for handler in root.handlers:
            if getattr(handler, "_ska_console", False):
                return handler
        root.setLevel(level.upper() if isinstance(level, str) else level)
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(SkaFormatter(tags))
        handler._ska_console = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        return handler


def logging_config(level: str = "info", tags: str = "", stream: str = "stdout") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` mapping: every record through one SKA console handler.

    For servers that configure logging from a dict, e.g. ``uvicorn.run(log_config=...)``: its
    own loggers (``uvicorn.error``, ``uvicorn.access``) get no handlers and propagate to the
    root, so access and error lines take the SKA shape too. Loggers created earlier are kept.

    :param level: root level name (``info``, ``debug``...)
    :param tags: tags of records that carry none, e.g. ``service:oet-gateway``
    :param stream: ``stdout`` or ``stderr``
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"ska": {"()": SkaFormatter, "tags": tags}},
        "handlers": {
            "ska_console": {
                "class": "logging.StreamHandler",
                "formatter": "ska",
                "stream": f"ext://sys.{stream}",
            }
        },
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
        },
        "root": {"handlers": ["ska_console"], "level": level.upper()},
    }
