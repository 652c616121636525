"""How the OET's Tango devices read a JSON command argument and refuse a bad one.

Every OET command takes a JSON object. :class:`JsonRequests` (a mixin of the devices) bounds
its size and depth, refuses unknown keys by name, reads who asks (the optional
:data:`REQUESTED_BY` user a trusted client such as the REST gateway passes on, else the Tango
client's identity) and raises the ``DevFailed`` that names what is wrong.
"""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn

import tango

from ..jsonlimits import MAX_JSON_DEPTH, json_depth_exceeds, shown

#: Optional key of every command argument: the user on whose behalf a client (the REST
#: gateway) asks, recorded in the audit trail. Clients that may write the device are trusted
#: with it; Tango access control decides who they are (see docs/security.md).
REQUESTED_BY = "requested_by"
USER_NAME = re.compile(r"^[\w.@:+-][\w .@:+/-]{0,127}$")
#: Longest message of a refusal (it goes to the client and to the log).
MAX_MESSAGE_CHARS = 2000


class JsonRequests:
    """Argument decoding and refusals for a ``tango.server.Device``."""

    #: Largest command argument (JSON text) accepted.
    max_argument_chars = 1024 * 1024

    def _fail(self, reason: str, message: str, origin: str) -> NoReturn:
        """Refuse the command ``origin`` with ``reason`` (``OET_...``) and ``message``."""
        if len(message) > MAX_MESSAGE_CHARS:  # never echo a large input back, nor log it
            message = message[:MAX_MESSAGE_CHARS] + f"... ({len(message)} characters)"
        self.logger.info("%s refused: %s (%s)", origin, message, reason)
        tango.Except.throw_exception(reason, message, f"{self.get_name()}/{origin}")
        raise AssertionError("unreachable")  # throw_exception always raises

    def _decode(self, argin: str, origin: str, allowed: set[str]) -> dict[str, Any]:
        """The JSON object of a command argument, bounded in size and depth; the optional
        :data:`REQUESTED_BY` key is accepted by every command."""
        text = (argin or "").strip()
        if not text:
            return {}
        if len(text) > self.max_argument_chars:
            self._fail(
                "OET_INVALID_REQUEST",
                f"argument of {len(text)} characters refused; at most {self.max_argument_chars}",
                origin,
            )
        if json_depth_exceeds(text, MAX_JSON_DEPTH):
            self._fail(
                "OET_INVALID_REQUEST",
                f"argument nests JSON deeper than {MAX_JSON_DEPTH} levels",
                origin,
            )
        try:
            body = json.loads(text)
        except (ValueError, RecursionError) as exc:
            self._fail("OET_INVALID_REQUEST", f"argument is not valid JSON: {exc}", origin)
        if not isinstance(body, dict):
            self._fail("OET_INVALID_REQUEST", "argument must be a JSON object", origin)
        unknown = set(body) - allowed - {REQUESTED_BY}
        if unknown:
            names = ", ".join(shown(k) for k in sorted(unknown)[:5])
            self._fail(
                "OET_INVALID_REQUEST",
                f"unknown keys {names}; expected some of {sorted(allowed)}",
                origin,
            )
        return body

    def _requester(self, body: dict[str, Any], origin: str) -> str:
        """Who asks, for the audit trail: the :data:`REQUESTED_BY` user a client (the REST
        gateway) passes on, else the Tango client's identity (``tango`` when Tango gives
        none)."""
        client = self._tango_client()
        user = body.get(REQUESTED_BY)
        if user is None:
            return client
        if not isinstance(user, str) or not USER_NAME.match(user):
            self._fail(
                "OET_INVALID_REQUEST",
                f"{REQUESTED_BY} must be a user name (at most 128 characters), got {shown(user)}",
                origin,
            )
        self.logger.info("%s on behalf of %s, from %s", origin, user, client)
        return user

    def _tango_client(self) -> str:
        """``tango:<host>:<pid>`` of the client running the current command, or ``tango``."""
        try:
            ident = self.get_client_ident()
        except Exception:  # not inside a client request (e.g. a direct call in tests)
            return "tango"
        if ident is None or not getattr(ident, "client_ident", False):
            return "tango"
        host = str(getattr(ident, "client_ip", "") or "").removeprefix("giop:tcp:")
        host = host.rsplit(":", 1)[0] if host.count(":") >= 1 else host
        pid = getattr(ident, "client_pid", 0)
        return f"tango:{host or 'unknown'}:{pid}" if pid else f"tango:{host or 'unknown'}"
