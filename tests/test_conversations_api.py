"""The conversations management API (SPEC §4) driven like a user: the official openai SDK's
``client.conversations`` end to end, raw HTTP for the extensions (list, ``/messages``, votes),
chats made through ``POST /v1/chat/completions`` so real threading is used, and the store
queried to prove that deleted history is gone."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest

from chatproxy.appkeys import GENERATIONS, STORE
from chatproxy.server import ProxyServer
from chatproxy.store.models import Chat, Message, Vote
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply
from tests.util import all_messages, eventually, message

QUESTION = {"role": "user", "content": "What is the capital of France?"}
# These tests make many requests; the per-IP limit is tested elsewhere.
UNLIMITED = {"limits.ip_rate": "0"}
TEAM = {**UNLIMITED, "auth.mode": "header", "server.trusted_proxies": ["127.0.0.0/8"]}


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    user: str | None = None,
    json: Any = None,
    data: bytes | None = None,
) -> tuple[int, Any]:
    """One raw HTTP request; the status and the JSON body."""
    headers = {"X-User-Id": user} if user else {}
    async with http.request(method, url, json=json, data=data, headers=headers) as resp:
        return resp.status, await resp.json()


def sdk(proxy: ProxyServer, user: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=proxy.url, api_key="sk-client", max_retries=0, default_headers={"X-User-Id": user}
    )


def assert_error(
    status: int, body: Any, expected: int, code: str, param: str | None = None
) -> None:
    assert status == expected, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param


async def ask(client: openai.AsyncOpenAI, messages: list[dict[str, Any]]) -> tuple[str, str]:
    """A chat completion through the proxy: ``(chat id, answer's message id)``."""
    raw = await client.chat.completions.with_raw_response.create(
        model="fake-model", messages=messages
    )
    return raw.headers["x-chat-id"], raw.headers["x-message-id"]


@pytest.fixture
async def proxy(start_proxy) -> ProxyServer:
    return await start_proxy(**UNLIMITED)


@pytest.fixture
async def team(start_proxy) -> ProxyServer:
    """A proxy behind a trusted gateway: ``X-User-Id`` picks the user."""
    return await start_proxy(**TEAM)


# -- the SDK end to end ----------------------------------------------------------------------


async def test_sdk_creates_retrieves_updates_and_deletes_a_conversation(
    client: openai.AsyncOpenAI, proxy: ProxyServer, http: aiohttp.ClientSession, store: Store
) -> None:
    long_question = "Plan a trip " + "through the mountains and the lakes " * 5
    conv = await client.conversations.create(
        metadata={"project": "travel"},
        items=[
            {"type": "message", "role": "system", "content": "Be brief."},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": long_question}],
            },
        ],
    )
    assert conv.object == "conversation"
    assert conv.id.startswith("chat_") and len(conv.id) == 5 + 24
    assert conv.metadata == {"project": "travel"}
    assert isinstance(conv.created_at, int) and abs(conv.created_at - conv.updated_at) <= 1
    extra = conv.model_extra or {}
    assert extra["visibility"] == "private" and extra["message_count"] == 2
    # The title comes from the first user message, trimmed to about 80 characters.
    assert extra["title"].startswith("Plan a trip through") and extra["title"].endswith("…")
    assert len(extra["title"]) <= 81

    again = await client.conversations.retrieve(conv.id)
    assert again.model_dump() == conv.model_dump()

    # Metadata is replaced whole, as OpenAI does; title and visibility are left alone.
    updated = await client.conversations.update(conv.id, metadata={"stage": "draft"})
    assert updated.metadata == {"stage": "draft"}
    assert (updated.model_extra or {})["title"] == extra["title"]
    status, body = await call(
        http,
        "POST",
        f"{proxy.url}/conversations/{conv.id}",
        json={"title": "Alps", "visibility": "public"},
    )
    assert status == 200
    assert (body["title"], body["visibility"], body["metadata"]) == (
        "Alps",
        "public",
        {"stage": "draft"},
    )

    deleted = await client.conversations.delete(conv.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (conv.id, "conversation.deleted", True)
    with pytest.raises(openai.NotFoundError) as err:
        await client.conversations.retrieve(conv.id)
    assert err.value.code == "chat_not_found"
    assert await all_messages(store) == []


async def test_created_items_thread_a_later_chat_completion_that_resends_them(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, store: Store
) -> None:
    conv = await client.conversations.create(
        items=[
            {"type": "message", "role": "user", "content": "Hi"},
            {"type": "message", "role": "assistant", "content": "Hello! What do you need?"},
        ]
    )
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! What do you need?"},
        {"role": "user", "content": "A haiku."},
    ]
    chat_id, answer_id = await ask(client, history)
    assert chat_id == conv.id
    # Nothing already stored is stored twice: 2 created + the new question + the answer.
    assert [m.role for m in await all_messages(store)] == ["user", "assistant", "user", "assistant"]
    assert (await client.conversations.retrieve(conv.id)).model_extra["message_count"] == 4
    items = await client.conversations.items.list(conv.id, order="asc")
    assert [i.id for i in items.data][-1] == answer_id


