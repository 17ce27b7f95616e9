"""POST and DELETE /api/chat with the body and answers of the Vercel Chat SDK (the chatbot
template, one of the apps whose route chatproxy stands in for): ``{id, message,
selectedChatModel, selectedVisibilityType}`` accepted as sent, and ``DELETE /api/chat?id=``
answering with the deleted chat."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest

from chatproxy.appkeys import STORE
from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply
from tests.aisdk import base, parts, post_chat, text_of, ui_messages
from tests.conftest import StartProxy
from tests.util import all_chats, all_messages

HEADER_MODE = {"auth.mode": "header", "server.trusted_proxies": ["127.0.0.1/32"]}
ALICE, BOB = {"X-User-Id": "alice"}, {"X-User-Id": "bob"}


def chat_sdk_message(text: str) -> dict[str, Any]:
    """A user message as the Chat SDK's page sends it (uuid ids, text parts)."""
    return {"id": str(uuid.uuid4()), "role": "user", "parts": [{"type": "text", "text": text}]}


def chat_sdk_body(chat_id: str, message: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "id": chat_id,
        "message": message,
        "selectedChatModel": "chat-model",
        "selectedVisibilityType": "private",
        **fields,
    }


async def test_the_chat_sdk_body_is_answered_and_threaded_with_its_model(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession, store: Store
) -> None:
    upstream.enqueue(Reply(content="Hello from the chatbot."), Reply(content="Second answer."))
    chat_id = str(uuid.uuid4())
    first, second = chat_sdk_message("Hi"), chat_sdk_message("And again")
    status, headers, raw = await post_chat(http, proxy, chat_sdk_body(chat_id, first), model=None)
    assert (status, text_of(raw)) == (200, "Hello from the chatbot.")
    assert parts(raw)[0] == {"type": "start", "messageId": headers["X-Message-Id"]}
    status, _, raw = await post_chat(http, proxy, chat_sdk_body(chat_id, second), model=None)
    assert (status, text_of(raw)) == (200, "Second answer.")
    assert [r.json["model"] for r in upstream.chat_requests] == ["chat-model", "chat-model"]
    assert upstream.chat_requests[1].json["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello from the chatbot."},
        {"role": "user", "content": "And again"},
    ]
    for key in ("selectedChatModel", "selectedVisibilityType", "message", "id"):
        assert key not in upstream.chat_requests[0].json
    assert [c.id for c in await all_chats(store)] == [chat_id]
    reloaded = await ui_messages(http, proxy, chat_id)
    assert [m["id"] for m in reloaded[::2]] == [first["id"], second["id"]]
    stored = await all_messages(store)
    assert [(m.role, m.model) for m in stored if m.role == "assistant"] == [
        ("assistant", "chat-model"),
        ("assistant", "chat-model"),
    ]


