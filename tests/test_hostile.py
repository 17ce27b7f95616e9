"""A table-driven battery of hostile requests against every endpoint: each gets its exact
status (and, where the app sees the request, OpenAI's error code), and nothing changes."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from chatproxy.appkeys import STORE
from chatproxy.server import ProxyServer
from chatproxy.testing import FakeUpstream
from tests.util import all_chats, all_messages

MSG = {"role": "user", "content": "hi"}
LONG_ID = "c" * 129

# (method, path, headers, body, status, code)
CASES = [
    ("POST", "/v1/chat/completions", {}, b"{", 400, "invalid_json"),
    ("POST", "/v1/chat/completions", {}, b"\xff\xfe\x00", 400, "invalid_json"),
    ("POST", "/v1/chat/completions", {}, b"null", 400, "invalid_type"),
    ("POST", "/v1/chat/completions", {}, b'{"messages": null}', 400, "missing_required_parameter"),
    ("POST", "/v1/chat/completions", {}, b'{"messages": [[]]}', 400, "invalid_type"),
    ("POST", "/v1/chat/completions", {}, b'{"messages": [{"role": 1}]}', 400, "invalid_value"),
    (
        "POST",
        "/v1/chat/completions",
        {},
        b'{"messages": [{"role": "user", "content": {}}]}',
        400,
        "invalid_type",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"X-Chat-Id": LONG_ID},
        b'{"messages": [{"role": "user", "content": "x"}]}',
        400,
        "invalid_chat_id",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"X-Chat-Id": "../etc"},
        b'{"messages": [{"role": "user", "content": "x"}]}',
        400,
        "invalid_chat_id",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"X-Chat-Id": "a%00b"},
        b'{"messages": [{"role": "user", "content": "x"}]}',
        400,
        "invalid_chat_id",
    ),
    ("GET", f"/v1/conversations/{LONG_ID}/stream", {}, b"", 400, "invalid_chat_id"),
    ("GET", "/v1/conversations/chat%20x/stream", {}, b"", 400, "invalid_chat_id"),
    ("GET", "/v1/conversations/chat_unknown/stream", {}, b"", 404, "chat_not_found"),
    ("GET", "/v1/conversations/chat_unknown/stream?after=1e3", {}, b"", 400, "invalid_value"),
    (
        "GET",
        "/v1/conversations/chat_unknown/stream",
        {"Last-Event-ID": "9" * 40},
        b"",
        400,
        "invalid_value",
    ),
    ("DELETE", "/healthz", {}, b"", 405, "method_not_allowed"),
    ("GET", "/nowhere", {}, b"", 404, "not_found"),
]


async def assert_unchanged(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    store = proxy.app[STORE]
    assert await all_messages(store) == []
    assert await all_chats(store) == []
    assert upstream.chat_requests == []


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "code"), CASES)
async def test_hostile_request_gets_its_exact_error_and_changes_nothing(
    proxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    headers: dict,
    body: bytes,
    status: int,
    code: str,
) -> None:
    base = proxy.url.removesuffix("/v1")
    headers = {"Content-Type": "application/json", **headers}
    async with http.request(method, base + path, data=body, headers=headers) as resp:
        assert resp.status == status
        error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    await assert_unchanged(proxy, upstream)


async def test_huge_messages_over_max_body_bytes_is_413_and_changes_nothing(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"server.max_body_bytes": 100_000})
    body = {"model": "m", "messages": [MSG] * 20_000}
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "payload_too_large"
    await assert_unchanged(proxy, upstream)


async def raw_request(proxy: ProxyServer, head: bytes, body: bytes = b"") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    "header",
    [
        b"X-Chat-Id: abc\rdef\r\n",
        b"Authorization: Bearer cp-secret-in-a-broken-header\rX\r\n",
        b"X-Chat-Id: abc\ndef: x\r\n\x00\r\n",
    ],
)
async def test_cr_lf_or_nul_in_a_header_is_refused_before_the_app_without_logging_it(
    proxy: ProxyServer,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    header: bytes,
) -> None:
    caplog.set_level(logging.DEBUG)
    body = b'{"model":"m","messages":[{"role":"user","content":"x"}]}'
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + header
    head += b"Content-Type: application/json\r\n"
    answer = await raw_request(proxy, head, body)
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n", 1)[0]
    assert "cp-secret" not in caplog.text and "abc" not in caplog.text
    await assert_unchanged(proxy, upstream)


async def test_non_ascii_header_values_are_refused_as_invalid_ids(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"x"}]}'
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Chat-Id: caf\xc3\xa9\r\n"
    head += b"Content-Type: application/json\r\nConnection: close\r\n"
    answer = await raw_request(proxy, head, body)
    assert b" 400 " in answer.split(b"\r\n", 1)[0]
    assert b'"invalid_chat_id"' in answer
    await assert_unchanged(proxy, upstream)
