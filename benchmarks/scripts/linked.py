"""L1: a member of a linked group; raises once ``fail_when`` exists, else loops until stopped
(SIGTERM ends it: Python's default action)."""

import os
import time


def main(fail_when=None):
    while True:
        if fail_when and os.path.exists(fail_when):
            raise RuntimeError("linked member failed on purpose")
        time.sleep(0.002)