async def test_items_are_the_active_branch_with_tool_calls_paged_both_ways(
    client: openai.AsyncOpenAI, store: Store
) -> None:
    conv = await client.conversations.create(
        items=[{"role": "user", "content": "Weather in Paris?"}]
    )
    created = await client.conversations.items.create(
        conv.id,
        items=[
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Checking."}],
            },
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "weather",
                "arguments": '{"city":"Paris"}',
            },
            {"type": "function_call", "call_id": "call_2", "name": "time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
            {"type": "function_call_output", "call_id": "call_2", "output": "noon"},
            {"type": "message", "role": "assistant", "content": "18C at noon."},
        ],
    )
    kinds = [(i.type, getattr(i, "role", None)) for i in created.data]
    assert kinds == [
        ("message", "assistant"),
        ("function_call", None),
        ("function_call", None),
        ("function_call_output", None),
        ("function_call_output", None),
        ("message", "assistant"),
    ]
    text, call_1, call_2 = created.data[:3]
    # The text and both calls are one stored answer, as a chat completion carries them.
    assert call_1.id == f"{text.id}_1" and call_2.id == f"{text.id}_2"
    assert (call_1.call_id, call_1.name, call_1.arguments) == (
        "call_1",
        "weather",
        '{"city":"Paris"}',
    )
    assert text.content[0].type == "output_text" and text.content[0].annotations == []
    answer = await message(store, text.id)
    assert answer.data["tool_calls"][1]["function"]["name"] == "time"
    assert created.data[3].output == "18C"

    everything = await client.conversations.items.list(conv.id, order="asc", limit=100)
    assert [i.id for i in everything.data] == [everything.data[0].id, *[i.id for i in created.data]]
    assert everything.data[0].content[0].text == "Weather in Paris?"
    # Default order is newest first; the SDK pages with after=last_id.
    newest_first = [i.id async for i in client.conversations.items.list(conv.id, limit=3)]
    assert newest_first == [i.id for i in reversed(everything.data)]
    first_page = await client.conversations.items.list(conv.id, limit=3)
    assert first_page.has_more is True and first_page.last_id == newest_first[2]

    got = await client.conversations.items.retrieve(call_2.id, conversation_id=conv.id)
    assert (got.type, got.call_id) == ("function_call", "call_2")

    # Deleting an item deletes its message and everything after it; the head moves back.
    after = await client.conversations.items.delete(created.data[3].id, conversation_id=conv.id)
    assert after.object == "conversation" and after.model_extra["message_count"] == 2
    remaining = await client.conversations.items.list(conv.id, order="asc")
    assert [i.id for i in remaining.data] == [everything.data[0].id, text.id, call_1.id, call_2.id]
    assert len(await all_messages(store)) == 2
    with pytest.raises(openai.NotFoundError) as err:
        await client.conversations.items.retrieve(created.data[5].id, conversation_id=conv.id)
    assert err.value.code == "item_not_found"


