"""``oet listen``: follow the OET's events as readable lines."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import reporting_errors
from ..formatting import topic_filter
from .common import state_of
from .operator import AskOption, Follower, asking


@reporting_errors
def listen(
    ctx: typer.Context,
    topics: Annotated[
        str, typer.Option(help="Comma-separated topic prefixes to show, or 'all'.")
    ] = "all",
    exclude: Annotated[str, typer.Option(help="Comma-separated topic prefixes to hide.")] = "",
    ask: AskOption = None,
) -> None:
    """Show the events of the OET and its scripts as they happen.

    One readable line per event, e.g. '- Script message: ...'. Press Ctrl-C to stop. A dropped
    connection is resumed without losing events. Questions scripts ask are prompted for (on
    a terminal, or with --ask=true); progress is shown as bars (lines when not a terminal)."""
    accept = topic_filter(topics, exclude)
    http = state_of(ctx).http
    follower = Follower(http, asking(ask))
    try:
        for event in http.events():
            if accept(event):
                follower.show(event)
    except KeyboardInterrupt:
        pass
    finally:
        follower.close()
