"""Bounds on JSON input, shared by the gateway and the device (both parse client JSON).

The JSON parser and everything after it recurse, so a deeply nested document must be refused
before it is parsed (a 10,000-deep one would otherwise end in ``RecursionError``); messages
quote at most a short prefix of an offending value, so a refused megabyte is not echoed into
error replies and logs.
"""

from __future__ import annotations

import re

#: Deepest nesting of arrays/objects accepted from a client (scripts' arguments included).
MAX_JSON_DEPTH = 32
#: How much of an offending value messages quote.
QUOTE_PREFIX = 120

#: A JSON string (skipped whole, so brackets inside strings do not count) or a bracket.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_TOKENS_BYTES = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def json_depth_exceeds(text: str | bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``text`` nests arrays/objects deeper than ``limit`` (without parsing it)."""
    tokens = _TOKENS_BYTES if isinstance(text, bytes) else _TOKENS
    opening = (b"[", b"{") if isinstance(text, bytes) else ("[", "{")
    depth = 0
    for match in tokens.finditer(text):
        token = match.group()
        if token in opening:
            depth += 1
            if depth > limit:
                return True
        elif len(token) == 1:
            depth -= 1
    return False


def shown(value: object) -> str:
    """``repr(value)`` cut to :data:`QUOTE_PREFIX` characters, for quoting input in messages."""
    text = repr(value)
    return text if len(text) <= QUOTE_PREFIX else text[:QUOTE_PREFIX] + "..."
