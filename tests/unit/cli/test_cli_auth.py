"""``oet`` against a gateway with authentication: --token, OET_TOKEN, token files, 401/403."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from ska_oso_oet.cli import exit_codes
from ska_oso_oet.cli.main import main
from ska_oso_oet.rest.app import create_app
from ska_oso_oet.rest.auth import hash_token
from ska_oso_oet.rest.settings import RestSettings
from tests.unit.rest import gateway_fakes as fakes

VIEWER, OPERATOR = "viewer-token-" + "v" * 24, "operator-token-" + "o" * 24


@pytest.fixture
def device():
    return fakes.FakeDevice()


@pytest.fixture
def server_url(device, tmp_path, monkeypatch) -> Iterator[str]:
    tokens = tmp_path / "tokens.json"
    entries = [
        {"sha256": hash_token(VIEWER), "user": "vera", "roles": ["viewer"]},
        {"sha256": hash_token(OPERATOR), "user": "otto", "roles": ["operator"]},
    ]
    tokens.write_text(json.dumps({"tokens": entries}))
    settings = RestSettings(auth_tokens_file=tokens, start_wait_seconds=5, stop_wait_seconds=5)
    for name in ("OET_TOKEN", "OET_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/oet/token of the real user
    with fakes.serve_in_thread(create_app(settings, client=device)) as url:
        monkeypatch.setenv("OET_REST_URI", f"{url}/api/v1.0")
        yield f"{url}/api/v1.0"


def oet(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return exited.value.code or 0, out, err


def test_no_token_explains_the_401(server_url, capsys):
    code, _, err = oet(capsys, "list")
    assert code == exit_codes.UNAUTHORIZED
    assert "401" in err and "--token" in err and "OET_TOKEN" in err


def test_viewer_token_lists_but_a_create_explains_the_403(server_url, capsys):
    code, _, _ = oet(capsys, "--token", VIEWER, "list")
    assert code == 0
    code, _, err = oet(capsys, "--token", VIEWER, "create", "file:///scripts/a.py")
    assert code == exit_codes.FORBIDDEN
    assert "vera" in err and "operator" in err and "role" in err


def test_token_from_the_environment_and_describe_shows_who(server_url, capsys, monkeypatch):
    monkeypatch.setenv("OET_TOKEN", OPERATOR)
    code, _, err = oet(capsys, "create", "file:///scripts/a.py")
    assert code == 0, err
    code, out, _ = oet(capsys, "describe", "--pid=1")
    assert code == 0
    assert "By" in out and "otto" in out and "created" in out


def test_token_file_and_default_location(server_url, capsys, tmp_path, monkeypatch):
    named = tmp_path / "my-token"
    named.write_text(OPERATOR + "\n")
    assert oet(capsys, "--token-file", str(named), "list")[0] == 0
    default = tmp_path / ".config" / "oet" / "token"
    default.parent.mkdir(parents=True)
    default.write_text(VIEWER)
    assert oet(capsys, "list")[0] == 0


def test_missing_named_token_file_is_a_usage_error(server_url, capsys, tmp_path):
    code, _, err = oet(capsys, "--token-file", str(tmp_path / "nope"), "list")
    assert code == 2 and "does not exist" in err
