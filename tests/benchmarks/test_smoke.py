"""The benchmark harness runs end to end in smoke mode and writes results of the documented
shape. No timing is asserted: the figures of a smoke run on a shared CI machine mean nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ("P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "gateway", "G1", "G2", "S1", "H1", "A1")


def _check_figure(name: str, figure: dict) -> None:
    assert "error" not in figure, f"{name}: {figure.get('error')}"
    for key in ("target", "met", "n", "ratio"):
        assert key in figure, f"{name} lacks {key}"
    assert isinstance(figure["met"], bool)
    assert isinstance(figure["n"], int) and figure["n"] > 0
    if "median_ms" in figure:
        assert figure["median_ms"] > 0 and figure["p99_ms"] >= figure["median_ms"]
        assert "baseline_median_ms" in figure
    else:
        assert figure["rate_per_s"] > 0
        assert "baseline_rate_per_s" in figure
    if figure.get("baseline_median_ms") is not None:
        # ratio is rounded to 3 decimals, the medians it comes from to 3 decimals of a ms
        assert figure["ratio"] == pytest.approx(
            figure["median_ms"] / figure["baseline_median_ms"], rel=0.01, abs=0.001
        ) or name.startswith("P5")


@pytest.mark.bench_smoke
@pytest.mark.integration
@pytest.mark.timeout(300)
def test_smoke_run_writes_results(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert completed.returncode == 0, completed.stderr[-3000:] + completed.stdout[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(FIGURES) <= set(results)
    for name in FIGURES:
        _check_figure(name, results[name])
        for part, sub in (results[name].get("parts") or {}).items():
            _check_figure(f"{name}.{part}", sub)
    assert results["P1"]["baseline_median_ms"] is not None  # cold interpreter, same run
    assert results["P6"]["lost"] == 0 and results["P6"]["in_order"]  # delivery, not speed
    for burst in ("burst_1000", "burst_1000_sse"):  # the short bursts, judged end to end
        short = results["P6"]["parts"][burst]
        assert short["lost"] == 0 and short["in_order"] and short["rate_per_s"] > 0
    footprint = results["S1"]["parts"]["footprint"]
    assert footprint["processes"] >= 4 and footprint["rss_mib"] > footprint["pss_mib"] > 0
    assert "rss_growth_per_subarray_mib" in footprint
    assert results["H1"]["overhead_ms"] == pytest.approx(
        results["H1"]["median_ms"] - results["H1"]["baseline_median_ms"], abs=0.01
    )
    table = (tmp_path / "results.md").read_text()
    for name in FIGURES:
        assert f"| {name} |" in table


@pytest.mark.bench_smoke
@pytest.mark.integration
@pytest.mark.timeout(300)
def test_side_by_side_against_a_peer_writes_both_sides(tmp_path: Path) -> None:
    """``--peer``: our own gateway, started as an oet-stack of its own, stands in for the
    reference OET (not installable here); both sides measured, ratios computed."""
    import socket
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    peer = subprocess.Popen(
        [
            sys.executable, "-m", "ska_oso_oet.stack", "--data-dir", str(tmp_path / "peer"),
            "--rest-port", str(port), "--rest-host", "127.0.0.1",
            "--scripts", str(ROOT / "benchmarks" / "scripts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/ska-oso-oet/oet/api/v7"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/procedures/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert peer.poll() is None and time.monotonic() < deadline, "peer did not start"
            time.sleep(0.05)  # waiting for the peer's first 200
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks", "--smoke", "--peer", url, "--rounds", "2",
             "--out-dir", str(tmp_path / "out")],
            cwd=ROOT, capture_output=True, text=True, timeout=280,
        )  # fmt: skip
    finally:
        peer.terminate()
        peer.wait(60)
    assert completed.returncode == 0, completed.stderr[-3000:] + completed.stdout[-2000:]
    result = json.loads((tmp_path / "out" / "results-peer.json").read_text())
    assert result["peer_url"] == url and result["ours_url"] != url
    for key in ("get_list", "get_one", "get_list_4_clients", "announce_first", "too"):
        figure = result[key]
        assert figure["ours"] > 0 and figure["peer"] > 0 and figure["n"] > 0
        assert figure["ratio"] == pytest.approx(figure["ours"] / figure["peer"], rel=0.01)
    assert (
        "| PUT RUNNING -> first announce at SSE |"
        in (tmp_path / "out" / "results-peer.md").read_text()
    )
