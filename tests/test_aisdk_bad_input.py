"""Malformed and hostile requests to /api/chat: the exact status and error code, in OpenAI's
shape, and nothing stored or sent upstream."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from chatproxy.appkeys import STORE
from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream
from tests.aisdk import base, error_of, full, post_chat, single, user
from tests.test_identity import bearer, make_key
from tests.util import all_chats, all_messages

U = user("u1", "Hi")


def tool_part(**fields: Any) -> dict[str, Any]:
    return {"id": "a1", "role": "assistant", "parts": [{"type": "tool-f", **fields}]}


BAD_BODIES: list[tuple[Any, str, str | None]] = [
    (b"{not json", "invalid_json", None),
    ([U], "invalid_type", None),
    ({"messages": [U]}, "missing_required_parameter", "id"),
    (full("../etc", U), "invalid_chat_id", "id"),
    (full(7, U), "invalid_chat_id", "id"),
    (full("x" * 129, U), "invalid_chat_id", "id"),
    ({"id": "c1"}, "missing_required_parameter", "messages"),
    ({"id": "c1", "messages": [U], "message": U}, "invalid_request", "message"),
    ({"id": "c1", "messages": U}, "invalid_type", "messages"),
    ({"id": "c1", "messages": []}, "empty_array", "messages"),
    ({"id": "c1", "messages": [U] * 1001}, "invalid_value", "messages"),
    (full("c1", "hello"), "invalid_type", "messages[0]"),
    (full("c1", {"role": "user", "parts": []}), "missing_required_parameter", "messages[0].id"),
    (full("c1", {"id": 5, "role": "user", "parts": []}), "invalid_type", "messages[0].id"),
    (full("c1", {"id": "", "role": "user", "parts": []}), "invalid_value", "messages[0].id"),
    (full("c1", {"id": "t", "role": "tool", "parts": []}), "invalid_value", "messages[0].role"),
    (full("c1", {"id": "u", "role": "user"}), "missing_required_parameter", "messages[0].parts"),
    (full("c1", {"id": "u", "role": "user", "parts": "hi"}), "invalid_type", "messages[0].parts"),
    (
        full("c1", {"id": "u", "role": "user", "parts": [{"text": "no type"}]}),
        "invalid_type",
        "messages[0].parts[0]",
    ),
    (
        full("c1", {"id": "u", "role": "user", "parts": [{"type": "text", "text": 1}]}),
        "invalid_type",
        "messages[0].parts[0].text",
    ),
    (
        full("c1", {"id": "u", "role": "user", "parts": [{"type": "reasoning", "text": "x"}]}),
        "invalid_value",
        "messages[0].parts[0].type",
    ),
    (
        full("c1", {"id": "s", "role": "system", "parts": [{"type": "file", "url": "x"}]}),
        "invalid_value",
        "messages[0].parts[0].type",
    ),
    (
        full(
            "c1",
            {
                "id": "u",
                "role": "user",
                "parts": [{"type": "file", "mediaType": "application/pdf", "url": "https://x/a"}],
            },
        ),
        "invalid_value",
        "messages[0].parts[0].url",
    ),
    (
        full("c1", {"id": "u", "role": "user", "parts": [{"type": "file", "url": "data:,"}]}),
        "missing_required_parameter",
        "messages[0].parts[0].mediaType",
    ),
    (
        full("c1", U, {"id": "a", "role": "assistant", "parts": [{"type": "banana"}]}),
        "invalid_value",
        "messages[1].parts[0].type",
    ),
    (
        full("c1", U, tool_part(toolCallId="c", state="exploded")),
        "invalid_value",
        "messages[1].parts[0].state",
    ),
    (
        full("c1", U, tool_part(state="input-available", input={})),
        "missing_required_parameter",
        "messages[1].parts[0].toolCallId",
    ),
    (
        full("c1", U, tool_part(toolCallId="c", state="output-error", input={})),
        "missing_required_parameter",
        "messages[1].parts[0].errorText",
    ),
    (
        full("c1", U, {"id": "a", "role": "assistant", "parts": [{"type": "dynamic-tool"}]}),
        "missing_required_parameter",
        "messages[1].parts[0].toolName",
    ),
    (full("c1", U, trigger="resume-stream"), "invalid_value", "trigger"),
    (full("c1", U, messageId=5), "invalid_type", "messageId"),
    (full("c1", U, model=["gpt"]), "invalid_type", "model"),
    (single("c1", {"id": "a", "role": "assistant", "parts": []}), "invalid_value", "message.role"),
]


@pytest.mark.parametrize(("body", "code", "param"), BAD_BODIES)
async def test_a_bad_body_is_400_with_its_code_and_param_and_changes_nothing(
    proxy: ProxyServer,
    upstream: FakeUpstream,
    store: Store,
    http: aiohttp.ClientSession,
    body: Any,
    code: str,
    param: str | None,
) -> None:
    status, headers, raw = await post_chat(http, proxy, body)
    assert headers["Content-Type"].startswith("application/json")
    error = orjson.loads(raw)["error"]
    assert (status, error["code"], error["param"]) == (400, code, param)
    assert error["type"] == "invalid_request_error" and error["message"]
    assert await all_chats(store) == [] and await all_messages(store) == []
    assert upstream.chat_requests == []


async def test_no_model_and_no_default_is_400(
    proxy: ProxyServer, upstream: FakeUpstream, store: Store, http: aiohttp.ClientSession
) -> None:
    status, _, raw = await post_chat(http, proxy, full("c1", U), model=None)
    error = orjson.loads(raw)["error"]
    assert (status, error["code"], error["param"]) == (400, "missing_required_parameter", "model")
    assert await all_messages(store) == [] and upstream.chat_requests == []


async def test_regenerating_a_message_the_chat_does_not_have_is_404(
    proxy: ProxyServer, upstream: FakeUpstream, store: Store, http: aiohttp.ClientSession
) -> None:
    await post_chat(http, proxy, full("c1", U))
    before = len(await all_messages(store))
    for body in (
        full("c1", U, trigger="regenerate-message", messageId="msg_nope"),
        full("nochat", U, trigger="regenerate-message"),
    ):
        status, _, raw = await post_chat(http, proxy, body)
        assert (status, orjson.loads(raw)["error"]["code"]) == (404, "message_not_found")
    assert len(await all_messages(store)) == before
    assert len(upstream.chat_requests) == 1


async def test_a_body_over_max_body_bytes_is_413(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"server.max_body_bytes": 1000})
    status, _, raw = await post_chat(http, proxy, full("c1", user("u1", "x" * 2000)))
    assert (status, orjson.loads(raw)["error"]["code"]) == (413, "payload_too_large")
    assert upstream.chat_requests == []


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/api/chat/bad.id/messages", 400, "invalid_chat_id"),
        ("GET", "/api/chat/bad.id/stream", 400, "invalid_chat_id"),
        ("GET", "/api/chat/nochat/messages", 404, "chat_not_found"),
        ("GET", "/api/chat/nochat/stream", 404, "chat_not_found"),
        ("DELETE", "/api/chat", 400, "missing_required_parameter"),
        ("DELETE", "/api/chat?id=a%2Fb", 400, "invalid_chat_id"),
        ("DELETE", "/api/chat?id=nochat", 404, "chat_not_found"),
        ("PUT", "/api/chat", 405, "method_not_allowed"),
        ("GET", "/api/chat", 405, "method_not_allowed"),
    ],
)
async def test_bad_reads_and_deletes(
    proxy: ProxyServer,
    store: Store,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    status: int,
    code: str,
) -> None:
    got, error = await error_of(http, method, base(proxy) + path)
    assert (got, error["code"]) == (status, code)
    assert error["message"]
    assert await all_chats(store) == []


HEADER_AUTH = {"auth.mode": "header", "server.trusted_proxies": ["127.0.0.1/32"]}


async def test_another_users_private_chat_is_404_to_read_and_403_to_post_into(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**HEADER_AUTH)
    alice, mallory = {"X-User-Id": "alice"}, {"X-User-Id": "mallory"}
    await post_chat(http, proxy, full("c1", U), headers=alice)
    root = base(proxy)
    for method, path in (
        ("GET", "/api/chat/c1/messages"),
        ("GET", "/api/chat/c1/stream"),
        ("DELETE", "/api/chat?id=c1"),
    ):
        status, error = await error_of(http, method, root + path, headers=mallory)
        assert (status, error["code"]) == (404, "chat_not_found")
    for body in (
        full("c1", U, user("u2", "Let me in")),
        single("c1", user("u2", "Let me in")),
        full("c1", U, trigger="regenerate-message"),
    ):
        status, _, raw = await post_chat(http, proxy, body, headers=mallory)
        assert (status, orjson.loads(raw)["error"]["code"]) == (403, "chat_forbidden")
    # Alice's chat is as it was.
    async with http.get(f"{root}/api/chat/c1/messages", headers=alice) as resp:
        assert len(await resp.json()) == 2
    assert len(upstream.chat_requests) == 1


async def test_keys_mode_guards_every_aisdk_route_with_401(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"auth.mode": "keys"})
    root = base(proxy)
    for method, path in (
        ("POST", "/api/chat"),
        ("GET", "/api/chat/c1/messages"),
        ("GET", "/api/chat/c1/stream"),
        ("DELETE", "/api/chat?id=c1"),
    ):
        status, error = await error_of(
            http, method, root + path, json=full("c1", U), headers=bearer("cp-wrong")
        )
        assert (status, error["code"]) == (401, "invalid_api_key")
    _, key = await make_key(proxy.app[STORE], "alice")
    status, _, _ = await post_chat(http, proxy, full("c1", U), headers=bearer(key))
    assert status == 200
    assert upstream.chat_requests[0].headers["Authorization"] == "Bearer sk-upstream-secret"


async def test_the_ip_limit_counts_aisdk_requests_with_the_same_429(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"limits.ip_rate": "1/minute", "limits.ip_burst": 2})
    root = base(proxy)
    async with http.get(f"{root}/api/chat/c1/messages") as resp:
        assert resp.status == 404
        assert resp.headers["x-ratelimit-limit-requests"] == "1"  # 1/minute, burst 2
    await post_chat(http, proxy, full("c1", U))
    status, error = await error_of(http, "GET", f"{root}/api/chat/c1/messages")
    assert (status, error["code"]) == (429, "rate_limit_exceeded")
    assert len(upstream.chat_requests) == 1


async def test_the_daily_quota_refuses_the_next_answer_and_stores_nothing(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"limits.tiers.free.messages_per_day": 1})
    store = proxy.app[STORE]
    await post_chat(http, proxy, single("c1", U))
    before = len(await all_messages(store))
    status, headers, raw = await post_chat(http, proxy, single("c1", user("u2", "More")))
    assert (status, orjson.loads(raw)["error"]["code"]) == (429, "daily_limit_exceeded")
    assert headers["x-should-retry"] == "false"
    assert len(await all_messages(store)) == before
    assert len(upstream.chat_requests) == 1
