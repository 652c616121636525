"""Configuration precedence: defaults < OET_* environment < explicit settings."""

from pathlib import Path

import pytest

from ska_oso_oet.procedure.config import OetConfig, config_from_sources


def test_defaults_then_environment_then_settings():
    assert config_from_sources() == OetConfig()
    environ = {
        "OET_HISTORY_SIZE": "5",
        "OET_SCRIPT_ROOTS": "/a:/b",
        "OET_STOP_GRACE_SECONDS": "2.5",
    }
    from_env = config_from_sources(environ=environ)
    assert from_env.history_size == 5
    assert from_env.script_roots == (Path("/a"), Path("/b"))
    assert from_env.stop_grace_seconds == 2.5
    explicit = config_from_sources(
        {"history_size": 7, "script_roots": ["/c"], "abort_script": None}, environ
    )
    assert explicit.history_size == 7
    assert explicit.script_roots == (Path("/c"),)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown OET setting"):
        config_from_sources({"histroy_size": 3})
    with pytest.raises(ValueError, match="history_size"):
        config_from_sources({"history_size": 0})
