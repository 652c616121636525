"""TangoDeviceClient and the DevFailed mapping, with a stand-in proxy (no Tango server)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
import tango

from ska_oso_oet.rest import errors
from ska_oso_oet.rest.client import TangoDeviceClient
from ska_oso_oet.rest.errors import GatewayError, error_from_dev_failed
from ska_oso_oet.rest.hub import EventHub


def dev_failed(*reasons: str, desc: str = "something readable") -> tango.DevFailed:
    stack = []
    for reason in reasons:
        err = tango.DevError()
        err.reason, err.desc, err.origin = reason, desc, "test"
        stack.append(err)
    return tango.DevFailed(*stack)


@pytest.mark.parametrize(
    ("reasons", "code", "status"),
    [
        (("OET_INVALID_REQUEST",), errors.INVALID_REQUEST, 400),
        (("OET_NOT_FOUND",), errors.NOT_FOUND, 404),
        (("OET_STATE_CONFLICT",), errors.STATE_CONFLICT, 409),
        (("OET_DEVICE_OFFLINE",), errors.DEVICE_OFFLINE, 503),
        (("OET_ENGINE_UNAVAILABLE",), errors.ENGINE_UNAVAILABLE, 503),
        (("PyDs_PythonError", "OET_NOT_FOUND"), errors.NOT_FOUND, 404),
        (("API_CantConnectToDevice", "API_CorbaException"), errors.DEVICE_UNREACHABLE, 503),
        (("DB_DeviceNotDefined",), errors.DEVICE_UNREACHABLE, 503),
        (("API_DeviceTimedOut",), errors.DEVICE_TIMEOUT, 504),
        (("API_CommandNotFound",), errors.NOT_IMPLEMENTED, 501),
        (("PyDs_PythonError",), errors.DEVICE_ERROR, 500),
    ],
)
def test_dev_failed_reasons_map_to_codes_and_statuses(reasons, code, status):
    error = error_from_dev_failed(dev_failed(*reasons))
    assert (error.code, int(error.status)) == (code, status)
    assert "something readable" in error.message


class FakeProxy:
    """Records calls; answers like OETDevice."""

    def __init__(self, replies: dict):
        self.replies = replies
        self.calls: list[tuple] = []

    def command_inout(self, name, *args):
        self.calls.append((name, *args))
        reply = self.replies[name]
        if isinstance(reply, Exception):
            raise reply
        return reply(*args) if callable(reply) else reply

    def read_attribute(self, name):
        self.calls.append(("read", name))
        return SimpleNamespace(value=self.replies[name])


def run_with(proxy: FakeProxy, coroutine_factory):
    async def scenario():
        client = TangoDeviceClient("oso/oet/1", EventHub())
        client._proxy = proxy
        try:
            return await coroutine_factory(client)
        finally:
            await client.close()

    return asyncio.run(scenario())


SUMMARY = {"id": 3, "state": "CREATING", "command_id": "1.0_1_Prepare"}


def test_prepare_finds_the_new_procedure_by_its_command_id():
    proxy = FakeProxy({"Prepare": [[2], ["1.0_1_Prepare"]], "GetProcedure": json.dumps(SUMMARY)})
    summary = run_with(proxy, lambda c: c.prepare({"script": {"script_uri": "file:///a.py"}}))
    assert summary == SUMMARY
    assert json.loads(proxy.calls[0][1]) == {"script": {"script_uri": "file:///a.py"}}
    assert proxy.calls[1] == ("GetProcedure", "1.0_1_Prepare")


def test_start_and_stop_send_the_documented_bodies():
    proxy = FakeProxy(
        {
            "Start": [[2], ["1.0_2_Start"]],
            "Stop": [[2], ["1.0_3_Stop"]],
            "GetProcedure": json.dumps({**SUMMARY, "state": "RUNNING"}),
        }
    )

    async def scenario(client):
        summary = await client.start_procedure(3, {"main": {"args": [1], "kwargs": {}}})
        await client.stop_procedure(3, True)
        return summary

    assert run_with(proxy, scenario)["state"] == "RUNNING"
    assert json.loads(proxy.calls[0][1]) == {
        "procedure_id": 3,
        "script_args": {"main": {"args": [1], "kwargs": {}}},
    }
    assert json.loads(proxy.calls[2][1]) == {"procedure_id": 3, "run_abort": True}


def test_rejected_commands_are_conflicts_with_the_device_message():
    proxy = FakeProxy({"Start": [[5], ["queue is full"]]})
    with pytest.raises(GatewayError) as caught:
        run_with(proxy, lambda c: c.start_procedure(1, None))
    assert caught.value.code == errors.STATE_CONFLICT
    assert "REJECTED: queue is full" in caught.value.message


def test_dev_failed_from_a_command_becomes_a_gateway_error():
    proxy = FakeProxy(
        {"GetProcedure": dev_failed("OET_NOT_FOUND", desc="No information available for PID=9")}
    )
    with pytest.raises(GatewayError) as caught:
        run_with(proxy, lambda c: c.get_procedure(9))
    assert (caught.value.code, caught.value.message) == (
        errors.NOT_FOUND,
        "No information available for PID=9",
    )


def test_list_reads_the_procedures_attribute():
    proxy = FakeProxy({"procedures": json.dumps([SUMMARY])})
    assert run_with(proxy, lambda c: c.list_procedures()) == [SUMMARY]


def test_calls_before_the_device_is_reached_are_503():
    async def scenario():
        client = TangoDeviceClient("oso/oet/1", EventHub())
        with pytest.raises(GatewayError) as caught:
            await client.list_procedures()
        await client.close()
        return caught.value

    assert asyncio.run(scenario()).code == errors.DEVICE_UNREACHABLE


def test_the_list_is_not_served_while_the_connect_still_confirms_the_event_channel():
    """The ``procedures`` subscription delivers its value before the connect ends: until it
    ends the list is 503 like every other request, then the value is served as it came."""

    async def scenario():
        client = TangoDeviceClient("oso/oet/1", EventHub())
        client.listing.on_value(json.dumps([SUMMARY]))  # the subscription's first value
        try:
            assert client.cached_procedures() is None
            with pytest.raises(GatewayError) as caught:
                await client.procedures_snapshot()
            assert caught.value.code == errors.DEVICE_UNREACHABLE
            client._proxy = FakeProxy({})  # the connect has ended
            assert client.cached_procedures().summaries == [SUMMARY]
            return await client.list_procedures()
        finally:
            await client.close()

    assert asyncio.run(scenario()) == [SUMMARY]


def test_change_events_reach_the_hub_and_error_events_do_not():
    async def scenario():
        hub = EventHub()
        client = TangoDeviceClient("oso/oet/1", hub)
        hub.bind(asyncio.get_running_loop())
        subscription = hub.subscribe()
        data = json.dumps({"topic": "t", "seq": 5, "msg_src": "d", "timestamp": 1.0})
        client._on_event(SimpleNamespace(err=True, errors=["API_EventTimeout"], attr_value=None))
        client._on_event(SimpleNamespace(err=False, attr_value=SimpleNamespace(value=data)))
        event = await subscription.next(timeout=5)
        await client.close()
        return event

    assert asyncio.run(scenario()).seq == 5


class SubscribingProxy:
    """A DeviceProxy stand-in whose ``lastEvent`` subscription fails as a stateless Tango
    subscription does while the server's admin device is not exported yet: no exception, an
    error event to the callback, and Tango would retry only ~10 s later."""

    def __init__(self, lastevent_fails: bool):
        self.lastevent_fails = lastevent_fails
        self.callbacks: dict[int, tuple[str, object]] = {}
        self.unsubscribed: list[int] = []

    def set_timeout_millis(self, _ms):
        pass

    def ping(self):
        return 1

    def read_attribute(self, _name):
        return SimpleNamespace(value=1)

    def subscribe_event(self, attribute, _kind, callback, stateless=False):
        event_id = len(self.callbacks) + 1
        self.callbacks[event_id] = (attribute, callback)
        if attribute == "lastEvent" and self.lastevent_fails:
            error = SimpleNamespace(desc="Device dserver/oetdeviceserver/oet is not exported")
            callback(SimpleNamespace(err=True, errors=[error], attr_value=None))
        return event_id

    def unsubscribe_event(self, event_id):
        self.unsubscribed.append(event_id)

    def command_inout(self, name, token):
        assert name == "ProbeEvents"
        for attribute, callback in self.callbacks.values():
            if attribute == "eventProbe":
                callback(SimpleNamespace(err=False, attr_value=SimpleNamespace(value=token)))


def test_a_failed_stateless_lastevent_subscription_is_retried_at_once(monkeypatch):
    proxies = [SubscribingProxy(lastevent_fails=True), SubscribingProxy(lastevent_fails=False)]
    made = iter(proxies)
    monkeypatch.setattr(tango, "DeviceProxy", lambda _name: next(made))
    client = TangoDeviceClient("oso/oet/1", EventHub())
    try:
        with pytest.raises(RuntimeError, match=r"lastEvent subscription failed: .*not exported"):
            client._connect()
        assert not client.connected  # requests answer 503 meanwhile; the loop tries again
        assert proxies[0].unsubscribed == [1]  # no late second subscription by Tango
        client._connect()
        assert client._proxy is proxies[1]
    finally:
        asyncio.run(client.close())


def test_run_activity_finds_the_activity_by_its_command_id():
    activity = {"id": 2, "state": "REQUESTED", "procedure_id": 5}
    proxy = FakeProxy(
        {"RunActivity": [[1], ["1.0_9_RunActivity"]], "GetActivity": json.dumps(activity)}
    )
    body = {"activity_name": "observe", "sbd_id": "sbd-1"}
    assert run_with(proxy, lambda c: c.run_activity(body)) == activity
    assert json.loads(proxy.calls[0][1]) == body
    assert proxy.calls[1] == ("GetActivity", "1.0_9_RunActivity")


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("OET_NOT_FOUND: no procedure 9", errors.NOT_FOUND),
        ("OET_STATE_CONFLICT: procedure 2 is already running", errors.STATE_CONFLICT),
        ("OET_ENGINE_UNAVAILABLE: worker processes cannot be started", errors.ENGINE_UNAVAILABLE),
        ("Input queue full", errors.STATE_CONFLICT),  # a REJECTED reply without an OET reason
    ],
)
def test_rejected_replies_keep_the_devices_reason(message: str, code: str):
    proxy = FakeProxy({"Start": [[5], [message]]})
    with pytest.raises(GatewayError) as caught:
        run_with(proxy, lambda c: c.start_procedure(9, None))
    assert caught.value.code == code
    assert message.partition(": ")[2] in caught.value.message or message in caught.value.message
