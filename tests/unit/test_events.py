"""The event bus and the shared JSON codec."""

import json
import threading

from ska_oso_oet.events import Event, EventBus, dumps


def test_sequence_numbers_increase_and_every_subscriber_sees_the_same_order():
    bus = EventBus()
    seen_a, seen_b = [], []
    bus.subscribe(seen_a.append)
    sub_b = bus.subscribe(seen_b.append)

    def publish_many(tag):
        for i in range(200):
            bus.publish("t", tag, {"i": i})

    threads = [threading.Thread(target=publish_many, args=(n,)) for n in "xyz"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [e.seq for e in seen_a] == [e.seq for e in seen_b]
    assert [e.seq for e in seen_a] == list(range(seen_a[0].seq, seen_a[0].seq + 600))
    sub_b.close()
    bus.publish("t", "after")
    assert len(seen_a) == 601 and len(seen_b) == 600


def test_events_published_by_a_subscriber_follow_in_one_order_for_all():
    bus = EventBus(first_seq=1)
    first, last = [], []
    bus.subscribe(first.append)

    def react(event):
        if event.topic == "procedure":
            bus.publish("activity", "reactor", {"because": event.seq})

    bus.subscribe(react)
    bus.subscribe(last.append)
    bus.publish("procedure", "s")
    bus.publish("procedure", "s")
    expected = [("procedure", 1), ("activity", 2), ("procedure", 3), ("activity", 4)]
    assert [(e.topic, e.seq) for e in first] == expected
    assert [(e.topic, e.seq) for e in last] == expected


def test_sequence_continues_upwards_across_buses():
    seqs = []
    for _ in range(2):
        bus = EventBus()
        bus.subscribe(lambda e: seqs.append(e.seq))
        bus.publish("t", "s")
    assert seqs[0] < seqs[1]


def test_a_failing_subscriber_does_not_stop_the_others():
    bus = EventBus()
    received = []

    def broken(event):
        raise RuntimeError("broken subscriber")

    bus.subscribe(broken)
    bus.subscribe(received.append)
    bus.publish("t", "s", {"x": 1})
    assert received[0].payload == {"x": 1}


def test_events_are_plain_json_and_objects_render_readably():
    class Target:
        def __init__(self):
            self.name, self.ra = "M31", 10.68

    event = Event("user.script.announce", "src", 1.0, 7, {"msg": Target(), "tags": {"b", "a"}})
    decoded = json.loads(event.to_json())
    assert decoded == {
        "topic": "user.script.announce",
        "msg_src": "src",
        "timestamp": 1.0,
        "seq": 7,
        "msg": {"name": "M31", "ra": 10.68},
        "tags": ["a", "b"],
    }
    assert "py/object" not in dumps(Target())
    assert Event.from_dict(decoded).payload["msg"] == {"name": "M31", "ra": 10.68}