# -- the list --------------------------------------------------------------------------------


async def test_listing_pages_every_chat_once_newest_first_while_new_chats_arrive(
    client: openai.AsyncOpenAI, proxy: ProxyServer, http: aiohttp.ClientSession
) -> None:
    ids = [(await client.conversations.create(metadata={"n": str(i)})).id for i in range(45)]
    newest_first = ids[::-1]
    url = f"{proxy.url}/conversations"

    status, page1 = await call(http, "GET", f"{url}?limit=20")
    assert status == 200 and page1["object"] == "list"
    assert [c["id"] for c in page1["data"]] == newest_first[:20]
    assert (page1["first_id"], page1["last_id"], page1["has_more"]) == (
        newest_first[0],
        newest_first[19],
        True,
    )
    # A chat created between pages goes to the front: it does not shift the next page.
    newcomer = await client.conversations.create()
    _, page2 = await call(http, "GET", f"{url}?limit=20&after={page1['last_id']}")
    assert [c["id"] for c in page2["data"]] == newest_first[20:40] and page2["has_more"] is True
    _, page3 = await call(http, "GET", f"{url}?limit=20&after={page2['last_id']}")
    assert [c["id"] for c in page3["data"]] == newest_first[40:] and page3["has_more"] is False

    _, default = await call(http, "GET", url)
    assert [c["id"] for c in default["data"]] == [newcomer.id, *newest_first[:19]]
    _, everything = await call(http, "GET", f"{url}?limit=100")
    assert len(everything["data"]) == 46 and everything["has_more"] is False
    _, exact = await call(http, "GET", f"{url}?limit=46")
    assert exact["has_more"] is False


async def test_listing_filters_by_metadata_and_finds_words_in_titles_and_messages(
    client: openai.AsyncOpenAI,
    upstream: FakeUpstream,
    proxy: ProxyServer,
    http: aiohttp.ClientSession,
) -> None:
    upstream.enqueue(
        Reply(content="Otters hold hands while they sleep: a Zanzibarish fact."),
        Reply(content="Rain, mostly."),
        Reply(content="It is 100% likely."),
    )
    otters, _ = await ask(client, [{"role": "user", "content": "Tell me about otters"}])
    weather, _ = await ask(client, [{"role": "user", "content": "Weather in axb city?"}])
    odds, _ = await ask(client, [{"role": "user", "content": "What are the odds?"}])
    await client.conversations.update(otters, metadata={"topic": "animals", "lang": "en"})
    await client.conversations.update(weather, metadata={"topic": "weather", "lang": "en"})
    await client.conversations.update(odds, metadata={"lang": "fr"})

    async def found(query: str) -> list[str]:
        status, body = await call(http, "GET", f"{proxy.url}/conversations?{query}")
        assert status == 200, body
        return [c["id"] for c in body["data"]]

    assert await found("metadata[lang]=en") == [weather, otters]
    assert await found("metadata[lang]=en&metadata[topic]=animals") == [otters]
    assert await found("metadata[lang]=de") == []
    # The word is only in the stored answer, never in a title; the search ignores case.
    assert await found("q=zanzibarISH") == [otters]
    assert await found("q=OTTERS") == [otters]
    # % and _ are word separators, never wildcards: "100%" is the word 100, "a_b" the phrase "a b".
    assert await found("q=100%25") == [odds]
    assert await found("q=a_b") == []
    assert await found("q=axb") == [weather]
    assert await found("q=otters&metadata[lang]=fr") == []


# -- access ----------------------------------------------------------------------------------


