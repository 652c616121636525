"""Operator control: ``oet pause``, ``oet resume``, ``oet answer``, and what ``oet start`` and
``oet listen`` do with a script's questions and progress while they follow its events."""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from ...vocabulary import HOLDING_STATES, ProcedureState
from .. import exit_codes
from ..args import parse_bool, parse_value
from ..errors import CliError, reporting_errors
from ..formatting import event_line, procedure_table
from ..http import OetHttp
from .common import state_of

PidOption = Annotated[int | None, typer.Option("--pid", help="Procedure ID.")]
AskOption = Annotated[
    str | None,
    typer.Option(
        "--ask",
        metavar="BOOL",
        help="Prompt for the questions scripts ask, reading answers from stdin [True on a "
        "terminal].",
    ),
]


def asking(option: str | None) -> bool:
    return parse_bool(option, "--ask", sys.stdin is not None and sys.stdin.isatty())


def _holding(http: OetHttp, pid: int | None, what: str) -> int:
    """``pid``, or the one procedure RUNNING or PAUSED."""
    if pid is not None:
        return pid
    holding = [p for p in http.list_procedures() if p["state"] in HOLDING_STATES]
    if not holding:
        raise CliError(f"No procedure to {what}", exit_codes.CONFLICT)
    if len(holding) > 1:
        raise CliError(
            f"More than one procedure is running. Specify ID of the procedure to {what}.",
            exit_codes.USAGE,
        )
    return holding[0]["id"]


@reporting_errors
def pause(
    ctx: typer.Context,
    pid: PidOption = None,
    now: Annotated[
        bool,
        typer.Option(
            "--now",
            help="Freeze the script's processes at once (SIGSTOP) instead of at its next "
            "checkpoint. Dangerous: see docs/scripts.md.",
        ),
    ] = False,
) -> None:
    """Pause a running procedure (by default the one running) at its next checkpoint."""
    http = state_of(ctx).http
    procedure = http.pause_procedure(_holding(http, pid, "pause"), now)
    typer.echo(procedure_table([procedure]))
    if procedure["state"] == ProcedureState.RUNNING:
        typer.echo(
            f"Pause requested: procedure {procedure['id']} pauses at its next checkpoint "
            "(checkpoint(), an event it publishes, ask or progress)."
        )


@reporting_errors
def resume(ctx: typer.Context, pid: PidOption = None) -> None:
    """Resume a PAUSED procedure (by default the paused one) where it stopped."""
    http = state_of(ctx).http
    typer.echo(procedure_table([http.resume_procedure(_holding(http, pid, "resume"))]))


@reporting_errors
def answer(
    ctx: typer.Context,
    value: Annotated[str, typer.Argument(help="The answer (one of the choices, if any).")],
    pid: Annotated[int, typer.Option("--pid", help="Procedure ID.")],
    request_id: Annotated[
        str | None,
        typer.Option("--request-id", "--request_id", help="Request ID [the pending one]."),
    ] = None,
) -> None:
    """Answer the question a script asks (see the request with `oet describe`).

    oet answer --pid=3 yes
    """
    http = state_of(ctx).http
    if request_id is None:
        pending = http.get_request(pid)
        if pending is None:
            raise CliError(f"Procedure {pid} is not waiting for an answer", exit_codes.CONFLICT)
        request_id = str(pending["id"])
    closed = http.answer_request(pid, request_id, value)
    typer.echo(f"Answered request {closed['id']} of procedure {pid}: {closed['value']!r}")


def register(app: typer.Typer, **options: Any) -> None:
    app.command("pause", **options)(pause)
    app.command("resume", **options)(resume)
    app.command("answer", **options)(answer)


class Follower:
    """Shows followed events; prompts the operator for a script's questions (``ask``) and
    shows its progress: a live bar on a terminal (rich), plain lines otherwise.

    A question is read on a thread of its own, so events keep flowing while the operator
    thinks; a question answered elsewhere or timed out is said so, and an answer typed for it
    afterwards is refused by the server with the reason, which is shown."""

    def __init__(self, http: OetHttp, ask: bool, pid: int | None = None):
        self._http = http
        self._ask = ask
        self._pid = pid
        self._tty = sys.stdout.isatty()
        self._progress: Any = None
        self._tasks: dict[int, Any] = {}
        self._asking: threading.Thread | None = None
        self._pending: list[Mapping[str, Any]] = []
        self._lock = threading.Lock()

    def echo(self, line: str) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.console.print(line, markup=False, highlight=False)
            else:
                typer.echo(line)

    def show(self, event: Mapping[str, Any]) -> None:
        topic = event.get("topic")
        pid = event.get("procedure_id")
        mine = self._pid is None or pid == self._pid
        if topic == "procedure.progress" and mine and self._tty:
            self._bar(event)
            return
        self.echo(event_line(event))
        if topic == "procedure.request.opened" and mine and self._ask:
            self._prompt(event["request"])
        elif topic in ("procedure.lifecycle.complete", "procedure.lifecycle.failed",
                       "procedure.lifecycle.stopped") and pid in self._tasks:  # fmt: skip
            self._finish_bar(pid)

    def close(self) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None

    # -- progress bar ------------------------------------------------------------------------
    def _bar(self, event: Mapping[str, Any]) -> None:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        with self._lock:
            if self._progress is None:
                self._progress = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    TaskProgressColumn(),
                    TextColumn("{task.fields[message]}"),
                    transient=False,
                )
                self._progress.start()
            pid = event["procedure_id"]
            total = event.get("total")
            done = float(event.get("done") or 0)
            if pid not in self._tasks:
                self._tasks[pid] = self._progress.add_task(
                    f"Procedure {pid}", total=total, message=""
                )
            self._progress.update(
                self._tasks[pid], completed=done, total=total, message=event.get("message") or ""
            )

    def _finish_bar(self, pid: int) -> None:
        with self._lock:
            task = self._tasks.pop(pid)
            if self._progress is not None:
                self._progress.stop_task(task)

    # -- questions ---------------------------------------------------------------------------
    def _prompt(self, request: Mapping[str, Any]) -> None:
        if self._asking is not None and self._asking.is_alive():
            self._pending.append(request)  # one prompt at a time, in order
            return
        self._asking = threading.Thread(
            target=self._read_answer, args=(request,), name="oet-ask", daemon=True
        )
        self._asking.start()

    def _read_answer(self, request: Mapping[str, Any]) -> None:
        while True:
            pid, rid = request["procedure_id"], str(request["id"])
            choices = request.get("choices")
            hint = f" [{'/'.join(map(str, choices))}]" if choices else ""
            self.echo(f"? {request.get('prompt')}{hint}")
            line = sys.stdin.readline()
            if not line:  # end of input: leave the question to another client
                return
            text = line.rstrip("\n")
            value: Any = text
            if choices and not any(text == str(c) for c in choices):
                value = parse_value(text)
            try:
                closed = self._http.answer_request(pid, rid, value)
                self.echo(f"Answered request {rid} of procedure {pid}: {closed['value']!r}")
            except CliError as exc:
                self.echo(f"Answer not taken: {exc}")
                if "not one of" in str(exc) or "choose one of" in str(exc):
                    continue  # ask again
            if not self._pending:
                return
            request = self._pending.pop(0)
