"""The only module of ``oet`` that speaks HTTP: the REST API and its event stream.

Every failure becomes a :class:`~.errors.CliError` with a one-line message and an exit code:
transport problems say which URL could not be reached, and API errors show the server's
``{"error", "type", "Message"}`` body.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

from . import exit_codes
from .errors import CliError

LOGGER = logging.getLogger(__name__)

DEFAULT_URL = "http://localhost:5000/api/v1.0"

_STATUS_EXIT = {
    400: exit_codes.BAD_REQUEST,
    404: exit_codes.NOT_FOUND,
    409: exit_codes.CONFLICT,
    422: exit_codes.BAD_REQUEST,
    401: exit_codes.UNAUTHORIZED,
    403: exit_codes.FORBIDDEN,
}
#: What a 401/403 means, and what to do about it.
_AUTH_HINTS = {
    401: "the server needs a valid token: pass --token, set OET_TOKEN, or put it in a token "
    "file (--token-file, OET_TOKEN_FILE, default ~/.config/oet/token); an expired OIDC token "
    "needs renewing",
    403: "the token is valid but its user lacks the role this needs (viewer: read; operator: "
    "create/start/stop procedures and run activities; admin: store SBDs); ask an OET "
    "administrator for it",
}


def normalise_url(url: str) -> str:
    """Accept the API base URL, or older settings that pointed at ``.../procedures``."""
    url = url.strip().rstrip("/")
    for suffix in ("/procedures", "/stream"):
        url = url.removesuffix(suffix)
    return url


class OetHttp:
    """Calls of the documented REST API; returns the unwrapped JSON."""

    def __init__(
        self,
        server_url: str = DEFAULT_URL,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        token: str | None = None,
    ):
        self.base_url = normalise_url(server_url)
        self._timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(
            base_url=self.base_url, timeout=timeout, transport=transport, headers=headers
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OetHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests ----------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self._client.request(method, path, json=body)
        except httpx.TimeoutException as exc:
            raise CliError(
                f"The OET REST server at {self.base_url} did not answer in time ({exc})",
                exit_codes.UNREACHABLE,
            ) from exc
        except httpx.TransportError as exc:
            raise CliError(
                f"Cannot reach the OET REST server at {self.base_url}: {exc}",
                exit_codes.UNREACHABLE,
            ) from exc
        if response.is_success:
            return response.json()
        raise self._api_error(response)

    @staticmethod
    def _api_error(response: httpx.Response) -> CliError:
        code = _STATUS_EXIT.get(response.status_code, exit_codes.SERVER_ERROR)
        try:
            body = response.json()
            message = f"Server encountered error {body['error']}: {body['type']}: {body['Message']}"
        except (ValueError, KeyError, TypeError):
            text = " ".join(response.text.split())[:300]
            message = f"The server answered {response.status_code} {response.reason_phrase}: {text}"
        hint = _AUTH_HINTS.get(response.status_code)
        return CliError(f"{message}\n  ({hint})" if hint else message, code)

    def list_procedures(self) -> list[dict[str, Any]]:
        return self._request("GET", "/procedures")["procedures"]

    def get_procedure(self, procedure_id: int) -> dict[str, Any]:
        return self._request("GET", f"/procedures/{procedure_id}")["procedure"]

    def create_procedure(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/procedures", body)["procedure"]

    def start_procedure(self, procedure_id: int, main_args: dict[str, Any]) -> dict[str, Any]:
        body = {"state": "RUNNING", "script_args": {"main": main_args}}
        return self._request("PUT", f"/procedures/{procedure_id}", body)["procedure"]

    def stop_procedure(self, procedure_id: int, run_abort: bool) -> str:
        body = {"state": "STOPPED", "abort": run_abort}
        return self._request("PUT", f"/procedures/{procedure_id}", body)["abort_message"]

    def pause_procedure(self, procedure_id: int, immediate: bool) -> dict[str, Any]:
        body = {"state": "PAUSED", "immediate": immediate}
        return self._request("PUT", f"/procedures/{procedure_id}", body)["procedure"]

    def resume_procedure(self, procedure_id: int) -> dict[str, Any]:
        body = {"state": "RUNNING"}
        return self._request("PUT", f"/procedures/{procedure_id}", body)["procedure"]

    def get_request(self, procedure_id: int) -> dict[str, Any] | None:
        return self._request("GET", f"/procedures/{procedure_id}/request")["request"]

    def answer_request(self, procedure_id: int, request_id: str, value: Any) -> dict[str, Any]:
        body = {"request_id": request_id, "value": value}
        return self._request("POST", f"/procedures/{procedure_id}/request", body)["request"]

    def switch_procedure(self, procedure_id: int, run_abort: bool, force: bool) -> dict[str, Any]:
        body = {"abort": run_abort, "force": force}
        return self._request("POST", f"/procedures/{procedure_id}/switch", body)

    def list_activities(self) -> list[dict[str, Any]]:
        return self._request("GET", "/activities")["activities"]

    def get_activity(self, activity_id: int) -> dict[str, Any]:
        return self._request("GET", f"/activities/{activity_id}")["activity"]

    def create_activity(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/activities", body)["activity"]

    def create_group(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/groups", body)["group"]

    def list_groups(self) -> list[dict[str, Any]]:
        return self._request("GET", "/groups")["groups"]

    def get_group(self, group_id: int) -> dict[str, Any]:
        return self._request("GET", f"/groups/{group_id}")["group"]

    def disband_group(self, group_id: int) -> dict[str, Any]:
        return self._request("PUT", f"/groups/{group_id}", {"state": "DISBANDED"})["group"]

    # --- event stream ------------------------------------------------------------------------
    def events(
        self,
        on_open: Callable[[], None] | None = None,
        *,
        reconnect: bool = True,
        idle_timeout: float = 60.0,
    ) -> Iterator[dict[str, Any]]:
        """Yield each event of ``/stream`` as a dict, resuming by ``Last-Event-ID`` after a
        dropped connection (gateway restart, slow reader) so that nothing is missed.

        :param on_open: called once, when the first subscription is in place (the server's
            first message), so that a caller can act without missing the consequences
        :param idle_timeout: longer than the server's keep-alive interval; a silent connection
            for that long counts as dropped
        """
        last_id: str | None = None
        retry_seconds = 2.0
        opened = False
        failures = 0
        timeout = httpx.Timeout(self._timeout, read=idle_timeout)
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with connect_sse(
                    self._client, "GET", "/stream", headers=headers, timeout=timeout
                ) as source:
                    if not source.response.is_success:
                        source.response.read()
                        raise self._api_error(source.response)
                    for sse in source.iter_sse():
                        failures = 0
                        if sse.retry is not None:
                            retry_seconds = sse.retry / 1000
                        if not opened:
                            opened = True
                            if on_open is not None:
                                on_open()
                        if sse.id:
                            last_id = sse.id  # the first message carries the position too
                        if not sse.data:
                            continue
                        try:
                            yield json.loads(sse.data)
                        except ValueError:
                            yield {"topic": "unparsable", "data": sse.data}
            except (httpx.TransportError, SSEError) as exc:
                failures += 1
                if not reconnect or not opened:
                    raise CliError(
                        f"Cannot follow the events of the OET REST server at {self.base_url}: {exc}",
                        exit_codes.UNREACHABLE,
                    ) from exc
                LOGGER.debug("event stream dropped (%s); reconnecting", exc)
            if not reconnect:
                return
            time.sleep(min(retry_seconds * max(failures, 1), 10.0))
