"""A typical observing script's top level: imports tango (preloaded by the fork server)."""

import tango  # noqa: F401


def main():
    pass
