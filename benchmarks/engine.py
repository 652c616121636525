"""Engine-level figures: prepare→READY through the warm pool, through a fresh fork of the fork
server, and (baseline) through a cold interpreter; stop latency. No Tango involved.

    .venv/bin/python benchmarks/engine.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ska_oso_oet.procedure.config import OetConfig
from ska_oso_oet.procedure.domain import PrepareRequest
from ska_oso_oet.procedure.launcher import WorkerLauncher
from ska_oso_oet.procedure.service import ScriptExecutionService

SCRIPT = "import tango\n\ndef init(subarray_id=1):\n    pass\n\ndef main():\n    pass\n"
LOOP = "import time\n\ndef main():\n    while True:\n        time.sleep(0.01)\n"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _figure(samples: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(samples) * 1000, 2),
        "p99_ms": round(_percentile(samples, 0.99) * 1000, 2),
        "n": len(samples),
    }


def prepare_to_ready(service: ScriptExecutionService, uri: str, settle: float) -> float:
    time.sleep(settle)  # benchmark pacing only: let the warm pool refill between samples
    start = time.perf_counter()
    pid = service.prepare(PrepareRequest.from_dict({"script": {"script_uri": uri}}))["id"]
    service.wait_for_state(pid, {"READY", "FAILED"}, 30)
    elapsed = time.perf_counter() - start
    service.stop(pid)
    service.wait_for_state(pid, {"STOPPED"}, 30)
    return elapsed


def cold_interpreter(path: Path) -> float:
    """Baseline: what prepare costs without a fork server: a new interpreter loading the script."""
    code = (
        "import importlib.util,sys;s=importlib.util.spec_from_file_location('s',sys.argv[1]);"
        "m=importlib.util.module_from_spec(s);s.loader.exec_module(m);m.init()"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    return time.perf_counter() - start


def stop_latency(service: ScriptExecutionService, uri: str) -> float:
    pid = service.prepare(PrepareRequest.from_dict({"script": {"script_uri": uri}}))["id"]
    service.wait_for_state(pid, {"READY"}, 30)
    service.start(pid)
    start = time.perf_counter()
    service.stop(pid)
    service.wait_for_state(pid, {"STOPPED"}, 30)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "tango_script.py").write_text(SCRIPT)
        (root / "loop.py").write_text(LOOP)
        uri, loop_uri = f"file://{root}/tango_script.py", f"file://{root}/loop.py"
        results = {}
        for label, warm in (("warm_pool", 2), ("fork_server", 0)):
            launcher = WorkerLauncher(warm_workers=warm)
            service = ScriptExecutionService(
                OetConfig(script_roots=(root,), warm_workers=warm), launcher=launcher
            )
            prepare_to_ready(service, uri, 0.3)  # first one pays imports in the fork server
            samples = [prepare_to_ready(service, uri, 0.05) for _ in range(options.repeat)]
            results[f"prepare_ready_{label}"] = _figure(samples)
            if warm:
                stops = [stop_latency(service, loop_uri) for _ in range(options.repeat)]
                results["stop_stopped"] = _figure(stops)
            service.shutdown()
            launcher.close()
        cold = [
            cold_interpreter(root / "tango_script.py") for _ in range(max(5, options.repeat // 3))
        ]
        results["prepare_ready_cold_interpreter_baseline"] = _figure(cold)
        base = results["prepare_ready_cold_interpreter_baseline"]["median_ms"]
        for label in ("warm_pool", "fork_server"):
            entry = results[f"prepare_ready_{label}"]
            entry["ratio_to_cold"] = round(entry["median_ms"] / base, 3)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
