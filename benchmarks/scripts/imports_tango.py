"""P1: a typical observing script: its top level imports tango; init records the subarray."""

import tango  # noqa: F401

subarray = None


def init(subarray_id=1):
    global subarray
    subarray = subarray_id


def main():
    pass
