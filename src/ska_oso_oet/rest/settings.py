"""Gateway configuration: ``OET_REST_*`` environment variables, overridden by ``oet-gateway`` flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class RestSettings(BaseSettings):
    """Everything the gateway needs to know; built once per app in ``create_app``."""

    model_config = SettingsConfigDict(env_prefix="OET_REST_", extra="ignore", frozen=True)

    #: Where to listen. Anything but a loopback address needs authentication (or
    #: ``insecure_no_auth``): ``oet-gateway`` refuses to start otherwise.
    host: str = "127.0.0.1"
    port: int = Field(5000, ge=0, le=65535)
    #: The OETDevice this gateway fronts at ``base_path``.
    device: str = "oso/oet/1"
    #: More devices, each served at ``/subarray/<n>`` + ``base_path`` (comma-separated in the
    #: environment), e.g. ``oso/oet/2,oso/oet/3``.
    devices: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: The OETGroups device of linked observation groups (``/groups``); empty: none (the
    #: routes answer 503).
    groups_device: str = "oso/oet/groups"
    #: ``host:port`` of the Tango database; None uses the process's ``TANGO_HOST``.
    tango_host: str | None = None
    base_path: str = "/api/v1.0"
    #: Where the current OET API (v7) is served beside ``base_path`` (like the reference's
    #: ``/<namespace>/oet/api/v7``); empty serves it nowhere.
    v7_path: str = "/ska-oso-oet/oet/api/v7"
    #: The devices' id stride (their ``OET_ID_STRIDE``): ``id % id_stride`` names the subarray
    #: of a procedure or activity, which tells the gateway which device to ask first.
    id_stride: int = Field(100, ge=1)
    #: Client-side timeout of every Tango call.
    tango_timeout_ms: int = Field(3000, ge=100)
    #: Threads running blocking Tango calls.
    tango_threads: int = Field(8, ge=1)
    #: Pause between attempts to reach the device while it is not reachable.
    reconnect_seconds: float = Field(2.0, gt=0)
    #: Events kept for ``Last-Event-ID`` resumption. Large enough for a script's whole burst
    #: (20,000 announcements take a few MB), so a client that falls behind can catch up.
    replay_size: int = Field(50_000, ge=1)
    #: Events queued for one SSE client before it is dropped as too slow (it may then resume
    #: from the replay buffer with ``Last-Event-ID``).
    client_queue_size: int = Field(50_000, ge=1)
    #: Seconds of silence after which an SSE keep-alive comment is sent.
    keepalive_seconds: float = Field(15.0, gt=0)
    #: Reconnection delay suggested to SSE clients (``retry:`` field).
    sse_retry_ms: int = Field(2000, ge=0)
    #: How long ``PUT state=RUNNING`` waits for a procedure that is still being prepared.
    start_wait_seconds: float = Field(60.0, ge=0)
    #: How long ``PUT state=STOPPED`` waits for the procedure to reach a final state.
    stop_wait_seconds: float = Field(30.0, ge=0)
    #: How long ``PUT state=PAUSED`` / ``RUNNING`` (resume) waits for the script to get there
    #: (a pause waits for the script's next checkpoint); the answer then has the state reached.
    pause_wait_seconds: float = Field(5.0, ge=0)
    #: Seconds uvicorn gives open connections (SSE streams) when shutting down.
    shutdown_grace_seconds: float = Field(2.0, ge=0)
    log_level: str = "info"
    #: One log line per request (uvicorn's access log). About a tenth of the gateway's CPU
    #: per GET; mutating calls are in the devices' audit trails either way.
    access_log: bool = True

    # -- authentication (docs/security.md) ----------------------------------------------------
    #: JSON file of hashed tokens with their users and roles (small deployments).
    auth_tokens_file: Path | None = None
    #: OIDC issuer whose access tokens are accepted (``iss`` must equal it).
    oidc_issuer: str | None = None
    #: Required ``aud`` of access tokens; None accepts any audience.
    oidc_audience: str | None = None
    #: JWKS of the issuer; None reads ``jwks_uri`` from the issuer's discovery document.
    oidc_jwks_url: str | None = None
    #: Claim (dotted path, e.g. ``realm_access.roles``) listing the user's OET roles.
    oidc_roles_claim: str = "roles"
    #: Claim naming the user (``sub`` when it is missing).
    oidc_user_claim: str = "preferred_username"
    #: Serve without authentication on a non-loopback address: anyone who can reach it can run
    #: scripts on the telescope.
    insecure_no_auth: bool = False

    # -- limits --------------------------------------------------------------------------------
    #: Largest request body accepted (413 beyond).
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    #: Deepest nesting of JSON arrays/objects accepted in a request body (400 beyond).
    max_json_depth: int = Field(32, ge=2, le=500)
    #: Largest total size of a request's headers (431 beyond).
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=60 * 1024)

    @field_validator("devices", mode="before")
    @classmethod
    def _split_devices(cls, value: object) -> object:
        if isinstance(value, str):
            return [d.strip() for d in value.split(",") if d.strip()]
        return value

    @field_validator("base_path", "v7_path")
    @classmethod
    def _normalise_base_path(cls, value: str) -> str:
        value = "/" + value.strip("/")
        return "" if value == "/" else value

    @property
    def device_trl(self) -> str:
        """The device name, fully qualified when a Tango host is configured."""
        return self.trl(self.device)

    def trl(self, device: str) -> str:
        """``device`` fully qualified when a Tango host is configured."""
        if self.tango_host and not device.startswith("tango://"):
            return f"tango://{self.tango_host}/{device}"
        return device
