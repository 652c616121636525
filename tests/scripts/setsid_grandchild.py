"""Starts a grandchild in a session of its own (escaping the process group) that ignores
SIGTERM, announces its pid and loops."""

import os
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
        ],
        start_new_session=True,
    )
    pub.sendMessage(
        "user.script.announce", msg_src="setsid", msg={"worker": os.getpid(), "pids": [child.pid]}
    )
    while True:
        time.sleep(0.01)
