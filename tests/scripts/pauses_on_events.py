"""Publishes an event every 10 ms until stopped: every publish is a checkpoint."""

import time

from pubsub import pub


def main():
    n = 0
    while True:
        n += 1
        pub.sendMessage("user.script.announce", msg_src="pauses_on_events", msg=n)
        time.sleep(0.01)
