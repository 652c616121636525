"""Subscribe to attributes through tangogql's WebSocket API, as Taranta's front end does.

Run by the tangogql virtualenv's interpreter (it needs ``websockets``, which the project's own
virtualenv does not have)::

    python tangogql_subscriber.py ws://127.0.0.1:PORT/socket tango://HOST:PORT/dev/attr ...

Speaks the ``graphql-ws`` subprotocol (connection_init, start, data frames) and prints one
JSON line per frame on stdout: ``{"type": "ready"}`` once the server acknowledged the
subscription, then ``{"type": "data", "frame": {...AttributeFrame...}}`` or
``{"type": "error", ...}``. It runs until it is terminated or the server closes.
"""

from __future__ import annotations

import asyncio
import json
import sys

import websockets

QUERY = """
subscription Attributes($fullNames: [String]!) {
  attributes(fullNames: $fullNames) {
    device
    attribute
    fullName
    value
    quality
    timestamp
    error { desc reason }
  }
}
"""


def emit(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def subscribe(url: str, names: list[str]) -> None:
    async with websockets.connect(url, subprotocols=["graphql-ws"]) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        ack = json.loads(await ws.recv())
        if ack.get("type") != "connection_ack":
            emit({"type": "error", "message": ack})
            return
        start = {"query": QUERY, "variables": {"fullNames": names}}
        await ws.send(json.dumps({"id": "1", "type": "start", "payload": start}))
        emit({"type": "ready"})
        async for raw in ws:
            message = json.loads(raw)
            if message.get("type") == "data":
                payload = message.get("payload", {})
                if payload.get("errors"):
                    emit({"type": "error", "message": payload["errors"]})
                else:
                    emit({"type": "data", "frame": payload["data"]["attributes"]})
            elif message.get("type") in ("error", "complete", "connection_error"):
                emit({"type": "error", "message": message})


if __name__ == "__main__":
    asyncio.run(subscribe(sys.argv[1], sys.argv[2:]))
