"""Who is calling, and may they: bearer tokens and the three roles of the gateway.

A request carries ``Authorization: Bearer <token>``. The token is either

* an OIDC/JWT access token of the configured issuer, checked with PyJWT against the issuer's
  JWKS (signature, ``iss``, ``exp``/``nbf``, ``aud`` when configured; asymmetric algorithms
  only), the user taken from ``preferred_username`` (else ``sub``) and the roles from a claim
  (``roles`` by default, a dotted path such as ``realm_access.roles`` for Keycloak); or
* one of the tokens of a static tokens file (small deployments): a JSON document listing, per
  token, its SHA-256 (never the token itself), the user name and the roles.

Roles nest: ``viewer`` reads (GETs, ``/stream``), ``operator`` also runs things
(create/start/stop/abort procedures, run activities), ``admin`` also changes what the device
holds (store SBDs, device settings). No valid token is 401, too little role 403, both with the
documented error body. With neither method configured the gateway is open and every caller is
:data:`ANONYMOUS` with every role: ``oet-gateway`` only allows that on a loopback address, or
with ``--insecure-no-auth`` (see :func:`exposure_problem`).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .settings import RestSettings

if TYPE_CHECKING:  # PyJWT and httpx are imported when OIDC is used: a gateway without it
    import jwt  # starts ~0.2 s sooner (httpx pulls in its CLI's rich and click)

LOGGER = logging.getLogger(__name__)

#: Asymmetric algorithms only: an HS* token signed with a public key, or ``none``, is refused.
JWT_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]


class Role(enum.IntEnum):
    """The gateway's roles; a higher role includes the lower ones."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> Role | None:
        return cls.__members__.get(str(name).strip().upper())


@dataclass(frozen=True)
class Principal:
    """The caller of a request."""

    user: str
    roles: frozenset[Role]
    #: How the caller was identified: ``oidc``, ``token-file`` or ``none`` (open gateway).
    method: str

    def has(self, role: Role) -> bool:
        return any(r >= role for r in self.roles)


#: Every caller of a gateway without authentication.
ANONYMOUS = Principal("anonymous", frozenset(Role), "none")


class AuthError(Exception):
    """401 (no or bad credentials) or 403 (too little role); the message is for the client."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def error_type(self) -> str:
        return "Unauthorized" if self.status == HTTPStatus.UNAUTHORIZED else "Forbidden"

    @property
    def headers(self) -> dict[str, str]:
        if self.status == HTTPStatus.UNAUTHORIZED:
            return {"WWW-Authenticate": 'Bearer realm="oet"'}
        return {}


def _unauthorized(message: str) -> AuthError:
    return AuthError(HTTPStatus.UNAUTHORIZED, message)


# --------------------------------------------------------------------------------------------
# Static tokens file


def hash_token(token: str) -> str:
    """The SHA-256 (hex) under which a token is listed in a tokens file.

    A plain hash is enough for what the file holds: tokens are long random strings (generate
    them with ``secrets.token_urlsafe(32)``), so there is nothing to guess by brute force.
    """
    return hashlib.sha256(token.encode()).hexdigest()


class TokenFile:
    """The tokens of a tokens file: ``{"tokens": [{"sha256": ..., "user": ..., "roles": [...]}]}``.

    :raises ValueError: the file is missing, not JSON, or an entry is incomplete
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            document = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read tokens file {self.path}: {exc}") from None
        entries = document.get("tokens") if isinstance(document, Mapping) else None
        if not isinstance(entries, list):
            raise ValueError(f"tokens file {self.path}: expected {{'tokens': [...]}}")
        self._by_hash: dict[str, Principal] = {}
        for number, entry in enumerate(entries, 1):
            where = f"tokens file {self.path}, entry {number}"
            if not isinstance(entry, Mapping):
                raise ValueError(f"{where}: expected an object")
            digest = str(entry.get("sha256", "")).strip().lower()
            user = str(entry.get("user", "")).strip()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"{where}: 'sha256' must be the 64 hex digits of the token's hash")
            if not user:
                raise ValueError(f"{where}: 'user' is missing")
            roles = _roles(entry.get("roles"), where)
            self._by_hash[digest] = Principal(user, roles, "token-file")

    def __len__(self) -> int:
        return len(self._by_hash)

    def lookup(self, token: str) -> Principal | None:
        digest = hash_token(token)
        found = None
        for known, principal in self._by_hash.items():  # constant time per entry
            if hmac.compare_digest(known, digest):
                found = principal
        return found


def _roles(value: Any, where: str) -> frozenset[Role]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: 'roles' must be a non-empty list (viewer, operator, admin)")
    roles = {Role.parse(v) for v in value}
    if None in roles:
        raise ValueError(f"{where}: unknown role in {value!r} (expected viewer, operator, admin)")
    return frozenset(r for r in roles if r is not None)


# --------------------------------------------------------------------------------------------
# OIDC access tokens


