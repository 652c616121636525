"""Figures G1 and G2: environments and git scripts, offline, on local repositories.

G1 builds the environment of a repository with a handful of local dependencies (wheels made on
the fly, named by file:// URLs, installed with ``--no-index``) with ``uv`` and with
``virtualenv`` + ``pip`` side by side in the same run, each in a fresh cache (first build), and
reuses it; the figure is uv's first build, its baseline pip's, so ``ratio`` is uv / pip.

G2 is ``Prepare`` -> READY, through the Tango device, of a ``git://`` script with
``create_env`` whose checkout and environment are already cached (the branch is resolved with
one ``git ls-remote``; nothing is fetched or built). Like P1 the script imports ``tango`` at its
top level; the baseline is the same cold interpreter loading the same script, since a script
with its own environment runs in a fresh interpreter of that environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.gitrepos import build_wheel, make_repo

from ska_oso_oet.procedure.dependencies import read_dependency_spec
from ska_oso_oet.procedure.environments import EnvironmentCache, find_uv

from .harness import OetClient
from .stats import combine, latency, ms
from .tango_figures import Plan

#: Local dependencies of the G1/G2 repository.
DEPENDENCIES = ("oetbench_a", "oetbench_b", "oetbench_c", "oetbench_d", "oetbench_e")
#: Imports tango and the project's own package when loaded (the dependencies only when run,
#: so the same script also prepares in the OET's environment for G2's part).
SCRIPT = (
    "import tango\n\nimport benchproj\n\n\ndef init(subarray_id=1):\n    pass\n\n\n"
    "def main():\n    import oetbench_a\n\n    print(benchproj.CODE, oetbench_a.VERSION)\n"
)


def bench_repository(root: Path) -> tuple[Path, str]:
    """A PEP 621 src-layout repository depending on five local wheels: (path, file:// URL)."""
    wheels = root / "wheels"
    deps = [build_wheel(wheels, name, "1.0").as_uri() for name in DEPENDENCIES]
    pyproject = (
        '[project]\nname = "benchproj"\nversion = "0.1"\ndependencies = [\n'
        + "".join(f'    "{name} @ {url}",\n' for name, url in zip(DEPENDENCIES, deps, strict=True))
        + "]\n"
    )
    repo = make_repo(root / "repos" / "benchproj")
    repo.commit(
        {
            "pyproject.toml": pyproject,
            "src/benchproj/__init__.py": 'CODE = "bench"\n',
            "scripts/observe.py": SCRIPT,
        },
        "bench project",
    )
    return repo.path, repo.url


def g1_environment_builds(plan: Plan) -> dict[str, Any]:
    """First build (fresh cache) and reuse, uv and pip side by side."""
    builds = 3 if plan.n >= 10 else 1
    reuses = max(plan.n, 3)
    if find_uv() is None:
        raise RuntimeError("uv is not available: install the uv package")
    with tempfile.TemporaryDirectory(prefix="oet-bench-env-") as tmp:
        path, _url = bench_repository(Path(tmp))
        spec = read_dependency_spec(path)
        first: dict[str, list[float]] = {"uv": [], "pip": []}
        reuse: dict[str, list[float]] = {"uv": [], "pip": []}
        for round_ in range(builds):
            for installer in ("uv", "pip"):  # interleaved: both see the same machine load
                root = Path(tmp) / f"envs-{installer}-{round_}"
                cache = EnvironmentCache(root, pip_options=("--no-index",), installer=installer)
                cache.key_for(spec)  # the interpreter probe is not part of a build
                began = time.perf_counter()
                with cache.acquire(spec) as lease:
                    first[installer].append(time.perf_counter() - began)
                    assert lease.built
                for _ in range(reuses if round_ == 0 else 0):
                    began = time.perf_counter()
                    with cache.acquire(spec) as again:
                        reuse[installer].append(time.perf_counter() - began)
                        assert not again.built
                shutil.rmtree(root, ignore_errors=True)
    main = latency(
        first["uv"],
        baseline=first["pip"],
        target_ms=None,
        target="uv first build <= 0.5 x pip's (ratio <= 0.5)",
        baseline_kind="virtualenv + pip first build of the same dependencies",
        dependencies=len(DEPENDENCIES),
    )
    main["met"] = main["ratio"] is not None and main["ratio"] <= 0.5
    parts = {
        "reuse_uv": latency(
            reuse["uv"],
            baseline=first["uv"],
            target_ms=50,
            target="median <= 50 ms",
            baseline_kind="uv first build",
        ),
        "reuse_pip": latency(
            reuse["pip"],
            baseline=first["pip"],
            target_ms=50,
            target="median <= 50 ms",
            baseline_kind="pip first build",
        ),
    }
    return combine(main, parts)


def cold_script(python: Path, script: Path, code: Path) -> float:
    """Baseline: a new interpreter of the environment loading the script (with the project's
    code on its path, as the engine puts it) and calling ``init``."""
    program = (
        "import importlib.util,sys;s=importlib.util.spec_from_file_location('s',sys.argv[1]);"
        "m=importlib.util.module_from_spec(s);s.loader.exec_module(m);m.init()"
    )
    env = {**os.environ, "PYTHONPATH": str(code)}
    start = time.perf_counter()
    subprocess.run([str(python), "-c", program, str(script)], check=True, env=env)
    return time.perf_counter() - start


def git_body(url: str, create_env: bool) -> dict[str, Any]:
    return {
        "script": {
            "script_type": "git",
            "script_uri": "git://scripts/observe.py",
            "git_args": {"git_repo": url, "git_branch": "main"},
            "create_env": create_env,
        },
        "script_args": {"init": {"args": [], "kwargs": {"subarray_id": 1}}},
    }


def prepare_git_ready(dev: OetClient, body: dict[str, Any]) -> tuple[int, float]:
    """``Prepare`` a git script and wait for READY: (procedure id, seconds)."""
    start = dev.events.mark()
    sent = time.perf_counter()
    (_,), (command_id,) = dev.proxy.Prepare(json.dumps(body))
    pid = dev.procedure_of(command_id, start)
    arrival, _ = dev.wait_state(pid, "READY", start, timeout=600)
    return pid, arrival - sent


def g2_cached_git_prepare(dev: OetClient, repos: Path, plan: Plan) -> dict[str, Any]:
    """Prepare -> READY of a git script whose checkout and environment are cached."""
    path, url = bench_repository(repos)
    with_env, without_env = git_body(url, True), git_body(url, False)
    pid, first = prepare_git_ready(dev, with_env)  # untimed: clones and builds
    dev.stop_and_wait(pid)
    samples, plain = [], []
    for _ in range(plan.n):
        time.sleep(plan.pace)
        pid, elapsed = prepare_git_ready(dev, with_env)
        samples.append(elapsed)
        dev.stop_and_wait(pid)
        time.sleep(plan.pace)
        pid, elapsed = prepare_git_ready(dev, without_env)
        plain.append(elapsed)
        dev.stop_and_wait(pid)
    with tempfile.TemporaryDirectory(prefix="oet-bench-cold-") as tmp:
        cache = EnvironmentCache(Path(tmp), pip_options=("--no-index",))
        with cache.acquire(read_dependency_spec(path)) as lease:
            script = path / "scripts" / "observe.py"
            cold = [cold_script(lease.python, script, path / "src") for _ in range(plan.cold)]
    main = latency(
        samples,
        baseline=cold,
        target_ms=None,
        target="median <= 1.5 x cold interpreter (ratio <= 1.5)",
        baseline_kind="cold interpreter loading the same script",
        first_prepare_ms=ms(first),
    )
    main["met"] = main["ratio"] is not None and main["ratio"] <= 1.5
    part = latency(
        plain,
        baseline=cold,
        target_ms=50,
        target="median <= 50 ms (warm pool, cached checkout)",
        baseline_kind="cold interpreter loading the same script",
    )
    return combine(main, {"without_env": part})
