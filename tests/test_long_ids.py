"""Every id a client sends, on every route that takes one, gets the answer of its kind on both
stores: a well-formed id that names nothing is its ``404`` (or, for a list cursor and a branch
point, its ``400``), also when it is longer than the column the store keeps such ids in
(65 to 128 characters: message and completion ids); a malformed one is its ``400``. Never a
500, never a traceback in the log, and nothing changes."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import openai
import pytest

from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream
from tests.util import all_chats, all_messages

# Well-formed ids of 65, 100 and 128 characters (the message id column holds 64).
LONG = [("msg_" + "Ab9_-" * 26)[:n] for n in (65, 100, 128)]
# Malformed ones, as they appear in a URL (the last one is 129 characters).
MALFORMED = ["bad.id", "a%20b", "caf%C3%A9", "x" * 129]

# (method, path, body, what the unknown id gets, what a malformed one gets): ``{id}`` is the
# id under test, ``{chat}`` a conversation and ``{done}`` a completion of the caller's.
ROUTES: list[tuple[str, str, Any, tuple[int, str, str | None], tuple[str, str]]] = [
    (
        "PUT",
        "/v1/conversations/{chat}/messages/{id}/vote",
        {"up": True},
        (404, "message_not_found", None),
        ("invalid_message_id", "message_id"),
    ),
    (
        "GET",
        "/v1/conversations/{chat}/items/{id}",
        None,
        (404, "item_not_found", None),
        ("invalid_item_id", "item_id"),
    ),
    (
        "DELETE",
        "/v1/conversations/{chat}/items/{id}",
        None,
        (404, "item_not_found", None),
        ("invalid_item_id", "item_id"),
    ),
    (
        "GET",
        "/v1/chat/completions/{id}",
        None,
        (404, "not_found", "completion_id"),
        ("invalid_id", "completion_id"),
    ),
    (
        "POST",
        "/v1/chat/completions/{id}",
        {"metadata": {"k": "v"}},
        (404, "not_found", "completion_id"),
        ("invalid_id", "completion_id"),
    ),
    (
        "DELETE",
        "/v1/chat/completions/{id}",
        None,
        (404, "not_found", "completion_id"),
        ("invalid_id", "completion_id"),
    ),
    (
        "GET",
        "/v1/chat/completions/{id}/messages",
        None,
        (404, "not_found", "completion_id"),
        ("invalid_id", "completion_id"),
    ),
    (
        "GET",
        "/v1/chat/completions?after={id}",
        None,
        (400, "invalid_cursor", "after"),
        ("invalid_cursor", "after"),
    ),
    (
        "GET",
        "/v1/chat/completions/{done}/messages?after={id}",
        None,
        (400, "invalid_cursor", "after"),
        ("invalid_cursor", "after"),
    ),
    (
        "GET",
        "/v1/conversations?after={id}",
        None,
        (400, "invalid_cursor", "after"),
        ("invalid_cursor", "after"),
    ),
    (
        "GET",
        "/v1/conversations/{chat}/items?after={id}",
        None,
        (400, "invalid_cursor", "after"),
        ("invalid_cursor", "after"),
    ),
    (
        "GET",
        "/v1/conversations/{id}",
        None,
        (404, "chat_not_found", None),
        ("invalid_chat_id", "chat_id"),
    ),
    (
        "GET",
        "/v1/conversations/{id}/stream",
        None,
        (404, "chat_not_found", None),
        ("invalid_chat_id", "chat_id"),
    ),
    (
        "GET",
        "/api/chat/{id}/messages",
        None,
        (404, "chat_not_found", None),
        ("invalid_chat_id", "id"),
    ),
    (
        "GET",
        "/api/chat/{id}/stream",
        None,
        (404, "chat_not_found", None),
        ("invalid_chat_id", "id"),
    ),
    (
        "DELETE",
        "/api/chat?id={id}",
        None,
        (404, "chat_not_found", None),
        ("invalid_chat_id", "id"),
    ),
]


@pytest.fixture
async def proxy(start_proxy) -> ProxyServer:
    return await start_proxy(**{"limits.ip_rate": "0"})  # many requests; limits are elsewhere


async def snapshot(store: Store) -> tuple[list[Any], list[Any]]:
    messages = [(m.id, m.status, m.data, m.metadata) for m in await all_messages(store)]
    chats = [(c.id, c.head_id, c.title, c.metadata) for c in await all_chats(store)]
    return messages, chats


async def answer_of(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    """The status and the error of a request that must fail in OpenAI's exact shape."""
    async with http.request(method, url, **kwargs) as resp:
        assert resp.content_type == "application/json", (method, url, resp.status)
        body = await resp.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    return resp.status, error


