"""Stored completions (SPEC §4) through the official SDK: ``client.chat.completions.list /
retrieve / update / delete`` and ``messages.list``, per-user scoping, public chats, paging,
deletion that really deletes, and bad input that changes nothing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionDeleted, ChatCompletionStoreMessage

from chatproxy.server import ProxyServer
from chatproxy.store.batch import Dialect
from chatproxy.store.completions import _list_query
from chatproxy.store.models import Chat, Message, User, Vote
from chatproxy.store.store import Store, utcnow
from chatproxy.testing import FakeUpstream, Reply, ToolCall
from tests.util import all_chats, all_messages, store_at

SETTINGS = {
    "auth.mode": "header",
    "server.trusted_proxies": ["127.0.0.0/8"],
    "limits.ip_rate": "0",  # these tests make many requests; limits are tested elsewhere
}
USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


@pytest.fixture
async def proxy(start_proxy) -> ProxyServer:
    # X-User-Id picks the user (from a trusted peer), so one test can be several users. The
    # store is SQLite and, with CHATPROXY_TEST_POSTGRES_URL set, PostgreSQL (tests/conftest.py).
    return await start_proxy(**SETTINGS)


def _client(proxy: ProxyServer, user: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=proxy.url, api_key="unused", max_retries=0, default_headers={"X-User-Id": user}
    )


@pytest.fixture
async def alice(proxy: ProxyServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with _client(proxy, "alice") as c:
        yield c


@pytest.fixture
async def bob(proxy: ProxyServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with _client(proxy, "bob") as c:
        yield c


async def ask(
    client: openai.AsyncOpenAI,
    messages: str | list[dict[str, Any]],
    *,
    model: str = "m",
    **kwargs: Any,
) -> str:
    """Create a completion through the proxy; its stored id (``X-Message-Id``)."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=messages, **kwargs
    )
    raw.parse()
    return raw.headers["X-Message-Id"]


async def snapshot(store: Store) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    messages = [(m.id, m.parent_id, m.metadata, m.data) for m in await all_messages(store)]
    chats = [(c.id, c.head_id, c.visibility) for c in await all_chats(store)]
    return messages, sorted(chats)


async def make_public(store: Store, completion_id: str) -> None:
    message = await store.get_message(completion_id)
    assert message is not None
    await store.write(lambda: Chat.filter(id=message.chat_id).update(visibility="public"))


# -- retrieve --------------------------------------------------------------------------------


async def test_retrieve_returns_the_stored_answer_as_a_chat_completion(
    alice: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Reply(content="Paris.", usage=USAGE))
    before = int(time.time())
    completion_id = await ask(alice, "Capital of France?", model="gpt-test")

    got = await alice.chat.completions.retrieve(completion_id)

    assert isinstance(got, ChatCompletion)
    assert got.id == completion_id
    assert got.object == "chat.completion"
    assert got.model == "gpt-test"
    assert before - 1 <= got.created <= time.time() + 1
    assert len(got.choices) == 1
    choice = got.choices[0]
    assert (choice.index, choice.finish_reason) == (0, "stop")
    assert choice.message.role == "assistant"
    assert choice.message.content == "Paris."
    assert got.usage is not None and got.usage.model_dump(exclude_none=True) == USAGE
    assert got.metadata == {}
    extra = got.model_extra or {}
    assert extra["status"] == "completed"
    assert extra["chat_id"].startswith("chat_")


async def test_retrieve_keeps_tool_calls_and_reasoning_of_a_streamed_answer(
    alice: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    upstream.enqueue(
        Reply(
            reasoning="The user wants weather.",
            tool_calls=[ToolCall("get_weather", '{"city": "Paris"}', id="call_1")],
        )
    )
    raw = await alice.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "Weather?"}], stream=True
    )
    async for _ in raw.parse():
        pass
    completion_id = raw.headers["X-Message-Id"]

    choice = (await alice.chat.completions.retrieve(completion_id)).choices[0]

    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert (call.id, call.type) == ("call_1", "function")
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')
    assert (choice.message.model_extra or {})["reasoning_content"] == "The user wants weather."


