"""Ignores SIGTERM: only SIGKILL after the grace period can stop it."""

import signal
import time

from pubsub import pub


def main():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pub.sendMessage("user.script.announce", msg_src="ignore_sigterm", msg="ignoring SIGTERM")
    while True:
        time.sleep(0.01)