@pytest.fixture
async def existing(client: openai.AsyncOpenAI) -> dict[str, str]:
    """A conversation and a stored completion of the caller, for the routes under them."""
    conv = await client.conversations.create(items=[{"role": "user", "content": "hi"}])
    done = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "a question"}]
    )
    completions = await client.chat.completions.list()
    assert [c.choices[0].message.content for c in completions.data] == [
        done.choices[0].message.content
    ]
    return {"chat": conv.id, "done": completions.data[0].id}


async def test_every_id_route_answers_long_unknown_ids_with_their_not_found_and_malformed_with_400(
    proxy: ProxyServer,
    store: Store,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    existing: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    base = proxy.url.removesuffix("/v1")
    before, sent = await snapshot(store), len(upstream.chat_requests)
    got: dict[tuple[str, str, str], tuple[int, str, str | None]] = {}
    expected: dict[tuple[str, str, str], tuple[int, str, str | None]] = {}
    for method, path, body, unknown, (bad_code, bad_param) in ROUTES:
        for value in [*LONG, *MALFORMED]:
            url = base + path.format(id=value, **existing)
            status, error = await answer_of(http, method, url, json=body)
            key = (method, path, value)
            got[key] = (status, error["code"], error["param"])
            if value in LONG:
                expected[key] = unknown
                if status == 404:
                    assert value in error["message"]  # a well-formed id is named
            else:
                expected[key] = (400, bad_code, bad_param)
                assert value not in error["message"]
    assert got == expected
    assert await snapshot(store) == before
    assert len(upstream.chat_requests) == sent
    assert [r for r in caplog.records if r.exc_info] == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("parent", [*LONG, "bad.id", "x" * 129])
async def test_x_chat_parent_of_any_length_is_a_400_before_the_upstream(
    proxy: ProxyServer,
    store: Store,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    existing: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    parent: str,
) -> None:
    before, sent = await snapshot(store), len(upstream.chat_requests)
    body = {"model": "m", "messages": [{"role": "user", "content": "go on"}]}
    for chat_id in (None, existing["chat"]):
        headers = {"X-Chat-History": "server", "X-Chat-Parent": parent}
        if chat_id is not None:
            headers["X-Chat-Id"] = chat_id
        url = f"{proxy.url}/chat/completions"
        status, error = await answer_of(http, "POST", url, json=body, headers=headers)
        assert (status, error["code"], error["param"]) == (400, "invalid_parent", "X-Chat-Parent")
    assert await snapshot(store) == before
    assert len(upstream.chat_requests) == sent
    assert [r for r in caplog.records if r.exc_info] == []


@pytest.mark.parametrize("value", [*LONG, "x" * 128])
async def test_a_long_item_id_with_an_item_suffix_is_404(
    proxy: ProxyServer, http: aiohttp.ClientSession, existing: dict[str, str], value: str
) -> None:
    # ``{message_id}_{k}`` names the k-th further item of a message: the message part may be
    # longer than a message id too.
    item = value[:125] + "_1"
    url = f"{proxy.url}/conversations/{existing['chat']}/items/{item}"
    status, error = await answer_of(http, "GET", url)
    assert (status, error["code"]) == (404, "item_not_found")
