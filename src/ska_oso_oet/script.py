"""The script-side API: operator control from inside a running script.

::

    from ska_oso_oet.script import ask, checkpoint, progress

    def main(targets):
        for n, target in enumerate(targets):
            checkpoint()                     # an operator's Pause takes effect here
            observe(target)
            progress(n + 1, len(targets), f"observed {target}")
        if ask("Park the dishes?", choices=["yes", "no"], default="no", timeout=60) == "yes":
            park()

Standard library only, and a single file: the OET's worker loads this very file into every
script's interpreter, a script's own virtualenv included, so ``import ska_oso_oet.script``
works there even when nothing of the OET is installed in it.

Outside the OET (a script run by hand or by its own tests) every call still works:
:func:`checkpoint` and :func:`progress` do nothing, and :func:`ask` prompts on the terminal
when there is one, and otherwise returns its default (or raises :class:`AskTimeout`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["AskTimeout", "ask", "checkpoint", "in_oet", "progress"]


class AskTimeout(TimeoutError):
    """:func:`ask` got no answer in time and has no default to return."""


class _Runtime(Protocol):  # what the OET's worker installs
    def checkpoint(self) -> None: ...

    def ask(
        self, prompt: str, choices: list[Any] | None, default: Any, timeout: float | None
    ) -> Any: ...

    def progress(self, done: float, total: float | None, message: str) -> None: ...


_runtime: _Runtime | None = None


def _install(runtime: _Runtime | None) -> None:
    """Called by the OET's worker before the script is loaded (not part of the script API)."""
    global _runtime
    _runtime = runtime


def in_oet() -> bool:
    """True when the script runs under the OET (its calls reach the operator)."""
    return _runtime is not None


def checkpoint() -> None:
    """A place where the script may be paused.

    When an operator has asked for a pause, the call blocks (the procedure is PAUSED) until
    the operator resumes it; a stop or abort ends the script there at once. Publishing an
    event, :func:`ask` and :func:`progress` are checkpoints too."""
    if _runtime is not None:
        _runtime.checkpoint()


def ask(
    prompt: str,
    choices: Sequence[Any] | None = None,
    default: Any = None,
    timeout: float | None = None,
) -> Any:
    """Ask the operator a question and wait for the answer.

    :param prompt: the question, as the operator sees it.
    :param choices: the only answers accepted (any other is refused to the operator); the
        answer returned is the matching element of ``choices``.
    :param default: returned when ``timeout`` passes without an answer.
    :param timeout: seconds to wait (None: as long as it takes).
    :returns: the answer (a string, or an element of ``choices``).
    :raises AskTimeout: when ``timeout`` passes and there is no default.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"ask() prompt must be a string, not {type(prompt).__name__}")
    options = list(choices) if choices is not None else None
    if options is not None and not options:
        raise ValueError("ask() choices must not be empty (use None for a free answer)")
    if default is not None and options is not None and default not in options:
        raise ValueError(f"ask() default {default!r} is not one of the choices {options!r}")
    if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
        raise ValueError(f"ask() timeout must be a number of seconds > 0, got {timeout!r}")
    if _runtime is not None:
        return _runtime.ask(prompt, options, default, timeout)
    return _ask_alone(prompt, options, default)


def progress(done: float, total: float | None = None, message: str = "") -> None:
    """Report how far the script has got: ``done`` out of ``total`` (None: unknown)."""
    if isinstance(done, bool) or not isinstance(done, int | float):
        raise TypeError(f"progress() done must be a number, not {type(done).__name__}")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int | float)):
        raise TypeError(f"progress() total must be a number or None, not {type(total).__name__}")
    if _runtime is not None:
        _runtime.progress(done, total, str(message))


def _ask_alone(prompt: str, choices: list[Any] | None, default: Any) -> Any:
    """:func:`ask` without the OET: the terminal if there is one, else the default."""
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():
        if default is not None:
            return default
        raise AskTimeout(f"no operator to answer {prompt!r} (not run by the OET, no terminal)")
    hint = f" [{'/'.join(map(str, choices))}]" if choices else ""
    hint += f" ({default})" if default is not None else ""
    while True:
        try:
            answer = input(f"{prompt}{hint} ")
        except EOFError:
            if default is not None:
                return default
            raise AskTimeout(f"no answer to {prompt!r}") from None
        if not answer and default is not None:
            return default
        if choices is None:
            return answer
        for choice in choices:
            if answer == choice or answer == str(choice):
                return choice
        print(f"please answer one of {', '.join(map(str, choices))}", file=sys.stderr)
