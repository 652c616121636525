"""An SSE client of the gateway's ``/stream``, as a documented client uses it.

:class:`SseReader` reads the stream in a thread into an :class:`~benchmarks.harness.EventLog`
and resumes with ``Last-Event-ID`` when the gateway drops it as too slow. Run as a module it is
the separate client process of P6: it counts ``count`` announce messages and prints a JSON
report (arrival span, order, reconnections) on stdout::

    python -m benchmarks.sse URL COUNT
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from typing import Any

import httpx
from httpx_sse import connect_sse

from ska_oso_oet.vocabulary import FINAL_STATES

from .harness import NEW_STATE, EventLog, OetClient, script_uri

#: Silence (seconds) after which a stream that was delivering is taken to have lost the rest.
IDLE_SECONDS = 10.0
ANNOUNCE = "user.script.announce"


class SseReader:
    """Reads ``{url}/stream`` into ``log`` (raw JSON text per event) until closed."""

    def __init__(self, url: str, log: EventLog | None = None, live_on_open: bool = False):
        self.url = url
        #: True: the stream counts as live once its response has begun (a peer OET need not
        #: send the gateway's first, empty, message).
        self.live_on_open = live_on_open
        self.log = log if log is not None else EventLog()
        self.connected = threading.Event()
        self.reconnects = 0
        self.last_id: str | None = None
        self._closed = False
        self._client = httpx.Client(timeout=httpx.Timeout(10.0, read=None))
        self._thread = threading.Thread(target=self._run, name="sse-reader", daemon=True)

    def start(self, timeout: float = 30.0) -> SseReader:
        self._thread.start()
        if not self.connected.wait(timeout):
            raise RuntimeError(f"no SSE stream from {self.url}")
        return self

    def _run(self) -> None:
        while not self._closed:
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            try:
                with connect_sse(self._client, "GET", f"{self.url}/stream", headers=headers) as src:
                    if self.live_on_open:
                        src.response.raise_for_status()
                        self.connected.set()
                    for message in src.iter_sse():
                        arrival = time.perf_counter()
                        if message.id:
                            self.last_id = message.id
                        if message.data:
                            self.log.add(message.data, arrival)
                        else:
                            self.connected.set()  # the first message: the stream is live
            except (httpx.HTTPError, RuntimeError):
                if self._closed:
                    return
            if not self._closed:
                self.reconnects += 1

    def close(self) -> None:
        self._closed = True
        self._client.close()


def until_the_stream_follows(dev: OetClient, reader: SseReader, timeout: float = 120.0) -> None:
    """Run the announcing script on ``dev`` until its first message reaches ``reader``: the
    figures that time the stream's delivery (A1, P6) start once the gateway follows the device
    (docs/benchmarks.md: right after a stack started it once missed a device's first run)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, _ = dev.prepare_ready(script_uri("announce.py"))
        start, sse_start = dev.events.mark(), reader.log.mark()
        dev.start(pid, count=10)
        try:
            reader.log.wait_for(lambda d: d.get("topic") == ANNOUNCE, sse_start, 5.0, ANNOUNCE)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
        finally:
            dev.wait_state(pid, {"COMPLETE"}, start)


def count_announces(log: EventLog, count: int, timeout: float, start: int = 0) -> dict[str, Any]:
    """Wait for the ``count`` announce events from ``start`` on and describe their delivery.

    While messages flow only the statechange events are decoded (the script's final state
    arrives after all its announces), so the waiting does not slow the reception it measures;
    the announces are decoded afterwards. A long silence before the end means the rest was lost.
    """
    deadline = time.monotonic() + timeout
    try:
        first, _, _ = log.wait_for(
            lambda d: d.get("topic") == ANNOUNCE, start, timeout, hint=f'"{ANNOUNCE}"'
        )
    except TimeoutError:
        return _report([], [], [], [], count)
    end, seen = None, log.mark()
    while end is None and time.monotonic() < deadline:
        try:
            end, _, _ = log.wait_for(
                lambda d: d.get("new_state") in FINAL_STATES,
                first,
                min(IDLE_SECONDS, max(0.0, deadline - time.monotonic())),
                hint=NEW_STATE,
            )
        except TimeoutError:
            if log.mark() == seen:
                break  # silence: whatever did not arrive by now was lost
            seen = log.mark()
    arrivals: list[float] = []
    messages: list[Any] = []
    seqs: list[int] = []
    stamps: list[float] = []  # when the script sent each message (its own clock)
    for index in range(first, end if end is not None else log.mark()):
        arrival, data = log.entry(index)
        if not data or data.get("topic") != ANNOUNCE or len(messages) == count:
            continue
        arrivals.append(arrival)
        messages.append(data.get("msg"))
        seqs.append(int(data.get("seq", 0)))
        stamps.append(float(data.get("timestamp", 0.0)))
    return _report(arrivals, messages, seqs, stamps, count)


def _report(
    arrivals: list[float], messages: list[Any], seqs: list[int], stamps: list[float], count: int
) -> dict[str, Any]:
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    # From the script's first send (its wall-clock timestamp) to the last arrival (this
    # process's perf_counter, turned into wall-clock time): the burst end to end.
    wall = time.time() - time.perf_counter()
    end_to_end = arrivals[-1] + wall - stamps[0] if arrivals and stamps and stamps[0] else 0.0
    return {
        "received": len(messages),
        "lost": count - len(set(m for m in messages if isinstance(m, int))),
        "in_order": messages == list(range(len(messages)))
        and all(b > a for a, b in itertools.pairwise(seqs)),
        "first": arrivals[0] if arrivals else None,
        "last": arrivals[-1] if arrivals else None,
        "rate_per_s": (len(arrivals) - 1) / span if span > 0 else 0.0,
        "end_to_end_rate_per_s": len(arrivals) / end_to_end if end_to_end > 0 else 0.0,
        "script_rate_per_s": (len(stamps) - 1) / (stamps[-1] - stamps[0])
        if len(stamps) > 1 and stamps[-1] > stamps[0]
        else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    url, count = (argv or sys.argv[1:])[:2]
    reader = SseReader(url).start()
    print("ready", flush=True)
    report = count_announces(reader.log, int(count), timeout=120.0)
    report["reconnects"] = reader.reconnects
    report["cpu_seconds"] = round(time.process_time(), 2)
    reader.close()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
