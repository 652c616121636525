"""``oet group create|list|describe|disband``: linked observation groups.

A group links procedures of several subarrays: when one fails or is stopped, the OET stops the
others (``--abort``: with their subarray's abort script; ``--kill``: at once, without the stop
grace).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

import tabulate
import typer

from .. import exit_codes
from ..errors import CliError, reporting_errors
from .common import state_of


def _utc(timestamp: float, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC).strftime(fmt)


def _members(group: Mapping[str, Any]) -> str:
    return ", ".join(f"{m['procedure_id']} ({m['state']})" for m in group.get("members", []))


def group_table(groups: Iterable[Mapping[str, Any]]) -> str:
    """``ID  Name  Created  State  Members``, one row per group."""
    rows = []
    for g in groups:
        history = g.get("history") or []
        created = _utc(history[0]["timestamp"]) if history else ""
        rows.append((g["id"], g.get("name", ""), created, g["state"], _members(g)))
    table = tabulate.tabulate(rows, ["ID", "Name", "Created", "State", "Members"])
    if rows:
        table += "\n\nFor more details, use: oet group describe <id>"
    return table


def describe_group(group: Mapping[str, Any]) -> str:
    """Identity and policy, members (with how their halt went) and the history."""
    policy = group.get("policy") or {}
    halting = "stop" + (" + abort script" if policy.get("abort") else "")
    halting += " (killed at once)" if policy.get("force") else ""
    sections = [
        tabulate.tabulate(
            [
                (
                    group["id"],
                    group.get("name", ""),
                    group["state"],
                    halting,
                    group.get("created_by", ""),
                )
            ],
            ["ID", "Name", "State", "Halting by", "Created by"],
        ),
        tabulate.tabulate(
            [
                (
                    m["procedure_id"],
                    m.get("activity_id") or "",
                    m["device"],
                    m["state"],
                    m.get("halt_outcome") or ("asked to stop" if m.get("halted") else ""),
                )
                for m in group.get("members", [])
            ],
            ["Procedure", "Activity", "Device", "State", "Halt"],
        ),
        tabulate.tabulate(
            [
                (_utc(h["timestamp"], "%Y-%m-%d %H:%M:%S.%f"), h["state"], h["reason"])
                for h in group.get("history", [])
            ],
            ["Time", "State", "What happened"],
        ),
    ]
    return "\n\n".join(sections)


@reporting_errors
def create(
    ctx: typer.Context,
    pids: Annotated[list[int], typer.Argument(help="Procedure IDs to link (at least 2).")],
    abort: Annotated[
        bool, typer.Option("--abort", help="Halt the others with their subarray's abort script.")
    ] = False,
    kill: Annotated[
        bool, typer.Option("--kill", help="Kill the others at once (no stop grace).")
    ] = False,
    name: Annotated[str, typer.Option("--name", help="A name for the group.")] = "",
    aids: Annotated[
        list[int] | None,
        typer.Option("--aid", help="An activity ID to link (its procedure); repeatable."),
    ] = None,
) -> None:
    """Link procedures of several subarrays: when one fails or is stopped, the others are
    stopped."""
    body: dict[str, Any] = {"procedures": pids, "abort": abort, "force": kill}
    if aids:
        body["activities"] = aids
    if name:
        body["name"] = name
    typer.echo(describe_group(state_of(ctx).http.create_group(body)))


@reporting_errors
def list_groups(ctx: typer.Context) -> None:
    """List the groups."""
    typer.echo(group_table(state_of(ctx).http.list_groups()))


@reporting_errors
def describe(ctx: typer.Context, gid: Annotated[int, typer.Argument(help="Group ID.")]) -> None:
    """Show a group: members, how they were halted, and its history."""
    typer.echo(describe_group(state_of(ctx).http.get_group(gid)))


@reporting_errors
def disband(ctx: typer.Context, gid: Annotated[int, typer.Argument(help="Group ID.")]) -> None:
    """Unlink a group's procedures: they carry on independently (nothing is stopped)."""
    group = state_of(ctx).http.disband_group(gid)
    if group.get("state") != "DISBANDED":
        raise CliError(f"group {gid} is {group.get('state')}", exit_codes.SERVER_ERROR)
    typer.echo(f"Group {gid} disbanded: its procedures carry on independently.")


def register(app: typer.Typer) -> None:
    app.command("create")(create)
    app.command("list")(list_groups)
    app.command("describe")(describe)
    app.command("disband")(disband)
