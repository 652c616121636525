"""ProcedureCopies: when the gateway's copy of one procedure's summary may be served, and
TangoDeviceClient's use of it (reads per change, not per request)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from ska_oso_oet.rest import errors
from ska_oso_oet.rest.client import TangoDeviceClient
from ska_oso_oet.rest.errors import GatewayError
from ska_oso_oet.rest.hub import EventHub, HubEvent
from ska_oso_oet.rest.listing import ProcedureCopies

from .test_rest_client import FakeProxy, dev_failed


def event(seq: int, topic: str, **payload) -> HubEvent:
    body = {"seq": seq, "topic": topic, "msg_src": "d", "timestamp": 1.0, **payload}
    return HubEvent(seq, json.dumps(body, separators=(",", ":")))


class Device:
    """A GetProcedure that counts its reads and answers the summary of the moment."""

    def __init__(self) -> None:
        self.summaries = {1: {"id": 1, "state": "RUNNING", "progress": None, "request": None}}
        self.reads = 0

    async def read(self, procedure_id: int) -> dict:
        self.reads += 1
        await asyncio.sleep(0)  # a read takes a loop turn at least
        if procedure_id not in self.summaries:
            raise GatewayError(errors.NOT_FOUND, f"no procedure {procedure_id}")
        return json.loads(json.dumps(self.summaries[procedure_id]))  # a fresh object per read


async def get(copies: ProcedureCopies, device: Device, procedure_id: int = 1) -> dict:
    return (await copies.get(procedure_id, lambda: device.read(procedure_id))).summary


CHANGES = [
    ("procedure.progress", {"done": 3, "total": 10, "message": "m", "ts": 2.0}, "progress"),
    ("procedure.request.opened", {"request": {"id": "r1", "prompt": "go?"}}, "request"),
    ("procedure.request.closed", {"request": {"id": "r1", "outcome": "answered"}}, "request"),
    ("procedure.lifecycle.statechange", {"new_state": "PAUSED"}, "state"),
    ("procedure.lifecycle.stacktrace", {"stacktrace": "boom"}, "stacktrace"),
    ("script.env", {"step": "checkout", "line": "x"}, "details"),
]


@pytest.mark.parametrize(("topic", "payload", "field"), CHANGES)
def test_a_copy_is_served_until_an_event_of_its_procedure_changes_it(topic, payload, field):
    async def scenario():
        copies, device = ProcedureCopies(), Device()
        device.summaries[2] = {"id": 2, "state": "READY"}
        first = await get(copies, device)
        await get(copies, device, 2)
        assert await get(copies, device) is first and device.reads == 2  # kept
        copies.on_events(
            [
                event(10, "user.script.announce", procedure_id=1, msg="procedure.progress"),
                event(11, "script.log", procedure_id=1, message="x"),
                event(12, "script.stdout", procedure_id=1, line="y"),
                event(13, "procedure.progress", procedure_id=2, done=1, total=2),  # another one
            ]
        )
        assert await get(copies, device) is first and device.reads == 2
        assert copies.current(2) is None  # its own progress dropped it
        await get(copies, device, 2)
        device.summaries[1][field] = payload  # what the device says once it changed
        copies.on_events([event(14, topic, procedure_id=1, **payload)])
        assert await get(copies, device) == device.summaries[1]
        assert device.reads == 4
        assert await get(copies, device) == device.summaries[1] and device.reads == 4

    asyncio.run(scenario())


def test_a_read_overtaken_by_a_change_is_served_to_its_callers_but_not_kept():
    async def scenario():
        copies, device = ProcedureCopies(), Device()
        release = asyncio.Event()

        async def slow_read():
            device.reads += 1
            await release.wait()
            return {"id": 1, "progress": None}

        waiting = asyncio.create_task(copies.get(1, slow_read))
        await asyncio.sleep(0)
        copies.on_events([event(1, "procedure.progress", procedure_id=1, done=1)])
        # asked after the event: a read of its own, not the one from before the change
        after = asyncio.create_task(copies.get(1, lambda: device.read(1)))
        await asyncio.sleep(0)
        release.set()
        before = await waiting
        assert before.summary == {"id": 1, "progress": None} and before.bodies is None
        assert (await after).summary["state"] == "RUNNING"
        assert copies.current(1).summary["state"] == "RUNNING"  # the later read is kept
        assert device.reads == 2

    asyncio.run(scenario())


def test_concurrent_gets_share_one_read_and_a_caller_that_leaves_cancels_nothing():
    async def scenario():
        copies, device = ProcedureCopies(), Device()
        release = asyncio.Event()

        async def read():
            device.reads += 1
            await release.wait()
            return {"id": 1}

        tasks = [asyncio.create_task(copies.get(1, read)) for _ in range(5)]
        await asyncio.sleep(0)
        tasks[0].cancel()  # e.g. its HTTP client went away
        await asyncio.sleep(0)
        release.set()
        results = await asyncio.gather(*tasks[1:])
        assert device.reads == 1
        assert all(r is results[0] for r in results) and results[0].bodies == {}
        assert tasks[0].cancelled()

    asyncio.run(scenario())


def test_unknown_ids_and_errors_are_not_kept():
    async def scenario():
        copies, device = ProcedureCopies(), Device()
        for _ in range(2):
            with pytest.raises(GatewayError) as caught:
                await get(copies, device, 9)
            assert caught.value.code == errors.NOT_FOUND
        assert device.reads == 2 and len(copies) == 0

    asyncio.run(scenario())


def test_a_copy_older_than_max_age_is_read_again():
    async def scenario():
        now = [0.0]
        copies, device = ProcedureCopies(max_age=2.0, clock=lambda: now[0]), Device()
        await get(copies, device)
        now[0] = 1.9
        await get(copies, device)
        assert device.reads == 1
        now[0] = 2.1
        await get(copies, device)
        assert device.reads == 2

    asyncio.run(scenario())


def test_lost_events_a_procedures_end_and_drop_all_forget_every_copy():
    async def scenario():
        copies, device = ProcedureCopies(), Device()
        device.summaries[2] = {"id": 2, "state": "COMPLETE"}

        async def both():
            await get(copies, device, 1)
            await get(copies, device, 2)
            return len(copies)

        assert await both() == 2
        copies.on_events([event(5, "script.log", procedure_id=1)])
        copies.on_events([event(7, "script.log", procedure_id=1)])  # 6 never arrived
        assert len(copies) == 0
        assert await both() == 2
        # another procedure's end: the device may have dropped 2 from its history
        copies.on_events([event(8, "procedure.lifecycle.statechange", procedure_id=3,
                                new_state="STOPPED")])  # fmt: skip
        assert len(copies) == 0
        assert await both() == 2
        copies.drop_all()
        assert len(copies) == 0

    asyncio.run(scenario())


def test_the_number_of_copies_is_bounded():
    async def scenario():
        copies, device = ProcedureCopies(max_kept=3), Device()
        for pid in range(1, 6):
            device.summaries[pid] = {"id": pid}
            await get(copies, device, pid)
        assert len(copies) == 3 and copies.current(1) is None and copies.current(5) is not None

    asyncio.run(scenario())


# -- through TangoDeviceClient -----------------------------------------------------------------
def client_scenario(proxy: FakeProxy, body):
    async def scenario():
        hub = EventHub()
        client = TangoDeviceClient("oso/oet/1", hub)
        hub.bind(asyncio.get_running_loop())
        client._loop = asyncio.get_running_loop()
        client._proxy = proxy
        try:
            return await body(client, hub)
        finally:
            await client.close()

    return asyncio.run(scenario())


def reads(proxy: FakeProxy) -> int:
    return sum(1 for call in proxy.calls if call[0] == "GetProcedure")


def test_the_client_reads_a_procedure_once_per_change_and_after_each_write():
    summary = {"id": 3, "state": "RUNNING", "progress": None, "request": None}
    proxy = FakeProxy(
        {
            "GetProcedure": lambda _: json.dumps(summary),
            "Pause": [[2], ["1.0_4_Pause"]],
            "Answer": json.dumps({"id": "r", "outcome": "answered"}),
        }
    )

    async def body(client, hub):
        for _ in range(3):
            assert await client.get_procedure(3) == summary
        assert reads(proxy) == 1
        summary["progress"] = {"done": 1, "total": 2, "message": None, "ts": 1.0}
        hub.publish_raw(event(1, "procedure.progress", procedure_id=3).raw)
        assert (await client.get_procedure(3))["progress"]["done"] == 1
        assert reads(proxy) == 2
        await client.pause_procedure(3, False)  # a write: read again
        await client.get_procedure(3)
        assert reads(proxy) == 3
        await client.answer_request(3, "r", "yes")  # its audit entry has no event
        await client.get_procedure(3)
        assert reads(proxy) == 4
        await client.get_procedure(3)
        assert reads(proxy) == 4

    client_scenario(proxy, body)


def test_error_events_and_failed_calls_make_the_client_read_again():
    summary = {"id": 3, "state": "RUNNING"}
    failing = [False]

    def get_procedure(_):
        if failing[0]:
            raise dev_failed("API_CantConnectToDevice")
        return json.dumps(summary)

    proxy = FakeProxy({"GetProcedure": get_procedure})

    async def body(client, hub):
        await client.get_procedure(3)
        for error_event in (client._on_event, client._on_procedures):
            error_event(SimpleNamespace(err=True, errors=["API_EventTimeout"], attr_value=None))
            await asyncio.sleep(0.05)  # the callbacks reach the loop
            assert client.cached_procedure(3) is None
            await client.get_procedure(3)
            assert client.cached_procedure(3) is not None
        assert reads(proxy) == 3
        # a device that stops answering: a failed call elsewhere drops the copy, and GETs fail
        failing[0] = True
        with pytest.raises(GatewayError) as caught:
            await client.get_procedure(4)
        assert caught.value.code == errors.DEVICE_UNREACHABLE
        assert client.cached_procedure(3) is None
        with pytest.raises(GatewayError) as caught:
            await client.get_procedure(3)
        assert caught.value.code == errors.DEVICE_UNREACHABLE

    client_scenario(proxy, body)
