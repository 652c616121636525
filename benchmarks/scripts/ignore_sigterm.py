"""P3: ignores SIGTERM, so only SIGKILL after the grace period stops it."""

import signal
import time


def main():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(0.005)
