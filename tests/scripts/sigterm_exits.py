"""Calls sys.exit() from its SIGTERM handler."""

import os
import signal
import sys
import time

from pubsub import pub


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit())
    pub.sendMessage(
        "user.script.announce", msg_src="sigterm_exits", msg={"worker": os.getpid(), "pids": []}
    )
    while True:
        time.sleep(0.01)
