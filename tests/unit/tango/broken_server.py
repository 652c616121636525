"""A device server whose engine cannot start: for the FAULT/healthState tests.

Run as a script: ``python broken_server.py <instance> -file=... -ORBendPoint ...``.
"""

from __future__ import annotations

import sys

import tango.server

from ska_oso_oet.procedure.errors import EngineUnavailable
from ska_oso_oet.tango.device import OETDevice


class BrokenOETDevice(OETDevice):
    """OETDevice whose script engine fails to start."""

    def create_service(self):  # type: ignore[override]
        raise EngineUnavailable("worker processes cannot be started (test)")


if __name__ == "__main__":
    tango.server.run((BrokenOETDevice,), args=["BrokenOETDevice", *sys.argv[1:]])
