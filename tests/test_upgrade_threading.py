"""A store written by the previous release (schema up to ``0004_instances``, prefix hashes of
canonical form v1) keeps threading after the upgrade: migration ``0005_canonical_v2`` rehashes
its messages, ``0007_message_depth`` numbers them along their branch, and a client resending
that history, re-serialised, continues the stored chat."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import orjson

from chatproxy.appkeys import STORE
from chatproxy.store import history
from chatproxy.store.batch import Dialect
from chatproxy.store.models import Chat, User
from chatproxy.testing import FakeUpstream, Reply
from tests.util import all_chats, all_messages, store_at

PREVIOUS_RELEASE = "0004_instances"
CALL = {"id": "call_7", "type": "function", "function": {"name": "weather", "arguments": ""}}
HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a weather agent."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [dict(CALL, function={"name": "weather", "arguments": '{"city":"Paris"}'})],
    },
    {"role": "tool", "tool_call_id": "call_7", "content": "sunny"},
    {"role": "assistant", "content": "It is sunny in Paris.\n"},
]


def _v1_canonical(m: dict[str, Any]) -> bytes:
    """The previous release's canonical form: arguments and answers compared as sent."""
    doc: dict[str, Any] = {"r": m.get("role"), "c": m.get("content") or ""}
    if m.get("tool_calls"):
        doc["t"] = [
            {"id": c["id"], "name": c["function"]["name"], "args": c["function"]["arguments"]}
            for c in m["tool_calls"]
        ]
    if m.get("tool_call_id"):
        doc["i"] = m["tool_call_id"]
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


async def _previous_release_store(url: str) -> None:
    async with store_at(url, PREVIOUS_RELEASE) as ctx:
        now = datetime.now(UTC) - timedelta(days=3)
        await User.create(id="local", name="local", created_at=now)
        await Chat.create(
            id="chat_old",
            owner_id="local",
            title="Weather in Paris?",
            created_at=now,
            updated_at=now,
            metadata={},
        )
        # The previous release's columns, written as it wrote them (the model has more now).
        d = Dialect(ctx.db("default"))
        insert = d.sql(
            "INSERT INTO messages (id, chat_id, parent_id, user_id, role, text, data, "
            "prefix_hash, status, client_disconnected, created_at) "
            "VALUES (?, ?, ?, 'local', ?, ?, ?, ?, 'completed', ?, ?)"
        )
        h, parent = b"", None
        for i, m in enumerate(HISTORY):
            h = hashlib.blake2b(h + _v1_canonical(m), digest_size=16).digest()
            row = [
                f"msg_old{i}",
                "chat_old",
                parent,
                m["role"],
                m.get("content") or "",
                orjson.dumps(m).decode(),
                h.hex(),
                False,
                d.ts(now + timedelta(seconds=i)),
            ]
            await ctx.db("default").execute_query(insert, row)
            parent = f"msg_old{i}"
        await Chat.filter(id="chat_old").update(head_id=parent)


async def test_a_store_of_the_previous_release_keeps_threading_after_the_upgrade(
    db_url: str, start_proxy, upstream: FakeUpstream
) -> None:
    await _previous_release_store(db_url)
    proxy = await start_proxy()  # opens the store: the migrations run
    store = proxy.app[STORE]
    upstream.enqueue(Reply(content="Take an umbrella anyway."))
    # LangChain sends the call back re-serialised, and a UI trimmed the answer.
    resent = [dict(m) for m in HISTORY]
    resent[2] = dict(
        HISTORY[2],
        tool_calls=[dict(CALL, function={"name": "weather", "arguments": '{"city": "Paris"}'})],
    )
    resent[4] = {"role": "assistant", "content": "It is sunny in Paris."}
    resent.append({"role": "user", "content": "Should I take an umbrella?"})
    async with openai.AsyncOpenAI(base_url=proxy.url, api_key="x", max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="fake-model", messages=resent
        )
    assert raw.headers["x-chat-id"] == "chat_old"
    assert [c.id for c in await all_chats(store)] == ["chat_old"]
    rows = await all_messages(store)
    assert [m.id for m in rows[:5]] == [f"msg_old{i}" for i in range(5)]
    assert [m.role for m in rows[5:]] == ["user", "assistant"]
    assert rows[5].parent_id == "msg_old4"
    assert [m.depth for m in rows] == [1, 2, 3, 4, 5, 6, 7]
    view = await history.chat_view(store, "chat_old")
    assert view is not None and view.message_count == 7
