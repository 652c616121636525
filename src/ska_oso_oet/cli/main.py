"""``oet``: command-line client of the OET REST API.

    oet [--server-url URL] procedure create|list|start|stop|describe
    oet [--server-url URL] activity run|list|describe
    oet [--server-url URL] listen

The older top-level forms (``oet create``, ``oet list``, ``oet start``, ``oet stop``,
``oet describe``) keep working. ``OET_REST_URI`` sets the server URL.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from .args import normalise_flags
from .commands import activities, events, procedures
from .commands.common import CliState
from .http import DEFAULT_URL

app = typer.Typer(
    name="oet",
    help="Control and monitor the Observation Execution Tool: prepare scripts as procedures, "
    "run and stop them, and follow their events.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
procedure_app = typer.Typer(help="Prepare, run, stop and inspect procedures (scripts).",
                            no_args_is_help=True)  # fmt: skip
activity_app = typer.Typer(help="Run the activities of scheduling blocks.", no_args_is_help=True)

procedures.register(procedure_app)
activities.register(activity_app)
app.add_typer(procedure_app, name="procedure")
app.add_typer(activity_app, name="activity")
app.command("listen")(events.listen)
procedures.register(app, rich_help_panel="Procedure commands (short forms)")


@app.callback()
def root(
    ctx: typer.Context,
    server_url: Annotated[
        str,
        typer.Option(
            "--server-url",
            "--server_url",
            envvar="OET_REST_URI",
            help="Base URL of the OET REST API.",
            show_default=True,
        ),
    ] = DEFAULT_URL,
) -> None:
    """Control and monitor the Observation Execution Tool."""
    if not isinstance(ctx.obj, CliState):
        ctx.obj = CliState(server_url)
        ctx.call_on_close(ctx.obj.close)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``oet``."""
    args = list(sys.argv[1:] if argv is None else argv)
    app(args=normalise_flags(args), prog_name="oet")


if __name__ == "__main__":
    main()