async def test_an_answer_cut_short_without_a_finish_reason_says_length(
    alice: openai.AsyncOpenAI, upstream: FakeUpstream, store: Store
) -> None:
    completion_id = await ask(alice, "Tell me a story")
    await store.write(
        lambda: Message.filter(id=completion_id).update(status="interrupted", finish_reason=None)
    )
    got = await alice.chat.completions.retrieve(completion_id)
    assert got.choices[0].finish_reason == "length"
    assert (got.model_extra or {})["status"] == "interrupted"


# -- messages --------------------------------------------------------------------------------


async def test_messages_list_gives_the_request_messages_oldest_first(
    alice: openai.AsyncOpenAI, store: Store
) -> None:
    history: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    first = await ask(alice, history)
    answer = (await alice.chat.completions.retrieve(first)).choices[0].message.content
    history += [
        {"role": "assistant", "content": answer},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Look "}, {"type": "text", "text": "here"}],
        },
    ]
    second = await ask(alice, history)

    page = await alice.chat.completions.messages.list(second)

    assert all(isinstance(m, ChatCompletionStoreMessage) for m in page.data)
    assert [m.role for m in page.data] == ["system", "user", "assistant", "user"]
    assert [m.content for m in page.data] == ["Be brief.", "Hi", answer, "Look here"]
    assert page.data[2].id == first  # the earlier answer, as stored
    assert page.data[0].content_parts is None
    parts = page.data[3].content_parts
    assert parts is not None and [p.text for p in parts] == ["Look ", "here"]  # type: ignore[union-attr]
    assert page.has_more is False
    stored_ids = {m.id for m in await all_messages(store)}
    assert {m.id for m in page.data} <= stored_ids

    newest_first = await alice.chat.completions.messages.list(second, order="desc", limit=2)
    assert [m.content for m in newest_first.data] == ["Look here", answer]
    assert newest_first.has_more is True
    rest = await alice.chat.completions.messages.list(
        second, order="desc", after=newest_first.data[-1].id
    )
    assert [m.content for m in rest.data] == ["Hi", "Be brief."]
    walked = [m.id async for m in alice.chat.completions.messages.list(second, limit=1)]
    assert walked == [m.id for m in page.data]


async def test_assistant_messages_sent_by_the_client_are_not_completions(
    alice: openai.AsyncOpenAI,
) -> None:
    completion_id = await ask(
        alice,
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Made up by the client"},
            {"role": "user", "content": "And?"},
        ],
    )
    page = await alice.chat.completions.list()
    assert [c.id for c in page.data] == [completion_id]
    client_sent = (await alice.chat.completions.messages.list(completion_id)).data[1]
    assert client_sent.role == "assistant"
    with pytest.raises(openai.NotFoundError):
        await alice.chat.completions.retrieve(client_sent.id)


# -- list ------------------------------------------------------------------------------------


async def test_paging_25_completions_by_10_gives_each_exactly_once(
    alice: openai.AsyncOpenAI,
) -> None:
    created = [await ask(alice, f"question {i}") for i in range(25)]

    pages = [await alice.chat.completions.list(limit=10)]
    while pages[-1].has_next_page():
        pages.append(await pages[-1].get_next_page())

    assert [len(p.data) for p in pages] == [10, 10, 5]
    assert [p.has_more for p in pages] == [True, True, False]
    assert [c.id for p in pages for c in p.data] == created  # oldest first by default
    extra = pages[0].model_extra or {}
    assert (extra["first_id"], extra["last_id"]) == (created[0], created[9])

    newest_first = [c.id async for c in alice.chat.completions.list(limit=10, order="desc")]
    assert newest_first == created[::-1]
    after = await alice.chat.completions.list(after=created[19], limit=10)
    assert [c.id for c in after.data] == created[20:]
    assert after.has_more is False


