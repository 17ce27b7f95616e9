"""The same new conversation sent twice at the same moment, without a chat header, threads as
two sequential sends would: one chat, its first message stored once (SPEC §3.4)."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from chatproxy.appkeys import STORE
from chatproxy.server import ProxyServer
from chatproxy.settings import load_settings
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply
from tests.conftest import REDIS_URL, fresh_postgres, needs_postgres, needs_redis
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


@needs_redis
@needs_postgres
async def test_the_same_new_conversation_sent_at_once_to_two_instances_is_one_chat(
    upstream: FakeUpstream, http: aiohttp.ClientSession, redis_prefix: str
) -> None:
    async with fresh_postgres() as db:
        servers = []
        for name in ("a", "b"):
            settings = load_settings(
                None,
                env={},
                overrides={
                    "server.port": 0,
                    "upstream.url": upstream.url,
                    "storage.url": db,
                    "redis.url": REDIS_URL,
                    "redis.prefix": redis_prefix,
                    "server.instance_id": name,
                },
            )
            server = ProxyServer(settings)
            await server.start()
            servers.append(server)
        try:
            upstream.enqueue(Reply(content="first", chunk_delay=0.05), Reply(content="second"))
            body = orjson.dumps(
                {"model": "m", "messages": [{"role": "user", "content": "Twice, two doors."}]}
            )

            async def send(server: ProxyServer) -> int:
                headers = {"Content-Type": "application/json"}
                url = f"{server.url}/chat/completions"
                async with http.post(url, data=body, headers=headers) as r:
                    await r.read()
                    return r.status

            statuses = sorted(await asyncio.gather(*(send(s) for s in servers)))
            assert statuses in ([200, 200], [200, 409])
            assert servers[0].app is not None
            store = servers[0].app[STORE]
            assert len(await all_chats(store)) == 1
            assert len([m for m in await all_messages(store) if m.role == "user"]) == 1
        finally:
            for server in servers:
                await server.stop()