async def test_a_model_named_model_wins_over_selected_chat_model(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = chat_sdk_body("c1", chat_sdk_message("Hi"), model="explicit-model")
    status, _, _ = await post_chat(http, proxy, body, model=None)
    assert status == 200
    assert upstream.chat_requests[0].json["model"] == "explicit-model"


async def test_selected_visibility_type_sets_a_new_chats_visibility_only(
    start_proxy: StartProxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**HEADER_MODE)
    shared = chat_sdk_body("shared", chat_sdk_message("For everyone"))
    shared["selectedVisibilityType"] = "public"
    status, _, _ = await post_chat(http, proxy, shared, model=None, headers=ALICE)
    assert status == 200
    mine = chat_sdk_body("mine", chat_sdk_message("For me"))
    status, _, _ = await post_chat(http, proxy, mine, model=None, headers=ALICE)
    assert status == 200
    # Bob reads the public chat, not the private one (which does not exist for him).
    assert len(await ui_messages(http, proxy, "shared", headers=BOB)) == 2
    async with http.get(f"{base(proxy)}/api/chat/mine/messages", headers=BOB) as resp:
        assert resp.status == 404
    # A later message does not change an existing chat's visibility, either way.
    later = chat_sdk_body("mine", chat_sdk_message("Still mine"), selectedVisibilityType="public")
    status, _, _ = await post_chat(http, proxy, later, model=None, headers=ALICE)
    assert status == 200
    async with http.get(f"{base(proxy)}/api/chat/mine/messages", headers=BOB) as resp:
        assert resp.status == 404
    store = proxy.app[STORE]
    assert {c.id: c.visibility for c in await all_chats(store)} == {
        "shared": "public",
        "mine": "private",
    }


async def test_chat_sdk_file_parts_go_upstream_as_images(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    message = chat_sdk_message("What is this?")
    url = "https://example.test/cat.png"
    message["parts"].append(
        {"type": "file", "mediaType": "image/png", "name": "cat.png", "url": url}
    )
    status, _, _ = await post_chat(http, proxy, chat_sdk_body("c1", message), model=None)
    assert status == 200
    assert upstream.chat_requests[0].json["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]


@pytest.mark.parametrize(
    ("fields", "code", "param"),
    [
        ({"selectedVisibilityType": "secret"}, "invalid_value", "selectedVisibilityType"),
        ({"selectedVisibilityType": 1}, "invalid_value", "selectedVisibilityType"),
        ({"selectedChatModel": 42}, "invalid_type", "selectedChatModel"),
        ({"selectedChatModel": ""}, "invalid_type", "selectedChatModel"),
        ({"selectedChatModel": "m" * 300}, "invalid_value", "selectedChatModel"),
        ({"selectedChatModel": None}, "missing_required_parameter", "model"),
    ],
)
async def test_a_bad_chat_sdk_field_is_a_400_naming_it_and_nothing_is_stored(
    proxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    store: Store,
    fields: dict[str, Any],
    code: str,
    param: str,
) -> None:
    body = chat_sdk_body("c1", chat_sdk_message("Hi"), **fields)
    status, _, raw = await post_chat(http, proxy, body, model=None)
    error = orjson.loads(raw)["error"]
    assert (status, error["code"], error["param"], error["type"]) == (
        400,
        code,
        param,
        "invalid_request_error",
    )
    assert set(error) == {"message", "type", "param", "code"}
    assert upstream.chat_requests == []
    assert await all_chats(store) == []
    assert await all_messages(store) == []


async def test_delete_answers_with_the_deleted_chat_as_the_chat_sdk_does(
    start_proxy: StartProxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**HEADER_MODE)
    body = chat_sdk_body("c1", chat_sdk_message("Plan a trip to Lisbon"))
    body["selectedVisibilityType"] = "public"
    await post_chat(http, proxy, body, model=None, headers=ALICE)
    store = proxy.app[STORE]
    (chat,) = await all_chats(store)
    async with http.delete(f"{base(proxy)}/api/chat", params={"id": "c1"}, headers=ALICE) as resp:
        assert resp.status == 200
        deleted = await resp.json()
    assert deleted == {
        "id": "c1",
        "object": "chat.deleted",
        "deleted": True,
        "title": "Plan a trip to Lisbon",
        "userId": "alice",
        "visibility": "public",
        "createdAt": deleted["createdAt"],
    }
    # An ISO 8601 UTC time with milliseconds, as JavaScript's Date.toJSON() writes it.
    assert deleted["createdAt"].endswith("Z") and len(deleted["createdAt"]) == 24
    created = datetime.fromisoformat(deleted["createdAt"])
    assert created == chat.created_at.astimezone(UTC).replace(
        microsecond=chat.created_at.microsecond // 1000 * 1000
    )
    assert await all_chats(store) == []
    assert await all_messages(store) == []


async def test_a_model_not_in_aisdk_models_is_a_400_and_nothing_is_stored(
    start_proxy: StartProxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"aisdk.models": ["chat-model", "chat-model-reasoning"]})
    store = proxy.app[STORE]
    offered = chat_sdk_body("c1", chat_sdk_message("Hi"))
    status, _, _ = await post_chat(http, proxy, offered, model=None)
    assert status == 200
    other = chat_sdk_body("c2", chat_sdk_message("Hi"), selectedChatModel="gpt-secret")
    status, _, raw = await post_chat(http, proxy, other, model=None)
    error = orjson.loads(raw)["error"]
    assert (status, error["code"], error["param"]) == (400, "model_not_found", "model")
    assert "gpt-secret" not in error["message"]
    assert len(upstream.chat_requests) == 1
    assert [c.id for c in await all_chats(store)] == ["c1"]