async def test_another_users_private_chat_is_404_on_every_endpoint(
    team: ProxyServer, http: aiohttp.ClientSession
) -> None:
    async with sdk(team, "alice") as alice:
        conv = await alice.conversations.create(items=[{"role": "user", "content": "secret plans"}])
        item_id = (await alice.conversations.items.list(conv.id)).data[0].id
    base = f"{team.url}/conversations/{conv.id}"
    attempts = [
        ("GET", base, None),
        ("POST", base, {"metadata": {"a": "b"}}),
        ("DELETE", base, None),
        ("GET", f"{base}/items", None),
        ("POST", f"{base}/items", {"items": [{"role": "user", "content": "hi"}]}),
        ("GET", f"{base}/items/{item_id}", None),
        ("DELETE", f"{base}/items/{item_id}", None),
        ("GET", f"{base}/messages", None),
        ("GET", f"{base}/messages?all=true", None),
        ("PUT", f"{base}/messages/{item_id}/vote", {"up": True}),
        ("GET", f"{base}/stream", None),
    ]
    for method, url, body in attempts:
        status, answer = await call(http, method, url, user="bob", json=body)
        assert_error(status, answer, 404, "chat_not_found")
        # Exactly what a chat that does not exist answers.
        status, missing = await call(
            http, method, url.replace(conv.id, "chat_nope"), user="bob", json=body
        )
        assert (status, missing["error"]["code"]) == (404, "chat_not_found")
    _, listed = await call(http, "GET", f"{team.url}/conversations", user="bob")
    assert listed["data"] == []
    status, body = await call(http, "GET", f"{team.url}/conversations?after={conv.id}", user="bob")
    assert_error(status, body, 400, "invalid_cursor", "after")
    # Alice still has all of it.
    status, body = await call(http, "GET", f"{base}/messages", user="alice")
    assert status == 200 and body["data"] == [{"role": "user", "content": "secret plans"}]


async def test_a_public_chat_is_readable_and_votable_by_others_but_not_writable(
    team: ProxyServer, http: aiohttp.ClientSession
) -> None:
    async with sdk(team, "alice") as alice:
        conv = await alice.conversations.create(
            items=[
                {"role": "user", "content": "Share this"},
                {"role": "assistant", "content": "Shared."},
            ],
            extra_body={"visibility": "public"},
        )
        answer_id = (await alice.conversations.items.list(conv.id)).data[0].id
    async with sdk(team, "bob") as bob:
        seen = await bob.conversations.retrieve(conv.id)
        assert seen.model_extra["visibility"] == "public"
        items = await bob.conversations.items.list(conv.id, order="asc")
        assert [i.role for i in items.data] == ["user", "assistant"]
        assert (
            await bob.conversations.items.retrieve(answer_id, conversation_id=conv.id)
        ).id == answer_id
        for attempt in (
            bob.conversations.update(conv.id, metadata={"mine": "now"}),
            bob.conversations.delete(conv.id),
            bob.conversations.items.create(conv.id, items=[{"role": "user", "content": "x"}]),
            bob.conversations.items.delete(answer_id, conversation_id=conv.id),
        ):
            with pytest.raises(openai.PermissionDeniedError) as err:
                await attempt
            assert err.value.code == "permission_denied"
    base = f"{team.url}/conversations/{conv.id}"
    status, body = await call(http, "GET", f"{base}/messages", user="bob")
    assert status == 200 and [m["role"] for m in body["data"]] == ["user", "assistant"]
    status, body = await call(
        http, "PUT", f"{base}/messages/{answer_id}/vote", user="bob", json={"up": True}
    )
    assert status == 200 and body == {
        "id": answer_id,
        "object": "vote",
        "up": True,
        "user_id": "bob",
    }
    # Not bob's chat: it is not in bob's list.
    _, listed = await call(http, "GET", f"{team.url}/conversations", user="bob")
    assert listed["data"] == []
    store = team.app[STORE]
    assert len(await store.read(lambda: Message.filter(chat_id=conv.id))) == 2
    chat = await store.get_chat(conv.id)
    assert chat is not None and chat.metadata == {}


