"""Starts a long-lived grandchild process (which ignores SIGTERM) and loops."""

import subprocess
import sys
import time

from pubsub import pub


def main():
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
        ]
    )
    pub.sendMessage(
        "user.script.announce", msg_src="spawn_grandchild", msg={"grandchild_pid": child.pid}
    )
    while True:
        time.sleep(0.01)
