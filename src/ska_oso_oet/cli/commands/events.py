"""``oet listen``: follow the OET's events as readable lines."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import reporting_errors
from ..formatting import event_line, topic_filter
from .common import state_of


@reporting_errors
def listen(
    ctx: typer.Context,
    topics: Annotated[
        str, typer.Option(help="Comma-separated topic prefixes to show, or 'all'.")
    ] = "all",
    exclude: Annotated[str, typer.Option(help="Comma-separated topic prefixes to hide.")] = "",
) -> None:
    """Show the events of the OET and its scripts as they happen.

    One readable line per event, e.g. '- Script message: ...'. Press Ctrl-C to stop. A dropped
    connection is resumed without losing events."""
    accept = topic_filter(topics, exclude)
    try:
        for event in state_of(ctx).http.events():
            if accept(event):
                typer.echo(event_line(event))
    except KeyboardInterrupt:
        pass
