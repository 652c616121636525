"""Fixtures for engine and activity tests: real worker processes on the scripts of tests/scripts."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ska_oso_oet.events import Event
from ska_oso_oet.procedure.config import OetConfig
from ska_oso_oet.procedure.domain import PrepareRequest
from ska_oso_oet.procedure.launcher import WorkerLauncher
from ska_oso_oet.procedure.service import ScriptExecutionService

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
TIMEOUT = 30.0


def script_uri(name: str) -> str:
    return f"file://{SCRIPTS / name}"


def prepare_request(name: str, init_kwargs: dict | None = None) -> PrepareRequest:
    return prepare_uri(script_uri(name), init_kwargs)


def prepare_uri(uri: str, init_kwargs: dict | None = None) -> PrepareRequest:
    body = {"script": {"script_type": "filesystem", "script_uri": uri}}
    if init_kwargs is not None:
        body["script_args"] = {"init": {"args": [], "kwargs": init_kwargs}}
    return PrepareRequest.from_dict(body)


class EventRecorder:
    """Collects a service's events and waits for conditions on them."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float = TIMEOUT) -> Event:
        with self._changed:
            found: list[Event] = []

            def match() -> bool:
                found[:] = [e for e in self.events if predicate(e)]
                return bool(found)

            if not self._changed.wait_for(match, timeout):
                raise AssertionError(f"no matching event within {timeout} s; saw {self.topics()}")
            return found[0]

    def topics(self, procedure_id: int | None = None) -> list[str]:
        return [
            e.topic
            for e in self.events
            if procedure_id is None or e.payload.get("procedure_id") == procedure_id
        ]

    def of(self, procedure_id: int, topic: str | None = None) -> list[Event]:
        return [
            e
            for e in self.events
            if e.payload.get("procedure_id") == procedure_id and (topic is None or e.topic == topic)
        ]


@pytest.fixture(scope="session")
def launcher() -> Iterator[WorkerLauncher]:
    launcher = WorkerLauncher(preload_modules=("tango", "pubsub"), warm_workers=2)
    yield launcher
    launcher.close()


@pytest.fixture
def make_service(
    launcher: WorkerLauncher, tmp_path: Path
) -> Iterator[Callable[..., ScriptExecutionService]]:
    services: list[ScriptExecutionService] = []

    def make(**overrides) -> ScriptExecutionService:
        settings = {
            "script_roots": (SCRIPTS, tmp_path),
            "state_database": tmp_path / "state.sqlite",
            "sb_store": tmp_path / "sbds",
            "stop_grace_seconds": 1.0,
            "abort_script": script_uri("abort.py"),
            **overrides,
        }
        service = ScriptExecutionService(OetConfig(**settings), launcher=launcher)
        services.append(service)
        return service

    yield make
    for service in services:
        service.shutdown()


@pytest.fixture
def service(make_service) -> ScriptExecutionService:
    return make_service()


@pytest.fixture
def recorder(service: ScriptExecutionService) -> EventRecorder:
    recorder = EventRecorder()
    service.events.subscribe(recorder)
    return recorder
