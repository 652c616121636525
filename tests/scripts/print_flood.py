"""Prints as fast as it can: count lines, each numbered."""

import sys


def main(count=100_000):
    for i in range(count):
        print(f"line {i} " + "x" * 100)
    sys.stdout.flush()
