"""``oet procedure create|list|start|stop|describe`` (also available as ``oet create`` etc.)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ...vocabulary import HOLDING_STATES, STARTABLE_STATES
from .. import exit_codes
from ..args import parse_bool, parse_value, split_script_args
from ..errors import CliError, reporting_errors
from ..formatting import describe as describe_report
from ..formatting import procedure_table
from .common import EXTRA_ARGS, state_of
from .operator import AskOption, Follower, asking

ENDINGS = {
    "procedure.lifecycle.complete": exit_codes.SUCCESS,
    "procedure.lifecycle.failed": exit_codes.PROCEDURE_FAILED,
    "procedure.lifecycle.stopped": exit_codes.PROCEDURE_FAILED,
}

PidOption = Annotated[int | None, typer.Option("--pid", help="Procedure ID.")]


@reporting_errors
def create(
    ctx: typer.Context,
    script_uri: Annotated[str, typer.Argument(help="file:///abs/path.py or git://path/in/repo.py")],
    subarray_id: Annotated[
        str, typer.Option("--subarray_id", "--subarray-id", help="Sub-array the script controls.")
    ] = "1",
    git_repo: Annotated[
        str | None, typer.Option("--git_repo", "--git-repo", help="Repository of a git:// script.")
    ] = None,
    git_branch: Annotated[
        str | None, typer.Option("--git_branch", "--git-branch", help="Branch (default: main).")
    ] = None,
    git_commit: Annotated[
        str | None,
        typer.Option("--git_commit", "--git-commit", help="Commit hash; wins over the branch."),
    ] = None,
    create_env: Annotated[
        str | None,
        typer.Option(
            "--create_env",
            "--create-env",
            metavar="BOOL",
            help="Build a virtualenv from the repository's dependencies.",
        ),
    ] = None,
) -> None:
    """Prepare a procedure: load a script and call its init function.

    Words after SCRIPT_URI are positional arguments of init and --name=value pairs its keyword
    arguments (values read as JSON where possible), e.g.

        oet create file:///scripts/observe.py sb-123 --subarray_id=2 --verbose=true

        oet create git://scripts/observe.py --git_repo=https://gitlab.com/ska-telescope/x
    """
    args, kwargs = split_script_args(ctx.args)
    git_args = {
        k: v
        for k, v in (("git_repo", git_repo), ("git_branch", git_branch), ("git_commit", git_commit))
        if v
    }
    if script_uri.startswith("file://"):
        if git_args or create_env is not None:
            raise CliError(
                f"Git arguments {sorted(git_args) or ['create_env']} only apply to git:// scripts",
                exit_codes.USAGE,
            )
        script: dict[str, Any] = {"script_type": "filesystem", "script_uri": script_uri}
    elif script_uri.startswith("git://"):
        script = {
            "script_type": "git",
            "script_uri": script_uri,
            "git_args": git_args,
            "create_env": parse_bool(create_env, "--create_env", False),
        }
    else:
        raise CliError(
            f"Script URI type not handled: {script_uri!r} (use file:// or git://)",
            exit_codes.USAGE,
        )
    init_kwargs = {"subarray_id": parse_value(subarray_id), **kwargs}
    body = {"script": script, "script_args": {"init": {"args": args, "kwargs": init_kwargs}}}
    typer.echo(procedure_table([state_of(ctx).http.create_procedure(body)]))


@reporting_errors
def list_procedures(ctx: typer.Context, pid: PidOption = None) -> None:
    """List the procedures the OET holds (the newest ones), or one with --pid."""
    http = state_of(ctx).http
    procedures = [http.get_procedure(pid)] if pid is not None else http.list_procedures()
    typer.echo(procedure_table(procedures))


@reporting_errors
def start(
    ctx: typer.Context,
    pid: PidOption = None,
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen", metavar="BOOL", help="Follow the events until the procedure ends [True]."
        ),
    ] = None,
    ask: AskOption = None,
) -> None:
    """Run the main function of a procedure (by default the last one created).

    Words are positional arguments of main and --name=value pairs its keyword arguments:

        oet start --pid=3 hello --foo=bar      # main("hello", foo="bar")

    Unless --listen=False, events are shown until the procedure ends; Ctrl-C stops following
    (the procedure keeps running). The exit status is 8 if it ends FAILED or STOPPED. Questions
    the script asks are prompted for (on a terminal, or with --ask=true) and its progress is
    shown as a bar (plain lines when the output is not a terminal).
    """
    http = state_of(ctx).http
    follow = parse_bool(listen, "--listen", True)
    args, kwargs = split_script_args(ctx.args)
    if pid is None:
        procedures = http.list_procedures()
        if not procedures:
            raise CliError("No procedures to start", exit_codes.CONFLICT)
        procedure = max(procedures, key=lambda p: p["id"])
        if procedure["state"] not in STARTABLE_STATES:
            raise CliError(
                f"The last procedure created is in {procedure['state']} state and cannot be "
                "started, please specify a valid procedure ID.",
                exit_codes.CONFLICT,
            )
    else:
        procedure = http.get_procedure(pid)
        if procedure["state"] not in STARTABLE_STATES:
            raise CliError(
                f"Cannot start a procedure in state {procedure['state']}.", exit_codes.CONFLICT
            )
    pid = procedure["id"]
    main_args = {"args": args, "kwargs": kwargs}

    def start_and_show() -> None:
        typer.echo(procedure_table([http.start_procedure(pid, main_args)]))

    if not follow:
        start_and_show()
        return

    def on_open() -> None:
        start_and_show()
        typer.echo("\nEvents\n------\n")

    follower = Follower(http, asking(ask), pid)
    try:
        for event in http.events(on_open=on_open):
            follower.show(event)
            if event.get("topic") in ENDINGS and event.get("procedure_id") == pid:
                raise typer.Exit(ENDINGS[event["topic"]])
    except KeyboardInterrupt:
        typer.echo(f"\nStopped following events; procedure {pid} continues.", err=True)
    finally:
        follower.close()


@reporting_errors
def stop(
    ctx: typer.Context,
    pid: PidOption = None,
    run_abort: Annotated[
        str | None,
        typer.Option(
            "--run_abort",
            "--run-abort",
            metavar="BOOL",
            help="Run the abort script for the sub-array after stopping [False].",
        ),
    ] = None,
) -> None:
    """Stop a running procedure (by default the one running) and wait until it has stopped."""
    http = state_of(ctx).http
    abort = parse_bool(run_abort, "--run_abort", False)
    if pid is None:
        running = [p for p in http.list_procedures() if p["state"] in HOLDING_STATES]
        if not running:
            typer.echo("No procedures to stop")
            return
        if len(running) > 1:
            raise CliError(
                "More than one procedure is running. Specify ID of the procedure to stop.",
                exit_codes.USAGE,
            )
        pid = running[0]["id"]
    typer.echo(http.stop_procedure(pid, abort))


@reporting_errors
def switch(
    ctx: typer.Context,
    pid: Annotated[int, typer.Option("--pid", help="ID of the READY procedure to start.")],
    run_abort: Annotated[
        str | None,
        typer.Option(
            "--run_abort",
            "--run-abort",
            metavar="BOOL",
            help="Run the abort script for the sub-array after stopping what runs [False].",
        ),
    ] = None,
    force: Annotated[
        str | None,
        typer.Option(
            "--force", metavar="BOOL", help="Kill what runs at once, without the stop grace."
        ),
    ] = None,
) -> None:
    """Target-of-opportunity switch: stop whatever runs on the sub-array of procedure PID and
    start PID (READY) in one call."""
    http = state_of(ctx).http
    abort = parse_bool(run_abort, "--run_abort", False)
    kill = parse_bool(force, "--force", False)
    answer = http.switch_procedure(pid, abort, kill)
    stopped = ", ".join(f"{p['id']} ({p['state']})" for p in answer["stopped"]) or "nothing"
    typer.echo(f"Stopped: {stopped}")
    typer.echo(f"Started: {answer['started']['id']} ({answer['started']['state']})")
    typer.echo(procedure_table([*answer["stopped"], answer["started"]]))


@reporting_errors
def describe(ctx: typer.Context, pid: PidOption = None) -> None:
    """Show a procedure in detail (by default the last created).

    State history with numbered RUNNING entries, arguments per function, git details and, if
    it failed, the stack trace."""
    http = state_of(ctx).http
    if pid is None:
        procedures = http.list_procedures()
        if not procedures:
            typer.echo("No procedures to describe")
            return
        pid = max(p["id"] for p in procedures)
    typer.echo(describe_report(http.get_procedure(pid)))


def register(app: typer.Typer, **options: Any) -> None:
    """Add the procedure commands to ``app`` (the ``procedure`` group, or the root)."""
    app.command("create", context_settings=EXTRA_ARGS, **options)(create)
    app.command("list", **options)(list_procedures)
    app.command("start", context_settings=EXTRA_ARGS, **options)(start)
    app.command("stop", **options)(stop)
    app.command("describe", **options)(describe)
    app.command("switch", **options)(switch)
