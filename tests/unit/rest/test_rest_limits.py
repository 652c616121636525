"""Request limits and bad input through a real uvicorn (issue 13): always a 4xx with the
documented body, never a 5xx."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from ska_oso_oet.rest.app import create_app
from ska_oso_oet.rest.protocol import MAX_HEAD_BYTES
from ska_oso_oet.rest.server import uvicorn_options
from ska_oso_oet.rest.settings import RestSettings
from tests.unit.rest.gateway_fakes import FakeDevice, serve_in_thread

BASE = "/api/v1.0"


@pytest.fixture
def device() -> FakeDevice:
    return FakeDevice()


@pytest.fixture
def url(device) -> Iterator[str]:
    settings = RestSettings(max_body_bytes=64 * 1024, max_json_depth=32, max_header_bytes=8192)
    app = create_app(settings, client=device)
    with serve_in_thread(app, **uvicorn_options()) as base:
        yield base


def assert_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "type", "Message"} and body["error"].startswith(str(status))
    return body


def test_body_beyond_the_limit_is_413_before_reading_it(url, device):
    big = {
        "script": {"script_uri": "file:///a.py"},
        "script_args": {"init": {"args": ["x" * 100_000]}},
    }
    body = assert_error(httpx.post(f"{url}{BASE}/procedures", json=big), 413)
    assert "65536" in body["Message"]
    assert device.calls == []


def test_chunked_body_beyond_the_limit_is_413(url, device):
    def chunks():
        yield b'{"script": {"script_uri": "file:///a.py"}, "x": "'
        for _ in range(100):
            yield b"y" * 1024
        yield b'"}'

    response = httpx.post(
        f"{url}{BASE}/procedures", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_error(response, 413)
    assert device.calls == []


@pytest.mark.parametrize("depth", [33, 900, 10_000])
def test_deep_json_is_400(url, device, depth):
    nested = "[" * depth + "]" * depth
    text = (
        '{"script": {"script_uri": "file:///a.py"}, "script_args": {"init": {"args": '
        + nested
        + "}}}"
    )
    response = httpx.post(
        f"{url}{BASE}/procedures", content=text, headers={"Content-Type": "application/json"}
    )
    assert "deeper than 32" in assert_error(response, 400)["Message"]
    assert device.calls == []


def test_json_within_the_depth_limit_is_accepted(url):
    args = json.loads("[" * 20 + "]" * 20)
    body = {"script": {"script_uri": "file:///a.py"}, "script_args": {"init": {"args": [args]}}}
    assert httpx.post(f"{url}{BASE}/procedures", json=body).status_code == 201


def test_headers_beyond_the_limit_are_431(url):
    response = httpx.get(f"{url}{BASE}/procedures", headers={"X-Big": "h" * 20_000})
    assert "8192" in assert_error(response, 431)["Message"]


def test_headers_beyond_uvicorns_own_ceiling_are_still_a_4xx(url):
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"GET {BASE}/procedures HTTP/1.1\r\nHost: x\r\nX-Big: {'h' * 100_000}\r\n\r\n".encode()
        )
        reply = sock.recv(200).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 4"), reply


def test_a_head_dripped_beyond_the_ceiling_is_refused_and_closed(url):
    """The head is bounded however it arrives: many small header lines, never completed."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {BASE}/procedures HTTP/1.1\r\nHost: x\r\n".encode())
        reply = b""
        for n in range(MAX_HEAD_BYTES // 1000 + 10):
            try:
                sock.sendall(f"X-{n}: {'h' * 990}\r\n".encode())
            except OSError:  # closed by the server: what is wanted
                break
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]


def test_a_huge_request_line_is_refused(url):
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"GET {BASE}/procedures?x={'a' * 100_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        reply = sock.recv(200)
    assert reply.startswith(b"HTTP/1.1 4"), reply


def test_a_body_in_the_same_packet_as_the_head_does_not_count_as_head(url, device):
    """A 60 KiB body sent with its head in one write is within the body limit: accepted."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(
        {
            "script": {"script_type": "filesystem", "script_uri": "file:///x.py"},
            "pad": "p" * 100_000,
        }
    ).encode()
    head = (
        f"POST {BASE}/procedures HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + body)
        reply = sock.recv(200)
    assert not reply.startswith(b"HTTP/1.1 400"), reply


def test_non_ascii_sbd_id_is_400_not_500(url, device):
    response = httpx.get(f"{url}{BASE}/sbds/%E2%9C%93")
    assert_error(response, 400)
    assert not any(name == "GetSbd" for name, _ in device.calls)


@pytest.mark.parametrize("uri", ["file:///a\x00.py", "file:///a\n.py", "file:///" + "a" * 5000])
def test_control_characters_and_huge_script_uris_are_400(url, device, uri):
    response = httpx.post(f"{url}{BASE}/procedures", json={"script": {"script_uri": uri}})
    body = assert_error(response, 400)
    assert len(body["Message"]) < 600
    assert device.calls == []


def test_validation_errors_quote_a_short_prefix_only(url):
    body = {"script": {"script_uri": "file:///a.py"}, "script_args": {"k" * 30_000: {"args": 1}}}
    message = assert_error(httpx.post(f"{url}{BASE}/procedures", json=body), 400)["Message"]
    assert len(message) < 1000


def test_a_device_message_is_cut_short(url, device):
    response = httpx.post(
        f"{url}{BASE}/procedures",
        json={"script": {"script_uri": "file:///forbidden/" + "z" * 4000}},
    )
    assert len(assert_error(response, 400)["Message"]) < 2100
