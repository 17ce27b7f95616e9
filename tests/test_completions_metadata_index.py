"""Migration 0014: stored completions listed by metadata from a table of pairs kept by
triggers and walked in the listing's order along its index (SQLite and PostgreSQL), with
the same results as the filter it replaces: request metadata and metadata set through the API,
pages both ways, only the caller's, and nothing left behind by a delete or an update."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import openai
import pytest

from chatproxy.server import ProxyServer
from chatproxy.store.batch import Dialect
from chatproxy.store.completions import _list_query
from chatproxy.store.models import Chat, Message, User
from chatproxy.store.store import Store
from tests.util import store_at

SETTINGS = {
    "auth.mode": "header",
    "server.trusted_proxies": ["127.0.0.0/8"],
    "limits.ip_rate": "0",
}


@pytest.fixture
async def proxy(start_proxy: Any) -> ProxyServer:
    return await start_proxy(**SETTINGS)  # type: ignore[no-any-return]


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


async def _ask(client: openai.AsyncOpenAI, text: str, **kwargs: Any) -> str:
    raw = await client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": text}], **kwargs
    )
    raw.parse()
    return raw.headers["X-Message-Id"]


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
        await _ask(alice, f"q{i}", metadata={"project": "x", "n": str(i % 2)}) for i in range(7)
    ]
    other = await _ask(alice, "other", metadata={"project": "y"})
    await _ask(alice, "untagged")
    await _ask(bob, "bob's", metadata={"project": "x"})
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
    listed = await _ask(alice, "q", metadata={"project": "x"})
    odd = await _ask(alice, "odd")
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
