"""P5: a busy script: spins on the CPU and announces progress ten times a second.

``OET_BENCH_SCRIPT_NICE=N`` (inherited from the stack's environment) makes it lower its own
priority first: the experiment behind the proposal that workers run niced (docs/benchmarks.md).
"""

import os
import time

from pubsub import pub


def main():
    nice = int(os.environ.get("OET_BENCH_SCRIPT_NICE", "0"))
    if nice:
        os.nice(nice)
    next_announce = time.monotonic()
    count = 0
    while True:
        now = time.monotonic()
        if now >= next_announce:
            count += 1
            pub.sendMessage("user.script.announce", msg_src="busy", msg=count)
            next_announce = now + 0.1