async def test_list_filters_by_model_and_metadata(alice: openai.AsyncOpenAI) -> None:
    a = await ask(alice, "one", model="model-a")
    b = await ask(alice, "two", model="model-b")
    # Metadata sent with the request is the completion's metadata, as with OpenAI's store.
    c = await ask(alice, "three", model="model-a", metadata={"project": "x", "env": "dev"})
    await alice.chat.completions.update(a, metadata={"project": "x", "env": "prod"})

    assert [x.id for x in (await alice.chat.completions.list(model="model-a")).data] == [a, c]
    assert [x.id for x in (await alice.chat.completions.list(model="model-b")).data] == [b]
    assert (await alice.chat.completions.list(model="model-z")).data == []
    by_project = await alice.chat.completions.list(metadata={"project": "x"})
    assert [x.id for x in by_project.data] == [a, c]
    both = await alice.chat.completions.list(metadata={"project": "x", "env": "dev"})
    assert [x.id for x in both.data] == [c]
    assert both.data[0].metadata == {"project": "x", "env": "dev"}
    assert (await alice.chat.completions.list(metadata={"project": "y"})).data == []
    assert [
        x.id for x in (await alice.chat.completions.list(model="model-b", metadata={})).data
    ] == [b]


# -- update ----------------------------------------------------------------------------------


async def test_update_replaces_the_metadata(alice: openai.AsyncOpenAI, store: Store) -> None:
    completion_id = await ask(alice, "Hi", metadata={"old": "1"})

    updated = await alice.chat.completions.update(completion_id, metadata={"topic": "greeting"})

    assert isinstance(updated, ChatCompletion)
    assert updated.id == completion_id
    assert updated.metadata == {"topic": "greeting"}
    assert (await alice.chat.completions.retrieve(completion_id)).metadata == {"topic": "greeting"}
    stored = await store.get_message(completion_id)
    assert stored is not None and stored.metadata == {"topic": "greeting"}
    cleared = await alice.chat.completions.update(completion_id, metadata=None)
    assert cleared.metadata == {}
    assert (await alice.chat.completions.list(metadata={"old": "1"})).data == []


# -- delete ----------------------------------------------------------------------------------


async def test_delete_removes_the_answer_and_what_followed_it_and_fixes_the_head(
    alice: openai.AsyncOpenAI, store: Store, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Reply(content="Joke one"), Reply(content="Joke two"))
    user1 = {"role": "user", "content": "Tell me a joke"}
    first = await ask(alice, [user1])
    regenerated = await ask(alice, [user1])  # a sibling of ``first``
    followup = await ask(
        alice,
        [user1, {"role": "assistant", "content": "Joke one"}, {"role": "user", "content": "More"}],
    )
    stored = {m.id: m for m in await all_messages(store)}
    chat_id = stored[first].chat_id
    assert {m.chat_id for m in stored.values()} == {chat_id}
    chat = await store.get_chat(chat_id)
    assert chat is not None and chat.head_id == followup
    await store.write(
        lambda: Vote.create(
            message_id=followup, chat_id=chat_id, user_id="alice", up=True, created_at=utcnow()
        )
    )
    doomed = {first, followup, stored[followup].parent_id}  # and the question "More"

    deleted = await alice.chat.completions.delete(first)

    assert isinstance(deleted, ChatCompletionDeleted)
    assert (deleted.id, deleted.object, deleted.deleted) == (first, "chat.completion.deleted", True)
    remaining = await all_messages(store)
    assert not doomed & {m.id for m in remaining}
    assert [m.role for m in remaining] == ["user", "assistant"]
    assert remaining[1].id == regenerated
    assert await store.read(lambda: Vote.all()) == []
    chat = await store.get_chat(chat_id)
    assert chat is not None and chat.head_id == regenerated  # the newest leaf left
    assert [c.id for c in (await alice.chat.completions.list()).data] == [regenerated]
    for call in (
        lambda: alice.chat.completions.retrieve(first),
        lambda: alice.chat.completions.delete(first),
        lambda: alice.chat.completions.retrieve(followup),
    ):
        with pytest.raises(openai.NotFoundError):
            await call()

    await alice.chat.completions.delete(regenerated)
    chat = await store.get_chat(chat_id)
    assert chat is not None and chat.head_id == remaining[0].id  # the question, now a leaf


