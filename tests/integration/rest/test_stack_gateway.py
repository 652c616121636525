"""``oet-stack`` brings up the gateway too: the documented quick start, driven by ``oet``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from .conftest import BIN, SCRIPTS, TIMEOUT, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_oet_stack_serves_the_rest_api_and_stops_it(tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "hello.py").write_text(SCRIPTS["hello.py"])
    stack = subprocess.Popen(
        [sys.executable, "-m", "ska_oso_oet.stack", "--data-dir", str(tmp_path / "data"),
         "--scripts", str(scripts), "--rest-port", "0", "--subarrays", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(stack.stdout.readline, "")))
    reader.start()
    try:
        wait_for(lambda: any("Ctrl-C stops the stack" in line for line in lines), TIMEOUT,
                 f"oet-stack ready: {lines}")  # fmt: skip
        urls = dict(
            re.search(r"REST API (\S+) \(fronting (\S+)\)", line).group(2, 1)
            for line in lines
            if line.startswith("REST API")
        )
        url = urls["oso/oet/1"]
        assert urls["oso/oet/2"] == url.replace("/api/v1.0", "/subarray/2/api/v1.0")
        gateway = [
            p for p in psutil.Process(stack.pid).children(recursive=True)
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

        env["OET_REST_URI"] = urls["oso/oet/2"]
        created = run("create", f"file://{scripts / 'hello.py'}", "--subarray_id=2")
        assert created.returncode == 0, created.stderr
        started = run("start", "--count=1")
        assert "- Script message: hello from subarray 2 #0" in started.stdout, started.stdout
    finally:
        os.kill(stack.pid, signal.SIGINT)
        try:
            code = stack.wait(60)
        finally:
            if stack.poll() is None:
                os.killpg(stack.pid, signal.SIGKILL)
                stack.wait()
            reader.join(10)
    assert code == 0, lines
    assert not gateway[0].is_running() or gateway[0].status() == psutil.STATUS_ZOMBIE
