"""``oet-stack`` brings up the gateway too: the documented quick start, driven by ``oet``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.support.oet_stack import RunningStack

from .conftest import BIN, SCRIPTS, TIMEOUT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_oet_stack_serves_the_rest_api_and_stops_it(tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "hello.py").write_text(SCRIPTS["hello.py"])
    with RunningStack(tmp_path, scripts=scripts, subarrays=2) as stack:
        url = stack.rest_urls["oso/oet/1"]
        assert stack.rest_urls["oso/oet/2"] == url.replace("/api/v1.0", "/subarray/2/api/v1.0")
        gateway = [
            p for p in psutil.Process(stack.process.pid).children(recursive=True)
            if "ska_oso_oet.rest.server" in " ".join(p.cmdline())
        ]  # fmt: skip
        assert len(gateway) == 1

        env = {**os.environ, "OET_REST_URI": url}
        run = lambda *args: subprocess.run(  # noqa: E731
            [str(BIN / "oet"), *args], capture_output=True, text=True, env=env, timeout=TIMEOUT
        )
        created = run("create", f"file://{scripts / 'hello.py'}", "--subarray_id=1")
        assert created.returncode == 0, created.stderr
        started = run("start", "--count=1")
        assert started.returncode == 0, started.stdout + started.stderr
        assert "- Script message: hello from subarray 1 #0" in started.stdout

        env["OET_REST_URI"] = stack.rest_urls["oso/oet/2"]
        created = run("create", f"file://{scripts / 'hello.py'}", "--subarray_id=2")
        assert created.returncode == 0, created.stderr
        started = run("start", "--count=1")
        assert "- Script message: hello from subarray 2 #0" in started.stdout, started.stdout
    # RunningStack checked the exit code (0) and that nothing it started is left
    assert not gateway[0].is_running() or gateway[0].status() == psutil.STATUS_ZOMBIE