# -- who may see what ------------------------------------------------------------------------


async def test_another_users_completion_is_404_on_every_endpoint(
    alice: openai.AsyncOpenAI, bob: openai.AsyncOpenAI, store: Store
) -> None:
    completion_id = await ask(alice, "My secret plan")
    await ask(bob, "Bob's own question")
    before = await snapshot(store)

    for call in (
        lambda: bob.chat.completions.retrieve(completion_id),
        lambda: bob.chat.completions.messages.list(completion_id),
        lambda: bob.chat.completions.update(completion_id, metadata={"mine": "now"}),
        lambda: bob.chat.completions.delete(completion_id),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            await call()
        assert caught.value.code == "not_found"
        assert "secret" not in caught.value.message

    assert completion_id not in [c.id for c in (await bob.chat.completions.list()).data]
    with pytest.raises(openai.BadRequestError) as caught:
        await bob.chat.completions.list(after=completion_id)
    assert caught.value.code == "invalid_cursor"
    assert await snapshot(store) == before
    assert (await alice.chat.completions.retrieve(completion_id)).id == completion_id


async def test_a_public_chats_completion_is_readable_but_not_writable_by_others(
    alice: openai.AsyncOpenAI, bob: openai.AsyncOpenAI, store: Store
) -> None:
    completion_id = await ask(alice, "Shared knowledge")
    await make_public(store, completion_id)
    before = await snapshot(store)

    got = await bob.chat.completions.retrieve(completion_id)
    assert got.choices[0].message.content
    messages = await bob.chat.completions.messages.list(completion_id)
    assert [m.content for m in messages.data] == ["Shared knowledge"]
    for call in (
        lambda: bob.chat.completions.update(completion_id, metadata={"k": "v"}),
        lambda: bob.chat.completions.delete(completion_id),
    ):
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await call()
        assert caught.value.code == "permission_denied"
    assert (await bob.chat.completions.list()).data == []  # listing stays one's own
    assert await snapshot(store) == before


# -- bad input -------------------------------------------------------------------------------

LIST, ONE = "/chat/completions", "/chat/completions/{id}"  # {id}: a real completion's id
BAD_ID = "/chat/completions/bad.id"
META, NOT_ID = "metadata", "completion_id"  # the params the errors name
BAD_INPUT = [
    ("GET", LIST + "?limit=0", None, "invalid_value", "limit"),
    ("GET", LIST + "?limit=101", None, "invalid_value", "limit"),
    ("GET", LIST + "?limit=ten", None, "invalid_value", "limit"),
    ("GET", LIST + "?limit=-1", None, "invalid_value", "limit"),
    ("GET", LIST + "?order=newest", None, "invalid_value", "order"),
    ("GET", LIST + "?after=msg_unknown", None, "invalid_cursor", "after"),
    ("GET", LIST + "?after=not%20an%20id", None, "invalid_cursor", "after"),
    ("GET", BAD_ID, None, "invalid_id", NOT_ID),
    ("GET", LIST + "/" + "x" * 129, None, "invalid_id", NOT_ID),
    ("GET", ONE + "/messages?limit=0", None, "invalid_value", "limit"),
    ("GET", ONE + "/messages?order=up", None, "invalid_value", "order"),
    ("GET", ONE + "/messages?after=msg_nope", None, "invalid_cursor", "after"),
    ("GET", BAD_ID + "/messages", None, "invalid_id", NOT_ID),
    ("DELETE", BAD_ID, None, "invalid_id", NOT_ID),
    ("POST", BAD_ID, {META: {}}, "invalid_id", NOT_ID),
    ("POST", ONE, b"{not json", "invalid_json", None),
    ("POST", ONE, [], "invalid_type", None),
    ("POST", ONE, {}, "missing_required_parameter", META),
    ("POST", ONE, {META: "x"}, "invalid_type", META),
    ("POST", ONE, {META: ["x"]}, "invalid_type", META),
    ("POST", ONE, {META: {"k": 1}}, "invalid_type", META),
    ("POST", ONE, {META: {f"k{i}": "v" for i in range(17)}}, "invalid_value", META),
    ("POST", ONE, {META: {"k" * 65: "v"}}, "invalid_value", META),
    ("POST", ONE, {META: {"": "v"}}, "invalid_value", META),
    ("POST", ONE, {META: {"k": "v" * 513}}, "invalid_value", META),
]


@pytest.mark.parametrize(("method", "path", "body", "code", "param"), BAD_INPUT)
async def test_bad_input_is_a_400_with_its_code_and_changes_nothing(
    alice: openai.AsyncOpenAI,
    proxy: ProxyServer,
    store: Store,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: Any,
    code: str,
    param: str | None,
) -> None:
    completion_id = await ask(alice, "Hi", metadata={"keep": "me"})
    before = await snapshot(store)
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    url = proxy.url + path.replace("{id}", completion_id)

    async with http.request(method, url, headers={"X-User-Id": "alice"}, **kwargs) as resp:
        status, error = resp.status, (await resp.json())["error"]

    assert (status, error["code"], error["param"]) == (400, code, param)
    assert error["type"] == "invalid_request_error" and error["message"]
    assert await snapshot(store) == before


async def test_the_proxy_route_and_the_pass_through_still_answer(
    alice: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    await ask(alice, "Hi")  # POST /v1/chat/completions is still the proxy
    models = await alice.models.list()
    assert [m.id for m in models.data]
    assert upstream.chat_requests  # the upstream saw the chat request


# -- listing by metadata, from the index (migration 0014) ------------------------------------
# A table of every completion's text-valued pairs, kept by triggers and walked in the
# listing's order along its index (SQLite and PostgreSQL), with the same results as the filter
# it replaced: request metadata and metadata set through the API, pages both ways, only the
# caller's, and nothing left behind by a delete or an update.


async def _ids(client: openai.AsyncOpenAI, **kwargs: Any) -> list[str]:
    """Every page of the list, followed by ``after``."""
    out: list[str] = []
    after: str | None = None
    while True:
        page = await client.chat.completions.list(
            limit=3, **kwargs, **({"after": after} if after else {})
        )
        out += [c.id for c in page.data]
        if not page.has_more:
            return out
        after = page.data[-1].id


async def _pairs(store: Store) -> list[tuple[str, str, str]]:
    """The table of pairs."""
    _, rows = await store.read(
        lambda: store.conn.execute_query(
            "SELECT message_id, key, value FROM completion_metadata ORDER BY message_id, key"
        )
    )
    return [tuple(r) for r in rows]


async def test_pages_both_ways_only_the_callers_and_nothing_left_behind(
    alice: openai.AsyncOpenAI, bob: openai.AsyncOpenAI, store: Store
) -> None:
    tagged = [
        await ask(alice, f"q{i}", metadata={"project": "x", "n": str(i % 2)}) for i in range(7)
    ]
    other = await ask(alice, "other", metadata={"project": "y"})
    await ask(alice, "untagged")
    await ask(bob, "bob's", metadata={"project": "x"})
    assert await _ids(alice, metadata={"project": "x"}) == tagged
    assert await _ids(alice, metadata={"project": "x"}, order="desc") == tagged[::-1]
    assert await _ids(alice, metadata={"project": "x", "n": "1"}) == tagged[1::2]
    assert await _ids(alice, metadata={"n": "0", "project": "x"}, order="desc") == tagged[::2][::-1]
    assert await _ids(alice, metadata={"project": "y"}) == [other]
    assert await _ids(alice, metadata={"project": "z"}) == []
    # Set through the API: replaces what the request sent, in the filter too.
    await alice.chat.completions.update(tagged[0], metadata={"project": "y"})
    await alice.chat.completions.update(other, metadata={})
    assert await _ids(alice, metadata={"project": "y"}) == [tagged[0]]
    assert await _ids(alice, metadata={"project": "x"}) == tagged[1:]
    await alice.chat.completions.delete(tagged[1])
    assert await _ids(alice, metadata={"project": "x"}) == tagged[2:]
    left = {mid for mid, _, _ in await _pairs(store)}
    assert tagged[1] not in left and other not in left
    assert (tagged[0], "project", "y") in await _pairs(store)


async def test_values_that_are_not_strings_are_not_pairs(
    alice: openai.AsyncOpenAI, store: Store
) -> None:
    listed = await ask(alice, "q", metadata={"project": "x"})
    odd = await ask(alice, "odd")
    # A value that is not a string, set below the API (as an older release might have).
    await store.write(lambda: Message.filter(id=odd).update(metadata={"project": 7}))
    assert await _ids(alice, metadata={"project": "x"}) == [listed]
    assert await _ids(alice, metadata={"project": "7"}) == []


async def test_the_upgrade_lists_what_was_stored(db_url: str, start_proxy: Any) -> None:
    now = datetime.now(UTC)
    async with store_at(db_url, "0013_search_pending"):
        await User.create(id="alice", name="alice", created_at=now)
        chat = await Chat.create(id="chat_old", owner_id="alice", created_at=now, updated_at=now)
        common: dict[str, Any] = {
            "chat": chat, "user_id": "alice", "role": "assistant", "data": {}, "text": "a",
            "prefix_hash": "h", "status": "completed", "instance_id": "old", "model": "m",
        }  # fmt: skip
        await Message.create(
            id="msg_sent", params={"metadata": {"project": "x"}}, created_at=now, **common
        )
        await Message.create(
            id="msg_set", metadata={"project": "x"}, params={}, created_at=now, **common
        )
        await Message.create(id="msg_none", params={}, created_at=now, **common)
    proxy = await start_proxy(**SETTINGS)
    async with _client(proxy, "alice") as alice:
        assert sorted(await _ids(alice, metadata={"project": "x"})) == ["msg_sent", "msg_set"]


async def test_the_filter_is_answered_from_the_index(store: Store) -> None:
    d = Dialect(store.conn)
    query, params = _list_query(d, "alice", None, {"project": "x"}, None, False, 20)
    if d.postgres:
        plan = await _pg_plan(store, query, params)
        assert "completion_metadata_pair" in plan, plan
        assert "Sort" not in plan, plan  # the index's order is the listing's
    else:
        _, rows = await store.read(
            lambda: store.conn.execute_query(f"EXPLAIN QUERY PLAN {query}", params)
        )
        details = [str(r[-1]) for r in rows]
        assert any("completion_metadata_pair" in r for r in details), details
        assert not any("TEMP B-TREE" in r for r in details), details  # no sort: index order


async def _pg_plan(store: Store, query: str, params: list[Any]) -> str:
    """The plan on a store of 20,000 answers of the user, 20 of them with the pair: a rare
    pair is read from the index, not found by walking the user's answers."""
    async with store.conn.acquire_connection() as conn:
        await conn.execute(
            "INSERT INTO users (id, name, created_at) VALUES ('alice', 'alice', now()); "
            "INSERT INTO chats (id, owner_id, title, visibility, metadata, created_at, "
            "updated_at) VALUES ('chat_big', 'alice', '', 'private', '{}', now(), now())"
        )
        await conn.execute(
            "INSERT INTO messages (id, chat_id, user_id, role, text, data, prefix_hash, status, "
            "client_disconnected, instance_id, params, metadata, created_at, depth) "
            "SELECT 'msg_' || i, 'chat_big', 'alice', 'assistant', 'a', '{}', 'h' || i, "
            "'completed', false, 'i', '{}', CASE WHEN i % 1000 = 0 THEN "
            "'{\"project\": \"x\"}'::jsonb END, now() - i * interval '1 second', 1 "
            "FROM generate_series(1, 20000) i"
        )
        await conn.execute("ANALYZE messages")
        rows = await conn.fetch(f"EXPLAIN {query}", *params)
    return "\n".join(r[0] for r in rows)
