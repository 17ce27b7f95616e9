"""Malformed and hostile requests get an exact OpenAI-shaped 4xx, and change nothing."""

from __future__ import annotations

import aiohttp
import pytest

from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream
from tests.util import all_chats, all_messages

OK_MESSAGE = {"role": "user", "content": "hi"}


async def assert_nothing_changed(store: Store, upstream: FakeUpstream) -> None:
    assert await all_messages(store) == []
    assert await all_chats(store) == []
    assert upstream.chat_requests == []


async def refused(http: aiohttp.ClientSession, url: str, status: int, **kwargs: object) -> dict:
    """POST ``url``; check the status and the OpenAI error shape; return the error."""
    async with http.post(url, **kwargs) as resp:
        assert resp.status == status
        assert resp.content_type == "application/json"
        assert resp.headers["X-Request-Id"].startswith("req_")
        return error_shape(await resp.json())


def error_shape(body: dict) -> dict:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (b"{not json", "invalid_json", None),
        (b"", "invalid_json", None),
        (b"[1, 2]", "invalid_type", None),
        (b'"a string"', "invalid_type", None),
        (b'{"model": "m"}', "missing_required_parameter", "messages"),
        (b'{"model": "m", "messages": "hello"}', "invalid_type", "messages"),
        (b'{"model": "m", "messages": {"role": "user"}}', "invalid_type", "messages"),
        (b'{"model": "m", "messages": []}', "empty_array", "messages"),
        (b'{"model": "m", "messages": [42]}', "invalid_type", "messages[0]"),
        (
            b'{"model": "m", "messages": [{"content": "no role"}]}',
            "invalid_value",
            "messages[0].role",
        ),
        (
            b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}',
            "invalid_value",
            "messages[0].role",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": 5}]}',
            "invalid_type",
            "messages[0].content",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user"}]}',
            "missing_required_parameter",
            "messages[0].content",
        ),
        (b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', "invalid_type", "model"),
        (
            b'{"model": "m", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}',
            "invalid_type",
            "stream",
        ),
        (
            b'{"model": "m", "stream": true, "stream_options": 1, '
            b'"messages": [{"role": "user", "content": "x"}]}',
            "invalid_type",
            "stream_options",
        ),
    ],
)
async def test_malformed_chat_request_is_a_400_and_stores_nothing(
    proxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    store: Store,
    body: bytes,
    code: str,
    param: str | None,
) -> None:
    headers = {"Content-Type": "application/json"}
    error = await refused(http, f"{proxy.url}/chat/completions", 400, data=body, headers=headers)
    assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")
    await assert_nothing_changed(store, upstream)


@pytest.mark.parametrize(
    "chat_id", ["has space", "semi;colon", "x" * 129, "slash/inside", "ünïcode", ""]
)
async def test_malformed_chat_id_is_a_400_and_stores_nothing(
    proxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    store: Store,
    chat_id: str,
) -> None:
    body = {"model": "m", "messages": [OK_MESSAGE]}
    headers = {"X-Chat-Id": chat_id}
    error = await refused(http, f"{proxy.url}/chat/completions", 400, json=body, headers=headers)
    assert error["code"] == "invalid_chat_id"
    await assert_nothing_changed(store, upstream)


async def test_body_over_max_body_bytes_is_a_413_and_stores_nothing(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    from chatproxy.appkeys import STORE

    proxy = await start_proxy(**{"server.max_body_bytes": 1000})
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]}
    error = await refused(http, f"{proxy.url}/chat/completions", 413, json=body)
    assert error["code"] == "payload_too_large"
    await assert_nothing_changed(proxy.app[STORE], upstream)


async def test_invalid_utf8_body_is_a_400_and_stores_nothing(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession, store: Store
) -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}'
    headers = {"Content-Type": "application/json"}
    error = await refused(http, f"{proxy.url}/chat/completions", 400, data=body, headers=headers)
    assert error["code"] == "invalid_json"
    await assert_nothing_changed(store, upstream)


async def test_wrong_method_and_unknown_route_are_openai_shaped(
    proxy: ProxyServer, http: aiohttp.ClientSession
) -> None:
    async with http.put(f"{proxy.url}/chat/completions", json={}) as resp:
        # PUT is not served by the proxy itself, so it goes to the upstream, which says 404.
        assert resp.status == 404
        error_shape(await resp.json())
    base = proxy.url.removesuffix("/v1")
    async with http.get(f"{base}/not-a-route") as resp:
        assert resp.status == 404
        assert error_shape(await resp.json())["code"] == "not_found"
