"""EventHub: ordering, de-duplication, replay after an id, and slow consumers."""

from __future__ import annotations

import asyncio
import json
import threading

from ska_oso_oet.rest.hub import EventHub


def raw(seq: int, topic: str = "t") -> str:
    return json.dumps({"topic": topic, "seq": seq, "msg_src": "x", "timestamp": 0.0})


async def drain(subscription, count: int) -> list[int]:
    seqs = []
    for _ in range(count):
        event = await subscription.next(timeout=5)
        assert event is not None
        seqs.append(event.seq)
    return seqs


def test_live_subscribers_get_new_events_in_order_without_repeats():
    async def scenario():
        hub = EventHub()
        hub.publish_raw(raw(1))
        sub = hub.subscribe()
        for seq in (2, 3, 3, 2, 4):  # Tango re-sends the current value on re-subscription
            hub.publish_raw(raw(seq))
        assert await drain(sub, 3) == [2, 3, 4]
        assert await sub.next(timeout=0.01) is None

    asyncio.run(scenario())


def test_last_event_id_replays_what_followed_then_goes_live():
    async def scenario():
        hub = EventHub(replay_size=3)
        for seq in range(1, 6):
            hub.publish_raw(raw(seq))
        sub = hub.subscribe(last_event_id=3)
        hub.publish_raw(raw(6))
        assert await drain(sub, 3) == [4, 5, 6]
        assert hub.oldest_seq == 4
        old = hub.subscribe(last_event_id=0)  # older than the buffer: what is left
        assert await drain(old, 3) == [4, 5, 6]

    asyncio.run(scenario())


def test_undecodable_or_seqless_values_are_ignored():
    async def scenario():
        hub = EventHub()
        sub = hub.subscribe()
        for value in ("", "not json", json.dumps({"topic": "x"}), "[1]", raw(7)):
            hub.publish_raw(value)
        assert await drain(sub, 1) == [7]

    asyncio.run(scenario())


def test_a_slow_subscriber_is_dropped_and_others_carry_on():
    async def scenario():
        hub = EventHub(queue_size=3)
        slow, fast = hub.subscribe(), hub.subscribe()
        received = []
        for seq in range(1, 7):
            hub.publish_raw(raw(seq))
            received.append((await fast.next(timeout=1)).seq)
        assert received == [1, 2, 3, 4, 5, 6]
        assert slow.overflowed and slow.closed
        assert await drain(slow, 3) == [1, 2, 3]  # a contiguous run, then the end
        assert await slow.next(timeout=1) is None
        assert hub.subscriber_count == 1

    asyncio.run(scenario())


def test_feed_threadsafe_preserves_order_from_another_thread():
    async def scenario():
        hub = EventHub(queue_size=1000)
        hub.bind(asyncio.get_running_loop())
        sub = hub.subscribe()
        feeder = threading.Thread(
            target=lambda: [hub.feed_threadsafe(raw(s)) for s in range(1, 501)]
        )
        feeder.start()
        assert await drain(sub, 500) == list(range(1, 501))
        feeder.join()

    asyncio.run(scenario())


def test_filtered_subscription_and_close():
    async def scenario():
        hub = EventHub()
        with hub.subscribe(accept=lambda e: e.data["topic"] == "keep") as sub:
            hub.publish_raw(raw(1, "skip"))
            hub.publish_raw(raw(2, "keep"))
            assert await drain(sub, 1) == [2]
        assert hub.subscriber_count == 0
        hub.close_all()

    asyncio.run(scenario())


def test_a_burst_fed_from_another_thread_is_published_in_few_batches():
    async def scenario():
        hub = EventHub(queue_size=5000)
        hub.bind(asyncio.get_running_loop())
        sub = hub.subscribe()
        drains = 0
        drain_inbox = hub._drain_inbox

        def counting_drain() -> None:
            nonlocal drains
            drains += 1
            drain_inbox()

        hub._drain_inbox = counting_drain
        feeder = threading.Thread(
            target=lambda: [hub.feed_threadsafe(raw(s)) for s in range(1, 3001)]
        )
        feeder.start()
        seqs: list[int] = []
        while len(seqs) < 3000:
            batch = await sub.next_batch(timeout=5)
            assert batch, f"stalled after {len(seqs)} events"
            seqs.extend(event.seq for event in batch)
        feeder.join()
        assert seqs == list(range(1, 3001))
        assert drains < 3000  # values that arrive while a drain is pending join it
        assert await sub.next_batch(timeout=0.01) == []

    asyncio.run(scenario())


def test_seq_is_read_from_the_device_text_and_the_rest_decoded_on_demand():
    from ska_oso_oet.events import Event
    from ska_oso_oet.rest.hub import HubEvent

    device_text = Event("user.script.announce", "oso/oet/1", 1.5, 42, {"msg": {"seq": 7}}).to_json()
    event = HubEvent.parse(device_text)
    assert event is not None and event.seq == 42 and event._data is None
    assert event.data["msg"] == {"seq": 7} and event.data["topic"] == "user.script.announce"
    other_order = HubEvent.parse('{"topic": "t", "seq": 3}')
    assert other_order is not None and other_order.seq == 3
    for invalid in ('{"seq": null}', '{"topic": "t"}', "[1]", "not json"):
        assert HubEvent.parse(invalid) is None, invalid
