"""Authentication and roles of the gateway: tokens file and OIDC access tokens (issue 13)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient

from ska_oso_oet.rest import server
from ska_oso_oet.rest.app import create_app
from ska_oso_oet.rest.auth import TokenFile, hash_token
from ska_oso_oet.rest.settings import RestSettings
from tests.support.oidc import new_rsa_key, test_issuer
from tests.unit.rest.gateway_fakes import FakeDevice, serve_in_thread

BASE = "/api/v1.0"
CREATE = {"script": {"script_uri": "file:///scripts/hello.py"}}
SBD = {"sbd_id": "sbd-1", "activities": {"observe": {"kind": "filesystem", "path": "file:///a.py"}}}
TOKENS = {"viewer": "v" * 32, "operator": "o" * 32, "admin": "a" * 32}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    entries = [
        {"sha256": hash_token(token), "user": f"{role}-user", "roles": [role]}
        for role, token in TOKENS.items()
    ]
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": entries}))
    return path


@pytest.fixture
def device() -> FakeDevice:
    return FakeDevice()


@pytest.fixture
def client(tokens_file: Path, device: FakeDevice):
    settings = RestSettings(auth_tokens_file=tokens_file, stop_wait_seconds=5)
    with TestClient(create_app(settings, client=device)) as test_client:
        yield test_client


def assert_error(response: httpx.Response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "type", "Message"}
    assert body["type"] == error_type and body["error"].startswith(str(status))
    return body


class TestTokensFile:
    def test_no_token_is_401_with_the_documented_body(self, client):
        body = assert_error(client.get(f"{BASE}/procedures"), 401, "Unauthorized")
        assert "Bearer" in body["Message"]
        assert client.get(f"{BASE}/procedures").headers["WWW-Authenticate"].startswith("Bearer")

    @pytest.mark.parametrize("header", ["Bearer " + "x" * 32, "Basic dXNlcjpwYXNz", "Bearer"])
    def test_unknown_token_is_401(self, client, header):
        response = client.get(f"{BASE}/procedures", headers={"Authorization": header})
        assert_error(response, 401, "Unauthorized")

    def test_viewer_reads_but_may_not_run(self, client):
        headers = bearer(TOKENS["viewer"])
        assert client.get(f"{BASE}/procedures", headers=headers).status_code == 200
        assert client.get(f"{BASE}/activities", headers=headers).status_code == 200
        body = assert_error(
            client.post(f"{BASE}/procedures", json=CREATE, headers=headers), 403, "Forbidden"
        )
        assert "viewer-user" in body["Message"] and "operator role" in body["Message"]

    def test_operator_runs_procedures_but_may_not_store_sbds(self, client, device):
        headers = bearer(TOKENS["operator"])
        created = client.post(f"{BASE}/procedures", json=CREATE, headers=headers)
        assert created.status_code == 201
        pid = created.json()["procedure"]["id"]
        started = client.put(f"{BASE}/procedures/{pid}", json={"state": "RUNNING"}, headers=headers)
        assert started.status_code == 200, started.text
        stopped = client.put(
            f"{BASE}/procedures/{pid}", json={"state": "STOPPED", "abort": True}, headers=headers
        )
        assert stopped.status_code == 200
        assert_error(client.post(f"{BASE}/sbds", json=SBD, headers=headers), 403, "Forbidden")
        audit = device.procedures[pid]["audit"]
        assert [(a["action"], a["user"]) for a in audit] == [
            ("created", "operator-user"),
            ("started", "operator-user"),
            ("aborted", "operator-user"),
        ]

    def test_admin_stores_sbds_and_does_everything_else(self, client, device):
        headers = bearer(TOKENS["admin"])
        assert client.post(f"{BASE}/sbds", json=SBD, headers=headers).status_code == 201
        assert client.get(f"{BASE}/sbds/sbd-1", headers=headers).status_code == 200
        run = client.post(
            f"{BASE}/activities",
            json={"sbd_id": "sbd-1", "activity_name": "observe"},
            headers=headers,
        )
        assert run.status_code == 201, run.text
        assert run.json()["activity"]["audit"][0]["user"] == "admin-user"

    def test_stream_needs_a_viewer(self, client):
        assert_error(client.get(f"{BASE}/stream"), 401, "Unauthorized")

    def test_health_and_docs_stay_open(self, client):
        assert client.get("/health").status_code in (200, 503)
        assert client.get(f"{BASE}/openapi.json").status_code == 200
        assert client.get(f"{BASE}/docs").status_code == 200

    def test_openapi_declares_the_bearer_scheme_for_swagger_ui(self, client):
        spec = client.get(f"{BASE}/openapi.json").json()
        assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        create = spec["paths"][f"{BASE}/procedures"]["post"]
        assert create["security"] == [{"HTTPBearer": []}]
        assert {"401", "403"} <= set(create["responses"])

    @pytest.mark.parametrize(
        ("document", "complaint"),
        [
            ("not json", "cannot read tokens file"),
            ({"tokens": [{"sha256": "abc", "user": "u", "roles": ["viewer"]}]}, "64 hex digits"),
            ({"tokens": [{"sha256": "a" * 64, "user": "u", "roles": ["root"]}]}, "unknown role"),
            ({"tokens": [{"sha256": "a" * 64, "roles": ["viewer"]}]}, "'user' is missing"),
        ],
    )
    def test_bad_tokens_files_are_refused_clearly(self, tmp_path, document, complaint):
        path = tmp_path / "t.json"
        path.write_text(document if isinstance(document, str) else json.dumps(document))
        with pytest.raises(ValueError, match=complaint):
            TokenFile(path)


class TestOidc:
    @pytest.fixture
    def issuer(self):
        with test_issuer() as issuer:
            yield issuer

    @pytest.fixture
    def oidc_client(self, issuer, device):
        settings = RestSettings(
            oidc_issuer=issuer.url, oidc_audience="oet", oidc_roles_claim="realm_access.roles"
        )
        with TestClient(create_app(settings, client=device)) as test_client:
            yield test_client

    def token(self, issuer, roles=("operator",), **claims):
        claims.setdefault("aud", "oet")
        return issuer.token(roles=(), realm_access={"roles": list(roles)}, **claims)

    def test_valid_access_token_is_accepted_with_its_roles(self, oidc_client, issuer, device):
        headers = bearer(self.token(issuer, user="carol"))
        created = oidc_client.post(f"{BASE}/procedures", json=CREATE, headers=headers)
        assert created.status_code == 201, created.text
        assert created.json()["procedure"]["audit"][0]["user"] == "carol"
        assert_error(oidc_client.post(f"{BASE}/sbds", json=SBD, headers=headers), 403, "Forbidden")

    def test_keys_come_from_the_discovery_document_and_are_cached(self, oidc_client, issuer):
        headers = bearer(self.token(issuer))
        for _ in range(3):
            assert oidc_client.get(f"{BASE}/procedures", headers=headers).status_code == 200
        assert issuer.jwks_requests == 1

    @pytest.mark.parametrize(
        "claims",
        [
            {"exp": int(time.time()) - 3600},
            {"iss": "http://127.0.0.1:1/realms/other"},
            {"aud": "someone-else"},
            {"aud": None},
            {"preferred_username": None, "sub": None},
        ],
        ids=["expired", "other-issuer", "other-audience", "no-audience", "no-user"],
    )
    def test_invalid_tokens_are_401(self, oidc_client, issuer, claims):
        response = oidc_client.get(
            f"{BASE}/procedures", headers=bearer(self.token(issuer, **claims))
        )
        assert_error(response, 401, "Unauthorized")

    def test_token_signed_by_another_key_is_401(self, oidc_client, issuer):
        forged = self.token(issuer, signing_key=new_rsa_key())
        assert_error(
            oidc_client.get(f"{BASE}/procedures", headers=bearer(forged)), 401, "Unauthorized"
        )

    def test_symmetric_and_unsigned_tokens_are_401(self, oidc_client, issuer):
        claims = {"iss": issuer.url, "aud": "oet", "exp": int(time.time()) + 60, "sub": "x"}
        public_pem = issuer.jwks()["keys"][0]["n"]  # the classic HS256-with-public-key attack
        for token in (
            jwt.encode(claims, public_pem, algorithm="HS256", headers={"kid": issuer.kid}),
            jwt.encode(claims, None, algorithm="none", headers={"kid": issuer.kid}),
        ):
            response = oidc_client.get(f"{BASE}/procedures", headers=bearer(token))
            assert_error(response, 401, "Unauthorized")

    def test_token_without_roles_is_403(self, oidc_client, issuer):
        response = oidc_client.get(
            f"{BASE}/procedures", headers=bearer(self.token(issuer, roles=()))
        )
        assert_error(response, 403, "Forbidden")

    def test_unreachable_identity_provider_is_503(self, device):
        settings = RestSettings(oidc_issuer="http://127.0.0.1:9/realms/gone")
        with TestClient(create_app(settings, client=device)) as test_client:
            token = jwt.encode({"sub": "x"}, new_rsa_key(), algorithm="RS256")
            response = test_client.get(f"{BASE}/procedures", headers=bearer(token))
        assert_error(response, 503, "IdentityProviderUnavailable")

    def test_over_real_http(self, issuer, device):
        settings = RestSettings(oidc_issuer=issuer.url, oidc_roles_claim="roles")
        with serve_in_thread(create_app(settings, client=device)) as url:
            ok = httpx.get(
                f"{url}{BASE}/procedures", headers=bearer(issuer.token(roles=["viewer"]))
            )
            refused = httpx.get(f"{url}{BASE}/procedures")
        assert ok.status_code == 200 and refused.status_code == 401


class TestSecureByDefault:
    def _run(self, monkeypatch, argv):
        monkeypatch.setattr(server.uvicorn, "run", lambda *a, **k: None)
        for name in ("HOST", "AUTH_TOKENS_FILE", "OIDC_ISSUER", "INSECURE_NO_AUTH"):
            monkeypatch.delenv(f"OET_REST_{name}", raising=False)
        with mock.patch.dict(os.environ):  # main() exports its flags as OET_REST_*: undo that
            server.main(argv)

    def test_non_loopback_without_auth_refuses_to_start(self, monkeypatch):
        with pytest.raises(SystemExit) as caught:
            self._run(monkeypatch, ["--host", "0.0.0.0"])
        assert "without authentication" in str(caught.value)
        assert "--insecure-no-auth" in str(caught.value)

    @pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.5"])
    def test_loopback_without_auth_is_served(self, monkeypatch, host):
        self._run(monkeypatch, ["--host", host])

    def test_explicit_insecure_flag_is_served_with_a_warning(self, monkeypatch, capsys):
        self._run(monkeypatch, ["--host", "0.0.0.0", "--insecure-no-auth"])
        assert "WITHOUT AUTHENTICATION" in capsys.readouterr().err

    def test_an_inherited_socket_is_judged_by_the_address_it_is_bound_to(self, monkeypatch):
        """``--fd`` (how oet-stack hands over its port): no --host to trust, the socket's own
        address decides, so a socket bound to every interface still needs authentication."""
        with socket.socket() as exposed, socket.socket() as local:
            exposed.bind(("0.0.0.0", 0))
            local.bind(("127.0.0.1", 0))
            with pytest.raises(SystemExit) as caught:
                self._run(monkeypatch, ["--fd", str(os.dup(exposed.fileno()))])
            assert "refusing to listen on 0.0.0.0 without authentication" in str(caught.value)
            served: list[tuple[dict, list]] = []

            class Server:  # uvicorn's, as far as main() uses it (no logging set up here)
                started = True

                def __init__(self, config):
                    self.config = config

                def run(self, sockets):
                    served.append((self.config, sockets))

            monkeypatch.setattr(server.uvicorn, "Config", lambda app, **options: options)
            monkeypatch.setattr(server.uvicorn, "Server", Server)
            self._run(monkeypatch, ["--fd", str(os.dup(local.fileno()))])
            ((config, sockets),) = served
            assert config["port"] == local.getsockname()[1] == sockets[0].getsockname()[1]
            sockets[0].close()

    @pytest.mark.parametrize(
        "argv, message",
        [
            (["--fd", "3", "--port", "8000"], "give no --host or --port"),
            (["--fd", "999"], "--fd 999 is no socket of this process"),
        ],
    )
    def test_a_bad_inherited_socket_stops_the_start(self, monkeypatch, argv, message):
        with pytest.raises(SystemExit, match=message):
            self._run(monkeypatch, argv)

    def test_auth_configured_is_served(self, monkeypatch, tokens_file):
        self._run(monkeypatch, ["--host", "0.0.0.0", "--auth-tokens-file", str(tokens_file)])

    def test_broken_tokens_file_stops_the_start(self, monkeypatch, tmp_path):
        with pytest.raises(SystemExit, match="invalid configuration"):
            self._run(monkeypatch, ["--auth-tokens-file", str(tmp_path / "missing.json")])

    def test_real_process_refuses_and_says_why(self):
        result = subprocess.run(
            [sys.executable, "-m", "ska_oso_oet.rest.server", "--host", "0.0.0.0", "--port", "0"],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("OET_REST")},
        )
        assert result.returncode != 0
        assert "refusing to listen on 0.0.0.0 without authentication" in result.stderr

    def test_hash_token_prints_an_entry(self, monkeypatch, capsys):
        monkeypatch.setattr(sys, "stdin", io.StringIO("s" * 40 + "\n"))
        server.main(["--hash-token"])
        entry = json.loads(capsys.readouterr().out)
        assert entry["sha256"] == hash_token("s" * 40)
