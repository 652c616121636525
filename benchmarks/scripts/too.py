"""P4: the Target-of-Opportunity script, prepared ahead; main returns at once."""

import tango  # noqa: F401


def main():
    pass
