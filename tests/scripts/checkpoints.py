"""Counts checkpoints every ``interval`` seconds until stopped (or ``count`` of them), reporting
progress; prints the count each time it gets past a checkpoint."""

import time

from ska_oso_oet.script import checkpoint, progress


def main(interval=0.01, count=None, report_every=1):
    n = 0
    while count is None or n < count:
        checkpoint()
        n += 1
        if n % report_every == 0:
            print(f"passed {n}", flush=True)
        if count is not None:
            progress(n, count, f"step {n}")
        time.sleep(interval)
