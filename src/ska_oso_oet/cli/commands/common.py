"""What every command shares: the server connection kept on the Typer context."""

from __future__ import annotations

from dataclasses import dataclass, field

import typer

from ..http import OetHttp

#: Commands that pass extra words and --name=value pairs to the script.
EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


@dataclass
class CliState:
    """Per-invocation state: the server URL and, once needed, the HTTP client."""

    server_url: str
    token: str | None = field(default=None, repr=False)
    _http: OetHttp | None = field(default=None, repr=False)

    @property
    def http(self) -> OetHttp:
        if self._http is None:
            self._http = OetHttp(self.server_url, token=self.token)
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()


def state_of(ctx: typer.Context) -> CliState:
    """The state created by the root callback (found on the root context)."""
    return ctx.find_root().obj
