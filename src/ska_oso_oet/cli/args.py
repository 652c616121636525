"""Script arguments on the command line, as the original (python-fire based) client took them.

``oet create file:///s.py hello 3 --verbose=true --scan '{"n": 2}'`` calls ``init("hello", 3,
verbose=True, scan={"n": 2})``: words are positional arguments, ``--key=value`` and
``--key value`` are keyword arguments, a bare ``--flag`` is True. Values are parsed as JSON where
possible (``3``, ``true``, ``[1, 2]``), Python's ``True``/``False``/``None`` are understood, and
anything else stays a string.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from . import exit_codes
from .errors import CliError

_PYTHON_LITERALS = {"True": True, "False": False, "None": None}


def parse_value(text: str) -> Any:
    """``'3'`` -> 3, ``'true'``/``'True'`` -> True, ``'[1]'`` -> [1], ``'abc'`` -> 'abc'."""
    if text in _PYTHON_LITERALS:
        return _PYTHON_LITERALS[text]
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_bool(text: str | None, option: str, default: bool) -> bool:
    """A boolean option value given as text (``--listen=False``)."""
    if text is None:
        return default
    value = parse_value(text.strip())
    if isinstance(value, str):
        value = {"yes": True, "no": False, "on": True, "off": False}.get(value.lower(), value)
    if not isinstance(value, bool):
        raise CliError(f"{option} must be True or False, not {text!r}", exit_codes.USAGE)
    return value


def split_script_args(tokens: Sequence[str]) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword arguments from the words left over by the option parser."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if not token.startswith("--") or token == "--":
            args.append(parse_value(token))
            continue
        key, has_value, value = token[2:].partition("=")
        if not key.isidentifier():
            raise CliError(f"{token!r} is not a valid --name=value argument", exit_codes.USAGE)
        if not has_value:
            if index < len(tokens) and not tokens[index].startswith("--"):
                value, index = tokens[index], index + 1
            else:
                value = "True"
        kwargs[key] = parse_value(value)
    return args, kwargs


#: Boolean options that older habits give bare (``--run_abort``) or with a value.
BOOLEAN_OPTIONS = ("--listen", "--run_abort", "--run-abort", "--create_env", "--create-env",
                   "--prepare_only", "--prepare-only")  # fmt: skip


def normalise_flags(argv: Iterable[str]) -> list[str]:
    """Give bare boolean options an explicit ``=True`` so the option parser can read them."""
    tokens = list(argv)
    result = []
    for index, token in enumerate(tokens):
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if token in BOOLEAN_OPTIONS and (
            following is None
            or following.startswith("-")
            or not isinstance(parse_value(following), bool)
        ):
            token += "=True"
        result.append(token)
    return result