class OidcVerifier:
    """Checks access tokens of one OIDC issuer against its JWKS.

    The JWKS URL is configured, or read once from the issuer's discovery document
    (``<issuer>/.well-known/openid-configuration``). PyJWT's :class:`jwt.PyJWKClient` caches
    the keys and fetches them again when a token names a key it does not know (key rotation).
    """

    def __init__(
        self,
        issuer: str,
        audience: str | None = None,
        jwks_url: str | None = None,
        roles_claim: str = "roles",
        user_claim: str = "preferred_username",
        timeout: float = 5.0,
    ):
        self.issuer = issuer
        self.audience = audience
        self.roles_claim = roles_claim
        self.user_claim = user_claim
        self.timeout = timeout
        self._jwks_url = jwks_url
        self._client: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()

    def _jwk_client(self) -> jwt.PyJWKClient:
        import jwt

        with self._lock:
            if self._client is None:
                url = self._jwks_url or self._discover()
                self._client = jwt.PyJWKClient(url, cache_keys=True, timeout=int(self.timeout))
            return self._client

    def _discover(self) -> str:
        import httpx

        where = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            response = httpx.get(where, timeout=self.timeout)
            response.raise_for_status()
            return str(response.json()["jwks_uri"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise OidcUnavailable(
                f"cannot read the OIDC discovery document {where}: {exc}"
            ) from None

    def verify(self, token: str) -> Principal:
        """The principal of a valid access token (blocking: run it in a thread).

        :raises AuthError: 401 with the reason the token is refused
        :raises OidcUnavailable: the issuer's keys cannot be fetched
        """
        import jwt

        try:
            jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise _unauthorized("the bearer token is neither a known token nor a JWT") from None
        try:
            key = self._jwk_client().get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise OidcUnavailable(f"cannot fetch the OIDC keys: {exc}") from None
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
            raise _unauthorized(f"access token refused: {exc}") from None
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=JWT_ALGORITHMS,
                issuer=self.issuer,
                audience=self.audience,
                options={"require": ["exp", "iss"], "verify_aud": self.audience is not None},
                leeway=30,
            )
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"access token refused: {exc}") from None
        user = str(claims.get(self.user_claim) or claims.get("sub") or "").strip()
        if not user:
            raise _unauthorized(f"access token names no user ({self.user_claim} or sub)")
        value: Any = claims
        for part in self.roles_claim.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        names = value if isinstance(value, list) else []
        roles = frozenset(r for r in (Role.parse(n) for n in names) if r is not None)
        return Principal(user, roles, "oidc")


class OidcUnavailable(Exception):
    """The identity provider cannot be reached: 503, not the caller's fault."""


# --------------------------------------------------------------------------------------------
# The gateway's authenticator


class Authenticator:
    """Turns a request's bearer token into a :class:`Principal` with the configured methods."""

    def __init__(self, tokens: TokenFile | None = None, oidc: OidcVerifier | None = None):
        self.tokens = tokens
        self.oidc = oidc

    @property
    def enabled(self) -> bool:
        return self.tokens is not None or self.oidc is not None

    @classmethod
    def from_settings(cls, settings: RestSettings) -> Authenticator:
        tokens = TokenFile(settings.auth_tokens_file) if settings.auth_tokens_file else None
        oidc = None
        if settings.oidc_issuer:
            oidc = OidcVerifier(
                settings.oidc_issuer,
                audience=settings.oidc_audience,
                jwks_url=settings.oidc_jwks_url,
                roles_claim=settings.oidc_roles_claim,
                user_claim=settings.oidc_user_claim,
            )
        return cls(tokens, oidc)

    async def authenticate(self, token: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        if not token:
            raise _unauthorized(
                "authentication required: send 'Authorization: Bearer <token>' "
                "(oet: --token, OET_TOKEN or a token file)"
            )
        if self.tokens is not None:
            principal = self.tokens.lookup(token)
            if principal is not None:
                return principal
        if self.oidc is not None:
            return await run_in_threadpool(self.oidc.verify, token)
        raise _unauthorized("the bearer token is not valid")


_bearer = HTTPBearer(
    auto_error=False,
    description="An OIDC access token of the configured issuer, or a token of the gateway's "
    "tokens file. Not needed when the gateway runs without authentication (loopback only).",
)


def require(role: Role) -> Callable[..., Any]:
    """A dependency admitting callers with ``role`` (or a higher one); it returns the
    :class:`Principal` and stores it as ``request.state.principal`` for the audit trail."""

    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> Principal:
        authenticator: Authenticator = request.app.state.authenticator
        principal = await authenticator.authenticate(
            credentials.credentials if credentials else None
        )
        request.state.principal = principal
        if not principal.has(role):
            have = ", ".join(r.name.lower() for r in sorted(principal.roles)) or "no role"
            raise AuthError(
                HTTPStatus.FORBIDDEN,
                f"user {principal.user!r} has {have}; this needs the {role.name.lower()} role",
            )
        return principal

    dependency.__name__ = f"require_{role.name.lower()}"
    return dependency


#: Route parameters admitting a role (and giving the caller, for the audit trail).
Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]


def exposure_problem(settings: RestSettings) -> str | None:
    """Why ``settings`` must not be served, or None: no authentication on a non-loopback
    address without ``insecure_no_auth``."""
    if settings.auth_tokens_file or settings.oidc_issuer or settings.insecure_no_auth:
        return None
    if is_loopback(settings.host):
        return None
    return (
        f"refusing to listen on {settings.host} without authentication: configure "
        "--auth-tokens-file or --oidc-issuer (see docs/security.md), listen on 127.0.0.1, "
        "or pass --insecure-no-auth to let anyone who can reach this address run scripts"
    )


def is_loopback(host: str) -> bool:
    if host.strip().lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
