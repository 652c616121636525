"""Run the OET benchmarks against a real stack and write ``results.json`` and ``results.md``.

    python -m benchmarks            # full run: a few minutes
    python -m benchmarks --smoke    # tiny repetitions, under a minute (CI)

It starts ``oet-stack --subarrays 16`` (Tango database on sqlite, OETDeviceServer, REST gateway)
and a minimal baseline device, measures P1-P7 and the gateway through real clients (Tango
DeviceProxy with change-event subscriptions; HTTP and SSE), and stops everything. See
docs/benchmarks.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from .git_figures import g1_environment_builds, g2_cached_git_prepare
from .group_figures import l1_linked_groups
from .harness import BenchStack, OetClient
from .http_figures import gateway, p6_events
from .stack_figures import first_announce, stack_figures
from .tango_figures import (
    Baseline,
    Plan,
    p1_prepare_ready,
    p2_start,
    p3_stop,
    p4_too_switch,
    p5_responsiveness,
    p7_scale,
    p8_operator,
    t1_switch,
)

FIGURES = (
    "P1",
    "P2",
    "P3",
    "P4",
    "T1",
    "L1",
    "P5",
    "P6",
    "P7",
    "P8",
    "gateway",
    "G1",
    "G2",
    "S1",
    "H1",
    "A1",
)
TITLES = {
    "P1": "Prepare -> READY (script imports tango)",
    "P2": "Start -> RUNNING event",
    "P3": "Stop -> STOPPED (honours SIGTERM)",
    "P4": "TOO switch: stop running, start prepared -> TOO RUNNING",
    "T1": "One-call TOO switch (Switch) -> TOO RUNNING: Tango/REST, cooperative/forced",
    "L1": "Linked group of 3 (3 servers): member FAILED -> all others STOPPED",
    "P5": "Command/read round trip, 16 busy devices",
    "P6": "20,000 announces -> Tango subscriber",
    "P7": "16 devices prepare+run+complete concurrently (wall)",
    "P8": "Pause -> PAUSED event (script checkpointing every 10 ms)",
    "gateway": "GET /procedures (4 clients)",
    "G1": "Environment first build, 5 local deps: uv (baseline: pip)",
    "G2": "Prepare -> READY, git script, checkout + env cached",
    "S1": "oet-stack spawn -> first 200 (1 subarray)",
    "H1": "gateway GET /procedures, 1 client (baseline: Tango read)",
    "A1": "first announce of a 10-message burst -> Tango subscriber",
}
PART_TITLES = {
    "server_killed": "linked group of 3: member's server killed -> all others STOPPED",
    "start_to_complete_noop": "Start -> COMPLETE (no-op script)",
    "ignores_sigterm": "Stop -> STOPPED (ignores SIGTERM)",
    "forced_grace_0": "forced Stop (grace 0) -> STOPPED (ignores SIGTERM)",
    "command": "GetProcedure command round trip",
    "read": "attribute read round trip",
    "sse": "20,000 announces -> SSE client",
    "burst_1000": "1,000-announce bursts -> Tango subscriber, end to end",
    "burst_1000_sse": "1,000-announce bursts -> SSE client, end to end",
    "per_device": "per-device prepare -> COMPLETE",
    "post_to_ready": "POST /procedures -> READY (SSE)",
    "reuse_uv": "environment reuse (uv-built)",
    "reuse_pip": "environment reuse (pip-built)",
    "without_env": "Prepare -> READY, git script, OET environment",
    "spawn_16": "oet-stack spawn -> first 200 (16 subarrays)",
    "footprint": "total RSS of the stack, 1 subarray",
    "to_sse": "first announce of a 10-message burst -> SSE client",
    "get_one": "gateway GET /procedures/{id}, 1 client (baseline: GetProcedure)",
    "list_4_clients": "gateway GET /procedures, 4 clients",
    "get_one_4_clients": "gateway GET /procedures/{id}, 4 clients",
    "http_floor_4_clients": "bare ASGI app on the gateway's server stack, 4 clients",
    "resume": "Resume -> RUNNING event",
    "ask_round_trip": "question event -> Answer -> script goes on",
}


def start_profilers(stack: BenchStack, folder: Path, key: str) -> list[subprocess.Popen]:
    """``py-spy record`` (collapsed stacks) of the device server and the gateway during one
    figure; ``python -m benchmarks.profile FILE`` summarises a file."""
    folder.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return [
        subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--threads",
                "--output",
                str(folder / f"{key}-{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in stack.pids().items()
    ]


def cpu_seconds(stack: BenchStack) -> dict[str, float]:
    """CPU time (user + system) used so far by the stack's servers, the workers they started
    and finished (children), and this client process: where a figure's time went."""
    found = {"client": _cpu(psutil.Process())}
    for name, pid in stack.pids().items():
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            found[name] = _cpu(process)
            found[f"{name} (children)"] = sum(
                _cpu(c) for c in process.children(recursive=True) if c.is_running()
            )
    return found


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def stop_profilers(profilers: list[subprocess.Popen]) -> None:
    for process in profilers:
        process.send_signal(signal.SIGINT)
    for process in profilers:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure(
    plan: Plan, only: set[str], log: Callable[[str], None], profile: Path | None = None
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if only & {"S1", "H1"}:
        # Their own stacks, before the shared one starts, so that nothing else runs meanwhile.
        began = time.monotonic()
        log(f"S1, H1: {TITLES['S1']}; {TITLES['H1']} ...")
        try:
            figures = dict(zip(("S1", "H1"), stack_figures(plan), strict=True))
        except Exception as exc:  # one broken figure must not lose the others
            error = {"error": f"{type(exc).__name__}: {exc}", "met": False, "n": 0}
            figures = {"S1": dict(error), "H1": dict(error)}
        for key in ("S1", "H1"):
            if key in only:
                results[key] = figures[key]
                results[key]["seconds"] = round(time.monotonic() - began, 1)
                log(f"{key}: {summary_line(results[key])}")
    only = only - {"S1", "H1"}
    if "L1" in only:  # its own stack too: three device servers and the groups server
        began = time.monotonic()
        log(f"L1: {TITLES['L1']} ...")
        try:
            results["L1"] = l1_linked_groups(plan)
        except Exception as exc:  # one broken figure must not lose the others
            results["L1"] = {"error": f"{type(exc).__name__}: {exc}", "met": False, "n": 0}
        results["L1"]["seconds"] = round(time.monotonic() - began, 1)
        log(f"L1: {summary_line(results['L1'])}")
        only = only - {"L1"}
    if not only:
        return results
    with BenchStack() as stack:
        devices = [OetClient(stack, f"oso/oet/{n}") for n in range(1, stack.subarrays + 1)]
        dev = devices[0]
        base = Baseline(stack)
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("P1", lambda: p1_prepare_ready(dev, plan)),
            ("P2", lambda: p2_start(dev, base, plan)),
            ("P3", lambda: p3_stop(dev, base, plan)),
            ("P4", lambda: p4_too_switch(dev, base, plan)),
            ("T1", lambda: t1_switch(dev, base, plan, stack.rest_url)),
            ("P5", lambda: p5_responsiveness(devices, plan)),
            ("P6", lambda: p6_events(dev, base, stack.rest_url, plan)),
            ("P7", lambda: p7_scale(devices, plan)),
            ("P8", lambda: p8_operator(dev, base, plan)),
            (
                "gateway",
                lambda: gateway(
                    dev, stack.rest_url, plan, (results.get("P1") or {}).get("median_ms")
                ),
            ),
            ("G1", lambda: g1_environment_builds(plan)),
            ("G2", lambda: g2_cached_git_prepare(dev, stack.git_repos, plan)),
            ("A1", lambda: first_announce(dev, base, stack.rest_url, plan)),
        ]
        for key, step in steps:
            if key not in only:
                continue
            began = time.monotonic()
            log(f"{key}: {TITLES[key]} ...")
            profilers = start_profilers(stack, profile, key) if profile else []
            cpu_before = cpu_seconds(stack)
            try:
                results[key] = step()
            except Exception as exc:  # one broken figure must not lose the others
                results[key] = {"error": f"{type(exc).__name__}: {exc}", "met": False, "n": 0}
            finally:
                stop_profilers(profilers)
                cpu = {
                    name: round(seconds - cpu_before.get(name, 0.0), 2)
                    for name, seconds in cpu_seconds(stack).items()
                }
                for client in devices:
                    client.stop_all()
            results[key]["seconds"] = round(time.monotonic() - began, 1)
            results[key]["cpu_seconds"] = cpu
            log(f"{key}: {summary_line(results[key])}")
        base.close()
        for client in devices:
            client.close()
    return results


