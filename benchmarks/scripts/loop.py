"""P3/P4: loops until stopped; SIGTERM ends it (Python's default action)."""

import time


def main():
    while True:
        time.sleep(0.005)
