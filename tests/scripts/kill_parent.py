"""Kills its parent (the worker fork server) with SIGKILL, announces it, then runs until
stopped."""

import os
import signal
import time

from pubsub import pub


def main():
    parent = os.getppid()
    os.kill(parent, signal.SIGKILL)
    pub.sendMessage("user.script.announce", msg_src="kill_parent", msg={"killed": parent})
    while True:
        time.sleep(0.01)
