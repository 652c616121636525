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
            "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.pause()",
        ]
    )
    pub.sendMessage(
        "user.script.announce", msg_src="spawn_grandchild", msg={"grandchild_pid": child.pid}
    )
    while True:
        time.sleep(0.01)
