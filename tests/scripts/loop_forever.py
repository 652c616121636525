"""Loops until stopped, announcing that it has started."""

import time

from pubsub import pub


def main():
    pub.sendMessage("user.script.announce", msg_src="loop_forever", msg="looping")
    while True:
        time.sleep(0.01)
