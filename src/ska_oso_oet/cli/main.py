"""``oet``: command-line client of the OET REST API.

    oet [--server-url URL] procedure create|list|start|stop|describe|pause|resume|answer
    oet [--server-url URL] activity run|list|describe
    oet [--server-url URL] group create|list|describe|disband
    oet [--server-url URL] listen

The older top-level forms (``oet create``, ``oet list``, ``oet start``, ``oet stop``,
``oet describe``) keep working. ``OET_REST_URI`` sets the server URL; ``--token``,
``OET_TOKEN`` or a token file (``--token-file``, ``OET_TOKEN_FILE``, ``~/.config/oet/token``)
the bearer token of a gateway with authentication.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from .args import normalise_flags
from .commands import activities, events, groups, operator, procedures
from .commands.common import CliState
from .http import DEFAULT_URL

#: Read when neither --token nor --token-file (nor their variables) is given.
DEFAULT_TOKEN_FILE = Path("~/.config/oet/token")

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
group_app = typer.Typer(
    help="Link procedures of several subarrays: when one fails, the others are stopped.",
    no_args_is_help=True,
)

procedures.register(procedure_app)
activities.register(activity_app)
app.add_typer(procedure_app, name="procedure")
app.add_typer(activity_app, name="activity")
groups.register(group_app)
app.add_typer(group_app, name="group")
app.command("listen")(events.listen)
procedures.register(app, rich_help_panel="Procedure commands (short forms)")
operator.register(procedure_app)
operator.register(app, rich_help_panel="Procedure commands (short forms)")


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
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="OET_TOKEN",
            help="Bearer token for a gateway with authentication (an OIDC access token or a "
            "token of its tokens file). Prefer OET_TOKEN or a token file: command lines are "
            "visible to other users.",
            show_default=False,
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            envvar="OET_TOKEN_FILE",
            help=f"File holding the bearer token [default: {DEFAULT_TOKEN_FILE}, if it exists].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Control and monitor the Observation Execution Tool."""
    if not isinstance(ctx.obj, CliState):
        ctx.obj = CliState(server_url, token=resolve_token(token, token_file))
        ctx.call_on_close(ctx.obj.close)


def resolve_token(token: str | None, token_file: Path | None) -> str | None:
    """The bearer token: ``--token``/``OET_TOKEN``, else the token file's first line."""
    if token:
        return token.strip()
    path = (token_file or DEFAULT_TOKEN_FILE).expanduser()
    try:
        text = path.read_text()
    except FileNotFoundError:
        if token_file is not None:  # named explicitly: say so rather than go on without
            print(f"Error: token file {path} does not exist", file=sys.stderr)
            raise typer.Exit(2) from None
        return None
    except OSError as exc:
        print(f"Error: cannot read token file {path}: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else None


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``oet``."""
    args = list(sys.argv[1:] if argv is None else argv)
    app(args=normalise_flags(args), prog_name="oet")


if __name__ == "__main__":
    main()
