"""What ``oet`` prints: procedure tables, the ``describe`` report and one line per event.

The layouts follow the original OET client, which users read and scrape: the table columns
``ID  Script  Creation Time  State``, ``describe`` sections with numbered RUNNING entries, and
``- Script message: ...`` lines from ``listen``.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import tabulate

from ..vocabulary import ProcedureState


def _utc(timestamp: float, fmt: str) -> str:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC).strftime(fmt)


def _created(summary: Mapping[str, Any]) -> str:
    states = summary.get("history", {}).get("process_states") or []
    return _utc(states[0][1], "%Y-%m-%d %H:%M:%S") if states else ""


def procedure_table(procedures: Iterable[Mapping[str, Any]]) -> str:
    """``ID  Script  Creation Time  State``, one row per procedure."""
    procedures = list(procedures)
    rows = [(p["id"], p["script"]["script_uri"], _created(p), p["state"]) for p in procedures]
    table = tabulate.tabulate(rows, ["ID", "Script", "Creation Time", "State"])
    if procedures:
        table += "\n\nFor more details, use: oet describe --pid=<id>"
    return table


def describe(procedure: Mapping[str, Any]) -> str:
    """Identity, state history (RUNNING entries numbered), arguments, git details, stack trace."""
    script = procedure["script"]
    sections = [
        tabulate.tabulate(
            [(procedure["id"], script["script_uri"], procedure.get("uri", ""))],
            ["ID", "Script", "URI"],
        )
    ]
    running = itertools.count(1)
    states = sorted(procedure["history"]["process_states"], key=lambda s: s[1])
    sections.append(
        tabulate.tabulate(
            [
                (
                    _utc(ts, "%Y-%m-%d %H:%M:%S.%f"),
                    f"{state} {next(running)}" if state == ProcedureState.RUNNING else state,
                )
                for state, ts in states
            ],
            ["Time", "State"],
        )
    )
    sections.append(
        tabulate.tabulate(
            [
                (index, fn, args.get("args", []), args.get("kwargs", {}))
                for index, (fn, args) in enumerate(procedure.get("script_args", {}).items(), 1)
            ],
            ["Index", "Method", "Arguments", "Keyword Arguments"],
        )
    )
    git = script.get("git_args")
    if git:
        sections.append(
            tabulate.tabulate(
                [(git.get("git_repo"), git.get("git_branch"), git.get("git_commit"))],
                ["Repository", "Branch", "Commit"],
            )
        )
        if script.get("create_env"):
            sections.append("Environment: created from the repository's dependencies")
    if procedure.get("audit"):
        sections.append(audit_table(procedure["audit"]))
    stacktrace = procedure["history"].get("stacktrace")
    if stacktrace:
        sections.append(f"Stack Trace:\n------------\n{stacktrace.rstrip()}")
    return "\n\n".join(sections)


def audit_table(audit: Iterable[Mapping[str, Any]]) -> str:
    """``Time  Action  By``: who created, started, stopped or aborted it."""
    rows = [
        (
            _utc(e["at"], "%Y-%m-%d %H:%M:%S.%f") if e.get("at") else "",
            e.get("action"),
            e.get("user"),
        )
        for e in audit
    ]
    return tabulate.tabulate(rows, ["Time", "Action", "By"])


def activity_table(activities: Iterable[Mapping[str, Any]]) -> str:
    """``ID  Activity  SB ID  Creation Time  Procedure ID  State``."""
    rows = []
    for a in activities:
        states = a.get("activity_states") or []
        created = _utc(states[0][1], "%Y-%m-%d %H:%M:%S") if states else ""
        state = a.get("state") or (states[-1][0] if states else "")
        rows.append((a.get("id"), a.get("activity_name"), a.get("sbd_id"), created,
                     a.get("procedure_id", a.get("pid")), state))  # fmt: skip
    headers = ["ID", "Activity", "SB ID", "Creation Time", "Procedure ID", "State"]
    table = tabulate.tabulate(rows, headers)
    if rows:
        table += (
            "\n\nFor details on activity:- oet activity describe --aid=<ID>"
            "\nFor details on script execution:- oet procedure describe --pid=<Procedure ID>"
        )
    return table


def describe_activity(activity: Mapping[str, Any]) -> str:
    """The ``oet activity describe`` report: identity, URI and prepare-only flag, state history
    and the arguments given to each function (the SBD's merged with the request's)."""
    sections = [
        tabulate.tabulate(
            [
                (
                    activity.get("id"),
                    activity.get("activity_name"),
                    activity.get("sbd_id"),
                    activity.get("procedure_id"),
                    activity.get("state"),
                )
            ],
            ["ID", "Activity", "SB ID", "Procedure ID", "State"],
        ),
        tabulate.tabulate(
            [(activity.get("uri", ""), activity.get("prepare_only"), activity.get("sbi_id"))],
            ["URI", "Prepare Only", "SBI ID"],
        ),
        tabulate.tabulate(
            [
                (_utc(ts, "%Y-%m-%d %H:%M:%S.%f"), state)
                for state, ts in sorted(activity.get("activity_states") or [], key=lambda s: s[1])
            ],
            ["Time", "State"],
        ),
        "Script Arguments\n----------------\n\n"
        + tabulate.tabulate(
            [
                (fn, args.get("args", []), args.get("kwargs", {}))
                for fn, args in (activity.get("script_args") or {}).items()
            ],
            ["Method", "Arguments", "Keyword Arguments"],
        ),
        *([audit_table(activity["audit"])] if activity.get("audit") else []),
        "For details on script execution related to the activity\n"
        "use `oet procedure` commands with the Procedure ID",
    ]
    return "\n\n".join(sections)


# --- events -----------------------------------------------------------------------------------
def _procedure(evt: Mapping[str, Any]) -> str:
    result = evt.get("result") or {}
    uri = (result.get("script") or {}).get("script_uri")
    pid = result.get("id", evt.get("procedure_id"))
    return f"Procedure {pid} ({uri})" if uri else f"Procedure {pid}"


def _subarray(evt: Mapping[str, Any]) -> str:
    init = ((evt.get("result") or {}).get("script_args") or {}).get("init") or {}
    subarray = (init.get("kwargs") or {}).get("subarray_id")
    return f" on subarray {subarray}" if subarray is not None else ""


EVENT_FORMATS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "procedure.lifecycle.created": lambda e: f"{_procedure(e)} created{_subarray(e)}",
    "procedure.lifecycle.statechange": lambda e: (
        f"Procedure {e['procedure_id']} is {e['new_state']}"
    ),
    "procedure.lifecycle.started": lambda e: f"{_procedure(e)} started execution{_subarray(e)}",
    "procedure.lifecycle.complete": lambda e: f"{_procedure(e)} execution complete{_subarray(e)}",
    "procedure.lifecycle.failed": lambda e: f"{_procedure(e)} execution failed{_subarray(e)}",
    "procedure.lifecycle.stopped": lambda e: f"{_procedure(e)} stopped{_subarray(e)}",
    "procedure.lifecycle.stacktrace": lambda e: (
        f"Procedure {e['procedure_id']} stack trace:\n{str(e['stacktrace']).rstrip()}"
    ),
    "procedure.lifecycle.paused": lambda e: f"{_procedure(e)} paused",
    "procedure.lifecycle.resumed": lambda e: f"{_procedure(e)} resumed",
    "procedure.request.opened": lambda e: request_line(e["request"]),
    "procedure.request.closed": lambda e: closed_line(e["request"]),
    "procedure.progress": lambda e: f"Procedure {e['procedure_id']} progress: {progress_text(e)}",
    "user.script.announce": lambda e: f"Script message: {e['msg']}",
    "script.log": lambda e: f"Script log {e['level']} {e['logger']}: {e['message']}",
    "script.stdout": lambda e: (
        f"Script {'error output' if e.get('stream') == 'stderr' else 'output'}: {e['line']}"
    ),
    "script.env": lambda e: f"Procedure {e['procedure_id']} preparing ({e['step']}): {e['line']}",
    "sb.lifecycle.allocated": lambda e: f"Resources allocated using SB {e['sb_id']}",
    "sb.lifecycle.observation.started": lambda e: f"Observation for SB {e['sb_id']} started",
    "sb.lifecycle.observation.finished.succeeded": lambda e: (
        f"Observation for SB {e['sb_id']} complete"
    ),
    "sb.lifecycle.observation.finished.failed": lambda e: f"Observation for SB {e['sb_id']} failed",
    "subarray.resources.allocated": lambda e: f"Subarray {e['subarray_id']}: resources allocated",
    "subarray.resources.deallocated": lambda e: f"Subarray {e['subarray_id']}: resources released",
    "subarray.configured": lambda e: f"Subarray {e['subarray_id']} configured",
    "subarray.scan.started": lambda e: f"Subarray {e['subarray_id']}: scan started",
    "subarray.scan.finished": lambda e: f"Subarray {e['subarray_id']}: scan complete",
    "subarray.fault": lambda e: f"Subarray {e['subarray_id']} error: {e['error']}",
    "scan.lifecycle.configure.started": lambda e: (
        f"SB {e['sb_id']}: configuring for scan {e['scan_id']}"
    ),
    "scan.lifecycle.configure.complete": lambda e: (
        f"SB {e['sb_id']}: scan {e['scan_id']} configuration complete"
    ),
    "scan.lifecycle.configure.failed": lambda e: (
        f"SB {e['sb_id']}: scan {e['scan_id']} configuration failed"
    ),
    "scan.lifecycle.start": lambda e: f"SB {e['sb_id']}: scan {e['scan_id']} starting",
    "scan.lifecycle.end.succeeded": lambda e: f"SB {e['sb_id']}: scan {e['scan_id']} complete",
    "scan.lifecycle.end.failed": lambda e: f"SB {e['sb_id']}: scan {e['scan_id']} failed",
}

_ENVELOPE = ("topic", "msg_src", "timestamp", "seq")


def request_line(request: Mapping[str, Any]) -> str:
    """A script's question, and how to answer it."""
    choices = request.get("choices")
    hint = f" [{'/'.join(map(str, choices))}]" if choices else ""
    if request.get("default") is not None:
        hint += f" (default {request['default']!r}"
        hint += f" in {request['timeout']} s)" if request.get("timeout") else ")"
    pid = request.get("procedure_id")
    return (
        f"Procedure {pid} asks (request {request['id']}): {request.get('prompt')}{hint}"
        f" -- answer with: oet answer --pid={pid} VALUE"
    )


