"""ProcedureListing: when the gateway's copy of a device's procedure list may be served."""

from __future__ import annotations

import asyncio
import json

import pytest

from ska_oso_oet.rest.hub import HubEvent
from ska_oso_oet.rest.listing import ProcedureListing


def listing_of(*ids: int, clock=None) -> ProcedureListing:
    listing = ProcedureListing(**({"clock": clock} if clock else {}))
    listing.on_value(value(*ids))
    return listing


def value(*ids: int, state: str = "READY") -> str:
    return json.dumps([{"id": i, "state": state} for i in ids])


def event(seq: int, topic: str, **payload) -> HubEvent:
    raw = json.dumps({"seq": seq, "topic": topic, **payload}, separators=(",", ":"))
    return HubEvent(seq, raw)


def test_a_value_is_served_until_an_event_says_it_changed():
    listing = listing_of(1, 2)
    snapshot = listing.current()
    assert [s["id"] for s in snapshot.summaries] == [1, 2]
    listing.on_events([event(1, "user.script.announce", msg="procedure.lifecycle.x")])
    assert listing.current() == snapshot  # an announce changes no summary
    listing.on_events([event(2, "procedure.lifecycle.statechange", new_state="RUNNING")])
    assert listing.current() is None and listing.pending
    listing.on_value(value(1, 2, state="RUNNING"))
    assert listing.current().version > snapshot.version
    assert listing.current().summaries[0]["state"] == "RUNNING"


def test_other_lifecycle_events_and_writes_make_it_read_once():
    listing = listing_of(1)
    for spoil in (
        lambda: listing.on_events([event(3, "procedure.lifecycle.complete")]),
        listing.invalidate,
    ):
        spoil()
        assert listing.current() is None and not listing.pending
        version = listing.version
        assert listing.adopt(version, value(1, 5)).version is not None  # kept
        assert [s["id"] for s in listing.current().summaries] == [1, 5]


def test_a_read_overtaken_by_a_value_is_served_but_not_kept():
    listing = listing_of(1)
    listing.invalidate()
    version = listing.version
    listing.on_value(value(1, 2))  # arrived while the read was on its way
    stale_read = listing.adopt(version, value(1))
    assert stale_read.version is None and [s["id"] for s in stale_read.summaries] == [1]
    assert [s["id"] for s in listing.current().summaries] == [1, 2]


def test_errors_and_age_drop_the_copy():
    now = [0.0]
    listing = listing_of(1, clock=lambda: now[0])
    now[0] = listing.max_age + 1
    assert listing.current() is None
    listing.on_value(value(1))
    assert listing.current() is not None
    listing.on_error()
    assert listing.current() is None
    listing.on_value("{not json")
    assert listing.current() is None


def test_a_created_procedure_is_expected_until_listed():
    listing = listing_of(1)
    listing.expect(7)
    assert listing.current() is None
    listing.on_value(value(1, 2))  # another change, pushed before 7 was created
    assert listing.current() is None
    listing.on_value(value(1, 2, 7))
    assert [s["id"] for s in listing.current().summaries] == [1, 2, 7]
    listing.expect(7)  # already listed: nothing to wait for
    assert listing.current() is not None


@pytest.mark.timeout(30)
def test_settle_waits_for_the_value_or_gives_up():
    async def scenario() -> None:
        listing = listing_of(1)
        listing.pending_wait = 5.0
        listing.on_events([event(1, "procedure.lifecycle.created", procedure_id=2)])
        waiting = asyncio.create_task(listing.settle())
        await asyncio.sleep(0)
        listing.on_value(value(1, 2))
        await asyncio.wait_for(waiting, 5)
        assert [s["id"] for s in listing.current().summaries] == [1, 2]

        listing.pending_wait = 0.01
        listing.on_events([event(2, "procedure.lifecycle.statechange", new_state="RUNNING")])
        await listing.settle()  # nothing came: read the device next
        assert not listing.pending and listing.current() is None

    asyncio.run(scenario())
