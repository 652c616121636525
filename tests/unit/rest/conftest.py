"""Fixtures for gateway tests: the app over a fake device, in-process or on real uvicorn."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from ska_oso_oet.rest.app import create_app
from ska_oso_oet.rest.settings import RestSettings
from tests.unit.rest.gateway_fakes import FakeDevice, serve_in_thread


@pytest.fixture
def settings() -> RestSettings:
    return RestSettings(start_wait_seconds=5, stop_wait_seconds=5, keepalive_seconds=15)


@pytest.fixture
def device() -> FakeDevice:
    return FakeDevice()


@pytest.fixture
def client(settings: RestSettings, device: FakeDevice) -> Iterator[TestClient]:
    with TestClient(create_app(settings, client=device)) as test_client:
        yield test_client


@pytest.fixture
def server_url(settings: RestSettings, device: FakeDevice) -> Iterator[str]:
    with serve_in_thread(create_app(settings, client=device)) as url:
        yield url
