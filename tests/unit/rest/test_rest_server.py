"""oet-gateway: flags over OET_REST_* variables over defaults, served in factory mode."""

from __future__ import annotations

import os
from unittest import mock

import pytest

from ska_oso_oet.rest import server
from ska_oso_oet.rest.settings import RestSettings


def test_defaults_match_the_documentation(monkeypatch):
    for name in ("HOST", "PORT", "DEVICE", "TANGO_HOST", "BASE_PATH"):
        monkeypatch.delenv(f"OET_REST_{name}", raising=False)
    settings = RestSettings()
    assert (settings.host, settings.port, settings.base_path) == ("127.0.0.1", 5000, "/api/v1.0")
    assert settings.device_trl == "oso/oet/1"


def test_tango_host_qualifies_the_device_name():
    settings = RestSettings(device="oso/oet/2", tango_host="db:10000", base_path="api/v1.0/")
    assert settings.device_trl == "tango://db:10000/oso/oet/2"
    assert settings.base_path == "/api/v1.0"


def test_flags_override_the_environment_and_uvicorn_uses_the_factory(monkeypatch):
    seen = {}
    monkeypatch.setattr(server.uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    with mock.patch.dict(os.environ):  # main() exports flags as OET_REST_*: undo it all after
        os.environ["OET_REST_PORT"] = "6000"
        os.environ["OET_REST_DEVICE"] = "oso/oet/3"
        server.main(["--port", "7001", "--tango-host", "localhost:10000", "--devices", "a/b/2"])
        settings = RestSettings()
    assert seen["app"] == "ska_oso_oet.rest.app:create_app" and seen["factory"] is True
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 7001)
    assert settings.device_trl == "tango://localhost:10000/oso/oet/3"
    assert settings.devices == ["a/b/2"]
    assert "OET_REST_TANGO_HOST" not in os.environ


def test_the_access_log_is_on_unless_turned_off(monkeypatch):
    seen = {}
    monkeypatch.setattr(server.uvicorn, "run", lambda app, **kw: seen.update(kw))
    with mock.patch.dict(os.environ):
        os.environ.pop("OET_REST_ACCESS_LOG", None)
        server.main([])
        assert seen["access_log"] is True
        server.main(["--no-access-log"])
        assert seen["access_log"] is False
    with mock.patch.dict(os.environ, {"OET_REST_ACCESS_LOG": "false"}):
        server.main([])
        assert seen["access_log"] is False


def test_invalid_configuration_exits_with_a_message(monkeypatch):
    monkeypatch.setenv("OET_REST_PORT", "not-a-port")
    monkeypatch.setattr(server.uvicorn, "run", lambda *a, **k: pytest.fail("must not serve"))
    with pytest.raises(SystemExit) as caught:
        server.main([])
    assert "invalid configuration" in str(caught.value)
