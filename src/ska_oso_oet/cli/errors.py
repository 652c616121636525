"""The CLI's expected failures: each prints one readable line and exits with its code."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from . import exit_codes

F = TypeVar("F", bound=Callable[..., Any])


class CliError(Exception):
    """Something the user can act on; ``str(error)`` is the line printed."""

    exit_code = exit_codes.ERROR

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


def reporting_errors(command: F) -> F:
    """Print a :class:`CliError` as one line on stderr and exit with its code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except CliError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]
