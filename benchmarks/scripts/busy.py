"""P5: a busy script: spins on the CPU and announces progress ten times a second."""

import time

from pubsub import pub


def main():
    next_announce = time.monotonic()
    count = 0
    while True:
        now = time.monotonic()
        if now >= next_announce:
            count += 1
            pub.sendMessage("user.script.announce", msg_src="busy", msg=count)
            next_announce = now + 0.1
