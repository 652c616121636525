"""One line far past any sensible length, then a line written one character at a time."""

import sys


def main(length=40_000_000, chars=200_000):
    sys.stdout.write("L" * length + "\n")
    for _ in range(chars):
        sys.stdout.write("c")
    sys.stdout.write("\n")
    print("short")
