"""The CLI against a real gateway (uvicorn in a thread) over the fake device."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ska_oso_oet.rest.app import create_app
from ska_oso_oet.rest.settings import RestSettings


def _load_gateway_fakes():
    """The fake device lives beside the gateway tests; load it by path (no test packages)."""
    name = "oet_gateway_fakes"
    if name not in sys.modules:
        path = Path(__file__).parents[1] / "rest" / "gateway_fakes.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


fakes = _load_gateway_fakes()


@pytest.fixture
def device():
    return fakes.FakeDevice()


@pytest.fixture
def server_url(device, monkeypatch) -> Iterator[str]:
    settings = RestSettings(start_wait_seconds=5, stop_wait_seconds=5, keepalive_seconds=1)
    with fakes.serve_in_thread(create_app(settings, client=device)) as url:
        monkeypatch.setenv("OET_REST_URI", f"{url}/api/v1.0")
        yield f"{url}/api/v1.0"
