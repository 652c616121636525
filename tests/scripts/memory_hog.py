"""Allocates far more memory than a script should (2 GiB by default)."""


def main(gib=2):
    block = bytearray(int(gib * 1024**3))
    print(len(block))
