"""The worker protocol: every message between the engine and its worker processes, in one place.

Standard library only, like :mod:`.worker`, which loads this file by path when it runs as a plain
script under another virtualenv's interpreter.

Worker channel (a Unix stream socket, newline-delimited JSON objects)::

    engine                                   worker
      |  <- hello {version, pid, python}        |  first message, always
      |  load {path, limits, sys_path?, cwd?} -> |
      |  <- done {cmd: load, has_init, has_main}|
      |  call {fn, args, kwargs} ->             |
      |  <- event | log | output                |  any time, in the order the script made them
      |  <- done {cmd: call, fn, has_main}  or  error {cmd, fn, error, traceback}
      |  end of file ->                         |  the worker kills what it started and exits

Operator control, any time while a script runs (read by the worker's channel thread, so a
busy script still gets them; the script side is :mod:`ska_oso_oet.script`)::

      |  pause {} ->                            |  the script stops at its next checkpoint
      |  <- paused {ts}                         |  ... and it has
      |  resume {} ->                           |
      |  <- resumed {ts}                        |  only after a paused
      |  <- request {id, prompt, choices,       |  ask(): the script waits for an answer
      |              default, timeout, ts}      |
      |  answer {id, value, user} ->            |
      |  <- closed {id, outcome, value, user,   |  outcome: answered | timeout | refused
      |             reason, ts}                 |  (the worker alone decides the outcome)
      |  <- progress {done, total, message, ts} |

The engine checks ``hello.version`` against :data:`VERSION` before sending anything.

Fork-server control (a SOCK_SEQPACKET socket, one JSON object per packet)::

    engine                                   fork server
      |  <- ready {pid, preloaded, failed}      |
      |  fork {id, python?} + 1 fd ->           |  fd: the new worker's channel
      |  <- forked {id, pid}                    |
      |  <- exited {pid, code}                  |  for every worker that ends
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypedDict

#: Bumped whenever a message changes shape; a worker of another version is refused.
VERSION = 3

# -- worker -> engine --------------------------------------------------------------------------
HELLO = "hello"
DONE = "done"
ERROR = "error"
EVENT = "event"
LOG = "log"
OUTPUT = "output"
PAUSED = "paused"
RESUMED = "resumed"
REQUEST = "request"
CLOSED = "closed"
PROGRESS = "progress"
# -- engine -> worker --------------------------------------------------------------------------
LOAD = "load"
CALL = "call"
PAUSE = "pause"
RESUME = "resume"
ANSWER = "answer"
# -- fork server -------------------------------------------------------------------------------
READY = "ready"
FORK = "fork"
FORKED = "forked"
EXITED = "exited"

#: Marker appended to an output line cut at the line-length limit.
TRUNCATED = " …[line truncated by the OET: {dropped} more characters]"


class Hello(TypedDict):
    msg: Literal["hello"]
    version: int
    pid: int
    python: str


class Limits(TypedDict, total=False):
    #: RLIMIT_AS of the worker, in bytes (0: none).
    memory_bytes: int
    #: Longest output line passed on, in characters (longer ones are cut with TRUNCATED).
    max_line_length: int


class _LoadRequired(TypedDict):
    cmd: Literal["load"]
    path: str
    limits: Limits


class Load(_LoadRequired, total=False):
    #: Folders put first on sys.path (a git script's repository code).
    sys_path: list[str]
    #: Working directory of the script (a git script's checkout).
    cwd: str


class Call(TypedDict):
    cmd: Literal["call"]
    fn: str
    args: list[Any]
    kwargs: dict[str, Any]


class Request(TypedDict):
    """A question of the script to the operator (``ska_oso_oet.script.ask``)."""

    msg: Literal["request"]
    #: Unique within one worker ("1", "2", ...).
    id: str
    prompt: str
    choices: list[Any] | None
    default: Any
    timeout: float | None
    ts: float


class Closed(TypedDict, total=False):
    """How a request ended: ``answered`` (value, user), ``timeout`` (value: the default, if
    any) or ``refused`` (an answer the worker would not take; the request stays open)."""

    msg: Literal["closed"]
    id: str
    outcome: Literal["answered", "timeout", "refused"]
    value: Any
    user: str | None
    reason: str
    ts: float


class Progress(TypedDict):
    msg: Literal["progress"]
    done: float
    total: float | None
    message: str
    ts: float


class ProtocolError(Exception):
    """A peer sent something this version of the protocol does not allow."""


def encode(message: dict[str, Any], default: Any = None) -> bytes:
    """One message as a line of compact JSON."""
    return (json.dumps(message, default=default, separators=(",", ":")) + "\n").encode()


def check_hello(message: dict[str, Any]) -> Hello:
    """``message`` as a Hello of this version, or ProtocolError saying why not."""
    if message.get("msg") != HELLO:
        raise ProtocolError(f"the worker's first message is {message.get('msg')!r}, not hello")
    if message.get("version") != VERSION:
        raise ProtocolError(
            f"the worker speaks protocol version {message.get('version')!r}; "
            f"this engine speaks version {VERSION}"
        )
    return message  # type: ignore[return-value]


def load(
    path: str, limits: Limits, sys_path: list[str] | None = None, cwd: str | None = None
) -> Load:
    message: Load = {"cmd": LOAD, "path": path, "limits": limits}
    if sys_path is not None:
        message["sys_path"] = list(sys_path)
    if cwd is not None:
        message["cwd"] = cwd
    return message


def call(fn: str, args: list[Any], kwargs: dict[str, Any]) -> Call:
    return {"cmd": CALL, "fn": fn, "args": list(args), "kwargs": dict(kwargs)}


def pause() -> dict[str, Any]:
    return {"cmd": PAUSE}


def resume() -> dict[str, Any]:
    return {"cmd": RESUME}


def answer(request_id: str, value: Any, user: str | None) -> dict[str, Any]:
    return {"cmd": ANSWER, "id": request_id, "value": value, "user": user}


def match_choice(value: Any, choices: list[Any] | None) -> tuple[bool, Any]:
    """``(True, choice)`` for the element of ``choices`` that ``value`` names (itself or its
    text: a CLI or Tango client sends ``"2"`` for the choice ``2``), ``(False, None)`` when it
    names none; ``(True, value)`` when there are no choices."""
    if choices is None:
        return True, value
    for choice in choices:
        if value == choice and type(value) is type(choice):
            return True, choice
    for choice in choices:
        if str(value) == str(choice):
            return True, choice
    return False, None
