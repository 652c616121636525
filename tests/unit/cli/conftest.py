"""The CLI against a real gateway (uvicorn in a thread) over the fake device."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ska_oso_oet.rest.app import create_app
from ska_oso_oet.rest.settings import RestSettings
from tests.unit.rest import gateway_fakes as fakes


@pytest.fixture
def device():
    return fakes.FakeDevice()


@pytest.fixture
def server_url(device, monkeypatch) -> Iterator[str]:
    settings = RestSettings(start_wait_seconds=5, stop_wait_seconds=5, keepalive_seconds=1)
    with fakes.serve_in_thread(create_app(settings, client=device)) as url:
        monkeypatch.setenv("OET_REST_URI", f"{url}/api/v1.0")
        yield f"{url}/api/v1.0"
