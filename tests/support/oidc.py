"""A minimal OIDC identity provider for tests: an RSA key, its JWKS and discovery document
served on loopback, and access tokens signed with it (PyJWT)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class TestIssuer:
    """Signs tokens with its key; :attr:`url` serves discovery and JWKS once started."""

    __test__ = False  # not a pytest test class

    def __init__(self, kid: str = "test-key-1"):
        self.key = new_rsa_key()
        self.kid = kid
        self.jwks_requests = 0
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.endswith("/.well-known/openid-configuration"):
                    body = {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"}
                elif self.path.endswith("/jwks"):
                    issuer.jwks_requests += 1
                    body = issuer.jwks()
                else:
                    self.send_error(404)
                    return
                payload = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/realms/ska"

    def jwks(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def token(
        self,
        user: str = "alice",
        roles: Any = ("operator",),
        signing_key: Any = None,
        **claims: Any,
    ) -> str:
        """A signed access token; a claim given as None is left out."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.url,
            "sub": f"id-{user}",
            "preferred_username": user,
            "iat": now,
            "exp": now + 300,
            "roles": list(roles),
            **claims,
        }
        payload = {k: v for k, v in payload.items() if v is not None}
        key = signing_key or self.key
        return jwt.encode(payload, key, algorithm="RS256", headers={"kid": self.kid})

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@contextmanager
def test_issuer() -> Iterator[TestIssuer]:
    issuer = TestIssuer()
    issuer.start()
    try:
        yield issuer
    finally:
        issuer.stop()


test_issuer.__test__ = False  # type: ignore[attr-defined]
