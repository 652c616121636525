"""``OETGroupsServer <instance> [tango options]``: the OETGroups device in a process of its own.

``OETDeviceServer`` hosts OETGroups too (register the groups device in one of its instances);
this entry point runs it without the script engine's worker launcher, for a deployment that
gives the groups device its own process, so that it outlives any OET device server it watches.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import tango.server

from .groups import OETGroups
from .logs import configure_process_logging

SERVER_NAME = "OETGroupsServer"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until it is told to stop."""
    configure_process_logging(stream=sys.stderr)
    args = [SERVER_NAME, *(sys.argv[1:] if argv is None else argv)]
    tango.server.run((OETGroups,), args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
