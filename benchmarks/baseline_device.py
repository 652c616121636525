"""A minimal Tango device: the floor the OET figures are compared with.

It does nothing but what Tango itself must do, so the difference between an OET figure and this
device's figure is what OET adds:

* ``Noop()``: a bare command round trip;
* ``Ping()``: a command that pushes one change event of ``value`` from the command itself (the
  floor of "command -> change event seen by a client");
* ``Burst(n)``: pushes ``n`` change events of ``value`` as fast as Tango allows, from a thread of
  its own, each an event JSON of the size OET's ``lastEvent`` carries (the floor of P6);
* ``BurstLikeOet(n)``: the same with OET's publication pattern per announce: change and archive
  events of ``value`` (lastEvent) and of ``message`` (scriptMessage), to tell Tango's cost of that
  pattern from the rest of OET's.

Run by the harness as ``python benchmarks/baseline_device.py <instance>`` against the stack's
Tango database (``TANGO_HOST`` set), registered as class ``BenchBaseline``.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import tango
from tango.server import Device, attribute, command

CLASS_NAME = "BenchBaseline"


def event_text(seq: int) -> str:
    """A payload of the size and shape of an OET ``user.script.announce`` event."""
    return json.dumps(
        {
            "topic": "user.script.announce",
            "msg_src": "announce",
            "timestamp": time.time(),
            "seq": seq,
            "procedure_id": 1,
            "msg": seq,
        }
    )


class BenchBaseline(Device):
    """Pushes change events on request; nothing else."""

    def init_device(self) -> None:
        super().init_device()
        self._value = ""
        self._seq = 0
        self._lock = threading.Lock()
        self._message = ""
        self.set_change_event("value", True, False)
        self.set_archive_event("value", True, False)
        self.set_change_event("message", True, False)
        self.set_archive_event("message", True, False)
        self.set_state(tango.DevState.ON)

    @attribute(dtype=str)
    def value(self) -> str:
        return self._value

    @attribute(dtype=str)
    def message(self) -> str:
        return self._message

    @command
    def Noop(self) -> None:
        """Nothing: the bare round trip."""

    @command(dtype_out=int)
    def Ping(self) -> int:
        """Push one change event of ``value`` and return its number."""
        with self._lock:
            self._seq += 1
            self._value = event_text(self._seq)
            self.push_change_event("value", self._value)
            return self._seq

    @command(dtype_in=int)
    def Burst(self, count: int) -> None:
        """Push ``count`` change events from a thread of their own, as fast as possible."""
        threading.Thread(target=self._burst, args=(count,), daemon=True).start()

    @command(dtype_in=int)
    def BurstLikeOet(self, count: int) -> None:
        """``Burst`` with OET's four pushes per announce."""
        threading.Thread(target=self._burst, args=(count, True), daemon=True).start()

    def _burst(self, count: int, like_oet: bool = False) -> None:
        with tango.EnsureOmniThread():
            for _ in range(count):
                with self._lock:
                    self._seq += 1
                    self._value = event_text(self._seq)
                    self.push_change_event("value", self._value)
                    if like_oet:
                        self.push_archive_event("value", self._value)
                        self._message = str(self._seq)
                        self.push_change_event("message", self._message)
                        self.push_archive_event("message", self._message)


def main() -> None:
    tango.server.run((BenchBaseline,), args=[CLASS_NAME, *sys.argv[1:]])


if __name__ == "__main__":
    main()
