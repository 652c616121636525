"""Runs until the file ``main(path=...)`` names exists, then announces it: a script that stays
RUNNING for exactly as long as a test needs."""

import os
import time

from pubsub import pub


def main(path):
    while not os.path.exists(path):
        time.sleep(0.02)
    pub.sendMessage("user.script.announce", msg_src="wait_for_file", msg=f"found {path}")