def closed_line(request: Mapping[str, Any]) -> str:
    pid, rid = request.get("procedure_id"), request.get("id")
    if request.get("outcome") == "answered":
        who = f" by {request['user']}" if request.get("user") else ""
        return f"Procedure {pid} request {rid} answered {request.get('value')!r}{who}"
    default = request.get("value")
    tail = f"; the script goes on with {default!r}" if default is not None else ""
    return f"Procedure {pid} request {rid} timed out{tail}"


def progress_text(progress: Mapping[str, Any]) -> str:
    done, total = progress.get("done"), progress.get("total")
    text = f"{done}/{total}" if total else f"{done}"
    if total:
        with contextlib.suppress(TypeError, ValueError, ZeroDivisionError):
            text += f" ({100 * float(done) / float(total):.0f}%)"
    return f"{text} {progress.get('message') or ''}".rstrip()


def event_line(event: Mapping[str, Any]) -> str:
    """One readable line (a stack trace spans several) for an event, prefixed ``- ``."""
    topic = str(event.get("topic", ""))
    formatter = EVENT_FORMATS.get(topic)
    if formatter is not None:
        try:
            return f"- {formatter(event)}"
        except (KeyError, TypeError, AttributeError):
            pass  # an unexpected payload: show it raw below rather than hide it
    if topic.startswith("activity.lifecycle."):
        state = event.get("new_state") or topic.removeprefix("activity.lifecycle.").upper()
        result = event.get("result") or {}
        what = f" ({result['activity_name']} of {result['sbd_id']})" if result.get("sbd_id") else ""
        return f"- Activity {event.get('activity_id', '?')}{what} is {state}"
    payload = {k: v for k, v in event.items() if k not in _ENVELOPE}
    return f"- {topic}: {json.dumps(payload, default=str)}"


def topic_filter(topics: str, exclude: str) -> Callable[[Mapping[str, Any]], bool]:
    """``--topics``/``--exclude``: comma-separated topic prefixes (``all`` = every topic)."""
    wanted = [t.strip() for t in topics.split(",") if t.strip() and t.strip() != "all"]
    unwanted = [t.strip() for t in exclude.split(",") if t.strip()]

    def accept(event: Mapping[str, Any]) -> bool:
        topic = str(event.get("topic", ""))
        if wanted and not any(topic.startswith(t) for t in wanted):
            return False
        return not any(topic.startswith(t) for t in unwanted)

    return accept