# -- deleting --------------------------------------------------------------------------------


async def test_deleting_a_conversation_removes_every_message_and_vote_of_it(
    team: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    store = team.app[STORE]
    upstream.enqueue(Reply(content="One."), Reply(content="Two."), Reply(content="Kept."))
    async with sdk(team, "alice") as alice:
        chat_id, first = await ask(alice, [QUESTION])
        _, second = await ask(alice, [QUESTION])  # a regenerate: a sibling branch
        other_id, kept = await ask(alice, [{"role": "user", "content": "Another chat"}])
        await alice.conversations.update(chat_id, metadata={}, extra_body={"visibility": "public"})
    base = f"{team.url}/conversations/{chat_id}"
    for user, message_id in (("alice", first), ("alice", second), ("bob", second)):
        status, _ = await call(
            http, "PUT", f"{base}/messages/{message_id}/vote", user=user, json={"up": True}
        )
        assert status == 200
    await call(
        http,
        "PUT",
        f"{team.url}/conversations/{other_id}/messages/{kept}/vote",
        user="alice",
        json={"up": False},
    )
    assert len(await store.read(lambda: Vote.filter(chat_id=chat_id))) == 3

    status, body = await call(http, "DELETE", base, user="alice")
    assert status == 200 and body == {
        "id": chat_id,
        "object": "conversation.deleted",
        "deleted": True,
    }

    assert await store.read(lambda: Chat.filter(id=chat_id)) == []
    assert await store.read(lambda: Message.filter(chat_id=chat_id)) == []
    assert await store.read(lambda: Vote.filter(chat_id=chat_id)) == []
    assert await store.read(lambda: Vote.filter(message_id__in=[first, second])) == []
    # The other chat is untouched.
    assert len(await store.read(lambda: Message.filter(chat_id=other_id))) == 2
    assert len(await store.read(lambda: Vote.filter(chat_id=other_id))) == 1
    for url in (base, f"{base}/messages", f"{base}/stream"):
        status, body = await call(http, "GET", url, user="alice")
        assert_error(status, body, 404, "chat_not_found")
    status, body = await call(http, "DELETE", base, user="alice")
    assert_error(status, body, 404, "chat_not_found")


async def test_a_conversation_cannot_be_deleted_while_an_answer_is_generated(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, proxy: ProxyServer, store: Store
) -> None:
    upstream.enqueue(Reply(content="slow words arriving one by one", chunk_delay=0.1))
    async with client.chat.completions.with_streaming_response.create(
        model="fake-model", messages=[QUESTION], stream=True
    ) as response:
        chat_id = response.headers["x-chat-id"]
        with pytest.raises(openai.ConflictError) as err:
            await client.conversations.delete(chat_id)
        assert err.value.code == "chat_busy"
        async for _ in await response.parse():
            pass

    async def idle() -> bool:
        return not proxy.app[GENERATIONS].busy(chat_id)

    await eventually(idle)
    assert (await client.conversations.delete(chat_id)).deleted is True
    assert await all_messages(store) == []


# -- the extensions: /messages and votes -----------------------------------------------------


async def test_messages_give_the_active_branch_and_all_branches_after_a_regenerate(
    client: openai.AsyncOpenAI,
    upstream: FakeUpstream,
    proxy: ProxyServer,
    http: aiohttp.ClientSession,
    store: Store,
) -> None:
    upstream.enqueue(Reply(content="Paris."), Reply(content="It is Paris.", reasoning="Easy."))
    chat_id, first = await ask(client, [QUESTION])
    _, second = await ask(client, [QUESTION])
    question_id = (await message(store, first)).parent_id

    status, body = await call(http, "GET", f"{proxy.url}/conversations/{chat_id}/messages")
    assert status == 200 and body["object"] == "list" and body["head_id"] == second
    # Ready to send back upstream: chat-completions messages, reasoning left out.
    assert body["data"] == [QUESTION, {"role": "assistant", "content": "It is Paris."}]

    status, body = await call(http, "GET", f"{proxy.url}/conversations/{chat_id}/messages?all=true")
    assert status == 200
    rows = [(m["id"], m["parent_id"], m["role"], m["content"], m["status"]) for m in body["data"]]
    assert rows == [
        (question_id, None, "user", QUESTION["content"], "completed"),
        (first, question_id, "assistant", "Paris.", "completed"),
        (second, question_id, "assistant", "It is Paris.", "completed"),
    ]
    assert body["data"][2]["reasoning_content"] == "Easy."

    items = await client.conversations.items.list(chat_id, order="asc")
    assert [i.id for i in items.data] == [question_id, second]
    # Any message of the chat can be fetched as an item, the other branch's too.
    other = await client.conversations.items.retrieve(first, conversation_id=chat_id)
    assert other.content[0].text == "Paris."


async def test_a_vote_is_one_per_user_and_message_and_a_new_one_replaces_it(
    client: openai.AsyncOpenAI,
    upstream: FakeUpstream,
    proxy: ProxyServer,
    http: aiohttp.ClientSession,
    store: Store,
) -> None:
    upstream.enqueue(Reply(content="Paris."), Reply(content="Berlin."))
    chat_id, answer = await ask(client, [QUESTION])
    _, other_answer = await ask(client, [{"role": "user", "content": "And Germany?"}])
    url = f"{proxy.url}/conversations/{chat_id}/messages/{answer}/vote"
    status, body = await call(http, "PUT", url, json={"up": True})
    assert status == 200 and body == {
        "id": answer,
        "object": "vote",
        "up": True,
        "user_id": "local",
    }
    status, body = await call(http, "PUT", url, json={"up": False})
    assert status == 200 and body["up"] is False
    votes = await store.read(lambda: Vote.all())
    assert [(v.message_id, v.user_id, v.up) for v in votes] == [(answer, "local", False)]
    # A message of another chat is not a message of this one.
    wrong = f"{proxy.url}/conversations/{chat_id}/messages/{other_answer}/vote"
    status, body = await call(http, "PUT", wrong, json={"up": True})
    assert_error(status, body, 404, "message_not_found")


# -- bad input -------------------------------------------------------------------------------


async def test_bad_input_is_a_400_in_openais_shape_and_changes_nothing(
    client: openai.AsyncOpenAI,
    proxy: ProxyServer,
    http: aiohttp.ClientSession,
    upstream: FakeUpstream,
    store: Store,
) -> None:
    conv = await client.conversations.create(items=[{"role": "user", "content": "hi"}])
    before = [(m.id, m.data) for m in await all_messages(store)]
    url = f"{proxy.url}/conversations"
    base = f"{url}/{conv.id}"
    item_id = (await client.conversations.items.list(conv.id)).data[0].id
    cases: list[tuple[str, str, Any, str, str | None]] = [
        ("GET", f"{url}/bad%20id", None, "invalid_chat_id", "chat_id"),
        ("GET", f"{url}/{'x' * 129}", None, "invalid_chat_id", "chat_id"),
        ("DELETE", f"{url}/bad.id", None, "invalid_chat_id", "chat_id"),
        ("GET", f"{base}/items/bad%20item", None, "invalid_item_id", "item_id"),
        ("DELETE", f"{base}/items/bad$item", None, "invalid_item_id", "item_id"),
        ("PUT", f"{base}/messages/b%C3%A4d/vote", {"up": True}, "invalid_message_id", "message_id"),
        ("GET", f"{url}?limit=0", None, "invalid_value", "limit"),
        ("GET", f"{url}?limit=101", None, "invalid_value", "limit"),
        ("GET", f"{url}?limit=ten", None, "invalid_value", "limit"),
        ("GET", f"{url}?limit=-5", None, "invalid_value", "limit"),
        ("GET", f"{base}/items?limit=1000", None, "invalid_value", "limit"),
        ("GET", f"{base}/items?order=sideways", None, "invalid_value", "order"),
        ("GET", f"{base}/messages?all=maybe", None, "invalid_value", "all"),
        ("GET", f"{url}?after=chat_unknown", None, "invalid_cursor", "after"),
        ("GET", f"{url}?after=not%20an%20id", None, "invalid_cursor", "after"),
        ("GET", f"{base}/items?after=msg_unknown", None, "invalid_cursor", "after"),
        ("POST", url, {"metadata": ["a"]}, "invalid_type", "metadata"),
        ("POST", url, {"metadata": {"n": 1}}, "invalid_type", "metadata"),
        ("POST", url, {"metadata": {str(i): "v" for i in range(17)}}, "invalid_value", "metadata"),
        ("POST", url, {"title": 5}, "invalid_type", "title"),
        ("POST", url, {"visibility": "secret"}, "invalid_value", "visibility"),
        ("POST", url, {"visibility": True}, "invalid_type", "visibility"),
        ("POST", url, {"items": "hello"}, "invalid_type", "items"),
        (
            "POST",
            url,
            {"items": [{"role": "wizard", "content": "x"}]},
            "invalid_value",
            "items[0].role",
        ),
        (
            "POST",
            url,
            {"items": [{"role": "user"}]},
            "missing_required_parameter",
            "items[0].content",
        ),
        (
            "POST",
            url,
            {"items": [{"type": "reasoning", "summary": []}]},
            "invalid_value",
            "items[0].type",
        ),
        (
            "POST",
            url,
            {"items": [{"type": "function_call", "call_id": 1, "name": "f", "arguments": "{}"}]},
            "invalid_type",
            "items[0].call_id",
        ),
        ("POST", url, {"colour": "red"}, "unknown_parameter", "colour"),
        ("POST", f"{base}/items", {}, "missing_required_parameter", "items"),
        ("POST", base, {"title": ["x"]}, "invalid_type", "title"),
        ("PUT", f"{base}/messages/{item_id}/vote", {"up": "yes"}, "invalid_type", "up"),
        ("PUT", f"{base}/messages/{item_id}/vote", {}, "missing_required_parameter", "up"),
    ]
    for method, target, body, code, param in cases:
        status, answer = await call(http, method, target, json=body)
        error = answer["error"]
        assert (status, error["code"], error["param"]) == (400, code, param), (method, target)
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["message"]
    for target in (url, base, f"{base}/items"):
        status, answer = await call(http, "POST", target, data=b'{"metadata": ')
        assert_error(status, answer, 400, "invalid_json")
        status, answer = await call(http, "POST", target, data=b"[1, 2]")
        assert_error(status, answer, 400, "invalid_type")
    # The SDK raises its own error type for them.
    with pytest.raises(openai.BadRequestError) as err:
        await client.conversations.items.list(conv.id, limit=500)
    assert err.value.code == "invalid_value"
    # Another method on these paths is refused here, never forwarded upstream.
    status, answer = await call(http, "PATCH", base, json={})
    assert status == 405 and answer["error"]["code"] == "method_not_allowed"
    assert upstream.requests == []
    assert [(m.id, m.data) for m in await all_messages(store)] == before
    _, listed = await call(http, "GET", url)
    assert [c["id"] for c in listed["data"]] == [conv.id]


async def test_no_title_is_made_up_when_titles_are_off(
    start_proxy, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**UNLIMITED, **{"chats.title": "none"})
    status, body = await call(
        http,
        "POST",
        f"{proxy.url}/conversations",
        json={"items": [{"role": "user", "content": "hi"}]},
    )
    assert status == 200 and body["title"] is None
    status, body = await call(http, "POST", f"{proxy.url}/conversations", json={"title": "Mine"})
    assert status == 200 and body["title"] == "Mine" and body["message_count"] == 0
