"""Side by side: the HTTP figures of our gateway and of any other OET REST server (a *peer*,
e.g. a reference OET v7.0.0 on this machine), measured alternately, round by round.

    python -m benchmarks --peer http://127.0.0.1:5001/ska-oso-oet/oet/api/v7
    python -m benchmarks --peer URL --ours URL      # both already running

Without ``--ours`` our side is an ``oet-stack --subarrays 1`` of its own (spawned as S1 does),
through the same API as the peer: the v7 prefix for a v7 peer (``/ska-oso-oet/oet/api/v7``),
``/api/v1.0`` for a v1.0 one (``--peer-api``). Only HTTP is used, so any OET that serves those
shapes can be measured:

* ``get_list`` / ``get_one``: ``GET /procedures/`` and ``GET /procedures/{id}``, one client
  (latency) and four clients (requests per second), over a history of three procedures;
* ``announce``: ``PUT`` ``RUNNING`` of a prepared ``announce.py`` (10 messages) -> its first
  announce at an SSE client of ``/stream``, and -> the ``RUNNING`` statechange there (the
  clock starts when the PUT is sent: a peer's events need not carry the script's send time);
* ``too``: a running ``loop.py`` stopped (``PUT STOPPED``) and a prepared ``too.py`` started
  (``PUT RUNNING``) -> the new one's ``RUNNING`` statechange at the SSE client.

The scripts are ``file://`` paths of ``benchmarks/scripts``: the peer must be on this machine and
allow them. Each round measures our side and then the peer (the order alternates every round),
so that a change of load hits both alike; the report gives each side's median over the rounds
and the ratio ours / peer (below 1: we are faster; for rates above 1 is better).
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import httpx

from .harness import script_uri
from .sse import ANNOUNCE, SseReader
from .stats import ms

STATECHANGE = "procedure.lifecycle.statechange"
READY_TIMEOUT = 60.0


class RestOet:
    """An OET REST API at ``url`` (v7 shapes: slashed collections, unwrapped bodies; or v1.0)."""

    def __init__(self, url: str, api: str = "v7"):
        self.url = url.rstrip("/")
        self.api = api
        self.client = httpx.Client(timeout=30.0)
        self.reader = SseReader(self.url, live_on_open=True).start()

    def close(self) -> None:
        self.reader.close()
        self.client.close()

    def collection(self) -> str:
        return f"{self.url}/procedures/" if self.api == "v7" else f"{self.url}/procedures"

    def _unwrap(self, body: Any) -> Any:
        return body["procedure"] if self.api != "v7" and "procedure" in body else body

    def create(self, script: str, **init: Any) -> int:
        body = {
            "script": {"script_type": "filesystem", "script_uri": script_uri(script)},
            "script_args": {"init": {"args": [], "kwargs": init}},
        }
        response = self.client.post(self.collection(), json=body)
        response.raise_for_status()
        return int(self._unwrap(response.json())["id"])

    def state(self, pid: int) -> str:
        response = self.client.get(f"{self.url}/procedures/{pid}")
        response.raise_for_status()
        return str(self._unwrap(response.json())["state"])

    def wait_state(self, pid: int, states: set[str], timeout: float = READY_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while (state := self.state(pid)) not in states:
            if time.monotonic() > deadline:
                raise RuntimeError(f"procedure {pid} at {self.url} stayed {state}")
            time.sleep(0.01)  # polling the peer's API: it may offer nothing else to wait on
        return state

    def prepared(self, script: str, **init: Any) -> int:
        pid = self.create(script, **init)
        self.wait_state(pid, {"READY"})
        return pid

    def put(self, pid: int, body: dict[str, Any]) -> None:
        response = self.client.put(f"{self.url}/procedures/{pid}", json=body)
        response.raise_for_status()

    def run(self, pid: int, **kwargs: Any) -> None:
        self.put(pid, {"state": "RUNNING", "script_args": {"main": {"args": [], "kwargs": kwargs}}})

    def stop(self, pid: int) -> None:
        self.put(pid, {"state": "STOPPED", "abort": False})


def _running(data: dict[str, Any]) -> bool:
    return data.get("topic") == STATECHANGE and "RUNNING" in str(data.get("new_state"))


def _first_announce(data: dict[str, Any]) -> bool:
    return data.get("topic") == ANNOUNCE and data.get("msg") == 0


def _gets(client: httpx.Client, url: str, count: int) -> list[float]:
    client.get(url).raise_for_status()
    samples = []
    for _ in range(count):
        sent = time.perf_counter()
        client.get(url).raise_for_status()
        samples.append(time.perf_counter() - sent)
    return samples


def measure_side(oet: RestOet, gets: int, procedures: int, load_requests: int) -> dict[str, Any]:
    """One round of every figure on one side."""
    from .stack_figures import _load  # the 4-client load of H1

    history = [oet.prepared("noop.py") for _ in range(3)]
    one_url = f"{oet.url}/procedures/{history[-1]}"
    result: dict[str, Any] = {
        "get_list": _gets(oet.client, oet.collection(), gets),
        "get_one": _gets(oet.client, one_url, gets),
        "get_list_4_clients": [_load(oet.collection(), load_requests, 4)],
        "announce_first": [],
        "announce_running": [],
        "too": [],
    }
    log = oet.reader.log
    for _ in range(procedures):
        pid = oet.prepared("announce.py")
        mark = log.mark()
        sent = time.perf_counter()
        oet.run(pid, count=10)
        _, running, _ = log.wait_for(_running, mark, READY_TIMEOUT, hint="RUNNING")
        _, first, _ = log.wait_for(_first_announce, mark, READY_TIMEOUT, hint=ANNOUNCE)
        result["announce_running"].append(running - sent)
        result["announce_first"].append(first - sent)
        oet.wait_state(pid, {"COMPLETE"})
    for _ in range(max(1, procedures // 2)):
        running_pid = oet.prepared("loop.py")
        too = oet.prepared("too.py")
        before = log.mark()
        oet.run(running_pid)
        log.wait_for(_running, before, READY_TIMEOUT, hint="RUNNING")  # its RUNNING is out
        mark = log.mark()
        sent = time.perf_counter()
        oet.stop(running_pid)
        oet.run(too)
        _, seen, _ = log.wait_for(_running, mark, READY_TIMEOUT, hint="RUNNING")
        result["too"].append(seen - sent)
        oet.wait_state(too, {"COMPLETE"})
    return result


FIGURES = {
    "get_list": ("GET /procedures/, 1 client", "ms"),
    "get_one": ("GET /procedures/{id}, 1 client", "ms"),
    "get_list_4_clients": ("GET /procedures/, 4 clients", "req/s"),
    "announce_running": ("PUT RUNNING -> RUNNING at SSE", "ms"),
    "announce_first": ("PUT RUNNING -> first announce at SSE", "ms"),
    "too": ("PUT STOPPED + PUT RUNNING (TOO) -> RUNNING at SSE", "ms"),
}


def side_by_side(
    peer_url: str,
    ours_url: str | None,
    api: str,
    rounds: int,
    gets: int,
    procedures: int,
    load_requests: int,
    log: Any,
) -> dict[str, Any]:
    """Measure both sides ``rounds`` times, alternating; medians and ratios."""
    from .stack_figures import SpawnedStack

    spawned = None
    if ours_url is None:
        spawned = SpawnedStack(1)
        spawned.start()
        origin = spawned.url.rsplit("/api/", 1)[0]
        ours_url = f"{origin}/ska-oso-oet/oet/api/v7" if api == "v7" else spawned.url
    sides = {"ours": RestOet(ours_url, api), "peer": RestOet(peer_url, api)}
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in sides}
    try:
        for round_ in range(rounds):
            order = ("ours", "peer") if round_ % 2 == 0 else ("peer", "ours")
            for name in order:
                log(f"peer round {round_ + 1}/{rounds}: {name} ({sides[name].url}) ...")
                measured = measure_side(sides[name], gets, procedures, load_requests)
                for key, values in measured.items():
                    samples[name].setdefault(key, []).extend(values)
    finally:
        for side in sides.values():
            side.close()
        if spawned is not None:
            spawned.stop()
    figures: dict[str, Any] = {}
    for key, (title, unit) in FIGURES.items():
        ours, peer = samples["ours"][key], samples["peer"][key]
        if unit == "ms":
            ours_value, peer_value = ms(statistics.median(ours)), ms(statistics.median(peer))
        else:
            ours_value, peer_value = (
                round(statistics.median(ours), 1),
                round(statistics.median(peer), 1),
            )
        figures[key] = {
            "title": title,
            "unit": unit,
            "ours": ours_value,
            "peer": peer_value,
            "ratio": round(ours_value / peer_value, 3) if peer_value else None,
            "n": min(len(ours), len(peer)),
        }
    return {"ours_url": ours_url, "peer_url": peer_url, "api": api, "rounds": rounds, **figures}


def markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        "# OET side by side",
        "",
        f"Ours: {result['ours_url']}; peer: {result['peer_url']} ({result['api']} API); "
        f"{result['rounds']} alternating rounds, {meta['when']}, load {meta.get('loadavg')}.",
        "",
        "| figure | ours | peer | ours / peer | n |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, (title, unit) in FIGURES.items():
        f = result[key]
        lines.append(
            f"| {title} | {f['ours']} {unit} | {f['peer']} {unit} | {f['ratio']} | {f['n']} |"
        )
    lines += [
        "",
        "Latencies: below 1 means ours is faster; requests per second: above 1 means ours "
        "serves more.",
        "",
    ]
    return "\n".join(lines)


def to_json(result: dict[str, Any], meta: dict[str, Any]) -> str:
    return json.dumps({**result, "meta": meta}, indent=2) + "\n"
