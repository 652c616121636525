"""SKA logging format and targets, and the SKA enum values of DESIGN §4."""

from __future__ import annotations

import logging
import re

import pytest

from ska_oso_oet.tango import logs
from ska_oso_oet.tango.ska import (
    AdminMode,
    HealthState,
    LoggingLevel,
    ResultCode,
    TaskStatus,
)

SKA_LINE = re.compile(
    r"^1\|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\|INFO\|MainThread\|test_line_has_ska_format\|"
    r"test_logs_and_enums\.py#\d+\|tango-device:oso/oet/1\|hello world$"
)


def test_enum_values_match_the_ska_control_model() -> None:
    assert [(m.name, m.value) for m in AdminMode] == [
        ("ONLINE", 0),
        ("OFFLINE", 1),
        ("ENGINEERING", 2),
        ("NOT_FITTED", 3),
        ("RESERVED", 4),
    ]
    assert [m.name for m in HealthState] == ["OK", "DEGRADED", "FAILED", "UNKNOWN"]
    assert [m.name for m in ResultCode] == [
        "OK",
        "STARTED",
        "QUEUED",
        "FAILED",
        "UNKNOWN",
        "REJECTED",
        "NOT_ALLOWED",
        "ABORTED",
    ]
    assert [m.name for m in TaskStatus] == [
        "STAGING",
        "QUEUED",
        "IN_PROGRESS",
        "ABORTED",
        "NOT_FOUND",
        "COMPLETED",
        "REJECTED",
        "FAILED",
    ]
    assert [m.name for m in LoggingLevel] == ["OFF", "FATAL", "ERROR", "WARNING", "INFO", "DEBUG"]


def test_line_has_ska_format() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 10, "hello %s", ("world",), None, "f")
    record.funcName = "test_line_has_ska_format"
    record.threadName = "MainThread"
    logs.DeviceTagFilter("oso/oet/1").filter(record)
    assert SKA_LINE.match(logs.SkaFormatter().format(record)), logs.SkaFormatter().format(record)


def test_targets_get_default_names() -> None:
    assert logs.sanitise_targets(["console", "file", "tango", " "], "oso/oet/1") == [
        "console::cout",
        "file::oso_oet_1.log",
        "tango::logger",
    ]
    assert logs.sanitise_targets(["syslog::udp://localhost:514"], "a/b/c") == [
        "syslog::udp://localhost:514"
    ]


@pytest.mark.parametrize(
    "targets",
    [["bogus::x"], ["syslog"], ["syslog::ftp://x"], ["syslog::udp://host"], ["console"] * 5],
)
def test_bad_targets_are_refused(targets: list[str]) -> None:
    with pytest.raises(logs.LoggingTargetError):
        logs.sanitise_targets(targets, "a/b/c")


def test_file_target_writes_ska_lines(tmp_path) -> None:
    logger = logging.getLogger("test.oet.file_target")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addFilter(logs.DeviceTagFilter("oso/oet/2"))
    path = tmp_path / "device.log"
    logs.update_handlers(logger, [f"file::{path}"])
    logger.info("into the file")
    logs.update_handlers(logger, [])
    assert logger.handlers == []
    line = path.read_text().strip()
    assert line.startswith("1|") and line.endswith("|tango-device:oso/oet/2|into the file")


def test_tango_target_maps_levels_to_log4tango() -> None:
    class FakeTangoLogger:
        def __init__(self) -> None:
            self.calls: list[tuple[int, str]] = []

        def log(self, level: int, message: str) -> None:
            self.calls.append((level, message))

    fake = FakeTangoLogger()
    logger = logging.getLogger("test.oet.tango_target")
    logger.propagate = False
    logs.update_handlers(logger, ["tango::logger"], fake)
    logger.warning("careful")
    logger.error("broken")
    logs.update_handlers(logger, [])
    assert [level for level, _ in fake.calls] == [400, 300]
    assert fake.calls[0][1].endswith("|careful")
