"""``oet activity run|list|describe``: activities of scheduling blocks.

A server whose device has no activities (an older version) answers 501; the command then
prints that one line and exits 7.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from .. import exit_codes
from ..args import parse_bool
from ..errors import CliError, reporting_errors
from ..formatting import activity_table, describe_activity, event_line
from .common import state_of
from .procedures import ENDINGS

AidOption = Annotated[int | None, typer.Option("--aid", help="Activity ID.")]


@reporting_errors
def run(
    ctx: typer.Context,
    activity_name: Annotated[str, typer.Argument(help="Activity of the SB, e.g. observe.")],
    sbd_id: Annotated[str, typer.Argument(help="Scheduling block definition ID.")],
    script_args: Annotated[
        str | None,
        typer.Option(
            "--script_args",
            "--script-args",
            help='JSON per function, e.g. \'{"main": {"kwargs": {"n": 2}}}\'.',
        ),
    ] = None,
    prepare_only: Annotated[
        str | None,
        typer.Option("--prepare_only", "--prepare-only", metavar="BOOL", help="Do not start."),
    ] = None,
    create_env: Annotated[
        str | None,
        typer.Option("--create_env", "--create-env", metavar="BOOL", help="Build a virtualenv."),
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen", metavar="BOOL", help="Follow the events until the script ends [True]."
        ),
    ] = None,
) -> None:
    """Run an activity of a scheduling block (its script is prepared, then started).

    Unless --listen=False (or --prepare_only), the events are shown until the activity's
    script ends; the exit status is 8 if it ends FAILED or STOPPED."""
    try:
        parsed_args: dict[str, Any] = json.loads(script_args) if script_args else {}
    except ValueError as exc:
        raise CliError(f"--script_args is not valid JSON: {exc}", exit_codes.USAGE) from exc
    body = {
        "activity_name": activity_name,
        "sbd_id": sbd_id,
        "script_args": parsed_args,
        "prepare_only": parse_bool(prepare_only, "--prepare_only", False),
        "create_env": parse_bool(create_env, "--create_env", False),
    }
    http = state_of(ctx).http
    if body["prepare_only"] or not parse_bool(listen, "--listen", True):
        typer.echo(activity_table([http.create_activity(body)]))
        return
    created: dict[str, Any] = {}

    def on_open() -> None:
        created.update(http.create_activity(body))
        typer.echo(activity_table([created]))
        typer.echo("\nEvents\n------\n")

    try:
        for event in http.events(on_open=on_open):
            typer.echo(event_line(event))
            pid = created.get("procedure_id")
            if event.get("topic") in ENDINGS and event.get("procedure_id") == pid:
                raise typer.Exit(ENDINGS[event["topic"]])
    except KeyboardInterrupt:
        typer.echo(f"\nStopped following events; activity {created.get('id')} continues.", err=True)


@reporting_errors
def list_activities(ctx: typer.Context, aid: AidOption = None) -> None:
    """List activities, or one with --aid."""
    http = state_of(ctx).http
    activities = [http.get_activity(aid)] if aid is not None else http.list_activities()
    typer.echo(activity_table(activities))


@reporting_errors
def describe(ctx: typer.Context, aid: AidOption = None) -> None:
    """Show an activity (by default the last one) with its full record."""
    http = state_of(ctx).http
    if aid is None:
        activities = http.list_activities()
        if not activities:
            typer.echo("No activities to describe")
            return
        activity = max(activities, key=lambda a: a.get("id", 0))
    else:
        activity = http.get_activity(aid)
    typer.echo(describe_activity(activity))


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("list")(list_activities)
    app.command("describe")(describe)
