"""The same new conversation sent twice at the same moment, without a chat header, threads as
two sequential sends would: one chat, its first message stored once (SPEC §3.4)."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply
from tests.util import all_chats, all_messages


async def test_the_same_new_conversation_sent_twice_at_once_is_one_chat(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession, store: Store
) -> None:
    upstream.enqueue(Reply(content="first", chunk_delay=0.05), Reply(content="second"))
    body = orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "Same words, twice."}]}
    )

    async def send() -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        async with http.post(f"{proxy.url}/chat/completions", data=body, headers=headers) as r:
            return r.status, await r.json()

    results = await asyncio.gather(send(), send())
    statuses = sorted(status for status, _ in results)
    # The second waits for the first one's turn, then is a regenerate of a chat whose answer
    # is still running (409 chat_busy), or, once it is over, its sibling.
    assert statuses in ([200, 200], [200, 409])
    for status, payload in results:
        if status == 409:
            assert payload["error"]["code"] == "chat_busy"
    chats = await all_chats(store)
    assert len(chats) == 1
    users = [m for m in await all_messages(store) if m.role == "user"]
    assert len(users) == 1
    assert {m.chat_id for m in await all_messages(store)} == {chats[0].id}


async def test_different_conversations_at_once_are_not_held_up_by_each_other(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession, store: Store
) -> None:
    async def send(i: int) -> int:
        body = {"model": "m", "messages": [{"role": "user", "content": f"conversation {i}"}]}
        async with http.post(f"{proxy.url}/chat/completions", json=body) as r:
            await r.read()
            return r.status

    assert await asyncio.gather(*(send(i) for i in range(8))) == [200] * 8
    assert len(await all_chats(store)) == 8
