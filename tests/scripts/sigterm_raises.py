"""Turns SIGTERM into an exception for its clean-up, the way many programs do."""

import os
import signal
import time

from pubsub import pub


class Terminated(Exception):
    pass


def _raise(signum, frame):
    raise Terminated(f"signal {signum}")


def main():
    signal.signal(signal.SIGTERM, _raise)
    try:  # the announce inside: SIGTERM may come as soon as it is sent
        pub.sendMessage(
            "user.script.announce",
            msg_src="sigterm_raises",
            msg={"worker": os.getpid(), "pids": []},
        )
        while True:
            time.sleep(0.01)
    finally:
        print("cleaned up")