def summary_line(figure: dict[str, Any]) -> str:
    if "error" in figure:
        return f"ERROR {figure['error']}"
    value = (
        f"median {figure['median_ms']} ms, p99 {figure['p99_ms']} ms"
        if "median_ms" in figure
        else f"{figure['rate_per_s']} /s"
    )
    return f"{value}; target {figure['target']}; met={figure['met']}"


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _row(name: str, title: str, f: dict[str, Any]) -> str:
    if "error" in f:
        return f"| {name} | {title} | error: {f['error']} | | | | | no | 0 |"
    if "median_ms" in f:
        unit = f.get("unit", "ms")
        value, p99 = f"{f['median_ms']} {unit}", f"{f['p99_ms']} {unit}"
        if "overhead_ms" in f:
            value += f" (+{f['overhead_ms']} ms)"
        if "http_floor_median_ms" in f:
            value += f"; HTTP floor {f['http_floor_median_ms']} ms"
        if "rss_growth_per_subarray_mib" in f:
            value += f", +{f['rss_growth_per_subarray_mib']} MiB/subarray"
        base = f.get("baseline_median_ms")
        base = f"{base} ms" if base is not None else "-"
    else:
        value, p99 = f"{f['rate_per_s']} /s", f"lost {f.get('lost', '-')}"
        base = f.get("baseline_rate_per_s")
        base = f"{base} /s" if base is not None else "-"
    met = "yes" if f.get("main_met", f["met"]) else "**no**"
    return (
        f"| {name} | {title} | {value} | {p99} | {base} | {_cell(f.get('ratio'))} | "
        f"{f['target']} | {met} | {f['n']} |"
    )


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        "# OET benchmark results",
        "",
        f"Run {meta['when']} on {meta['machine']} ({meta['cpus']} CPUs), "
        f"mode `{meta['mode']}`, {meta['seconds']} s. Generated by `python -m benchmarks`; "
        "see docs/benchmarks.md.",
        "",
        "| figure | what | median / rate | p99 / loss | baseline | ratio | target | met | n |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in FIGURES:
        if key not in results:
            continue
        figure = results[key]
        lines.append(_row(key, TITLES[key], figure))
        for part, sub in (figure.get("parts") or {}).items():
            lines.append(_row(f"{key}.{part}", PART_TITLES.get(part, part), sub))
    lines += [
        "",
        "Ratio: figure median / baseline median (P5: p99 / idle p99; P6: rate / rate).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--smoke", action="store_true", help="tiny repetitions (< 60 s), for CI")
    parser.add_argument(
        "--only", default=",".join(FIGURES), help="comma-separated figures (default: all)"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=Path(__file__).resolve().parent, help="where to write"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="folder for py-spy profiles of the device server and gateway, one per figure",
    )
    peer = parser.add_argument_group("side by side (see benchmarks/peer.py)")
    peer.add_argument(
        "--peer",
        metavar="URL",
        help="another OET REST server's API prefix (e.g. http://127.0.0.1:5001/ska-oso-oet/oet"
        "/api/v7): measure its HTTP figures and ours alternately, instead of the figures above",
    )
    peer.add_argument(
        "--ours", metavar="URL", help="our API prefix (default: an oet-stack of its own)"
    )
    peer.add_argument(
        "--peer-api", choices=("v7", "v1"), default="v7", help="the API shapes of both sides"
    )
    peer.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 4)")
    options = parser.parse_args(argv)
    if options.peer:
        return _side_by_side(options)
    only = {name.strip() for name in options.only.split(",") if name.strip()}
    unknown = only - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures {sorted(unknown)}; choose from {FIGURES}")
    plan = Plan.smoke() if options.smoke else Plan()
    began = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {text}", file=sys.stderr, flush=True)

    results = measure(plan, only, log, options.profile)

    meta = _meta(began, "smoke" if options.smoke else "full")
    options.out_dir.mkdir(parents=True, exist_ok=True)
    (options.out_dir / "results.json").write_text(
        json.dumps({**results, "meta": meta}, indent=2) + "\n"
    )
    table = markdown(results, meta)
    (options.out_dir / "results.md").write_text(table)
    print(table)
    return 0 if all("error" not in results[k] for k in results) else 1


def _meta(began: float, mode: str) -> dict[str, Any]:
    return {
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "mode": mode,
        "seconds": round(time.monotonic() - began, 1),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3]
        if Path("/proc/loadavg").exists()
        else None,
    }


def _side_by_side(options: argparse.Namespace) -> int:
    from .peer import markdown as peer_markdown
    from .peer import side_by_side, to_json

    began = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {text}", file=sys.stderr, flush=True)

    smoke = options.smoke
    result = side_by_side(
        options.peer,
        options.ours,
        options.peer_api,
        rounds=options.rounds or (2 if smoke else 4),
        gets=20 if smoke else 200,
        procedures=2 if smoke else 6,
        load_requests=100 if smoke else 2000,
        log=log,
    )
    meta = _meta(began, "peer-smoke" if smoke else "peer")
    options.out_dir.mkdir(parents=True, exist_ok=True)
    (options.out_dir / "results-peer.json").write_text(to_json(result, meta))
    table = peer_markdown(result, meta)
    (options.out_dir / "results-peer.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
