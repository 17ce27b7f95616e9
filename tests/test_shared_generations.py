"""Instance heartbeats and the Redis side of generations (SPEC §9), in process: reaping a dead
instance's answers, the lifetime of the Redis stream records, the abort policy with Redis on,
and Redis going away."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp
import pytest
import redis.asyncio as aioredis

from chatproxy.appkeys import STORE
from chatproxy.store.models import Chat, Instance, Message, User
from chatproxy.store.store import Store, utcnow
from chatproxy.testing import FakeUpstream, Reply
from tests.conftest import REDIS_URL, needs_redis
from tests.util import eventually, message, settled

BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


async def test_reaping_marks_only_the_answers_of_silent_or_unknown_instances(
    db_url: str,
) -> None:
    store = Store(db_url, instance_id="me")
    await store.open()
    try:
        now = utcnow()
        old = now - timedelta(seconds=60)

        async def setup() -> None:
            await User.create(id="u", name="u")
            await Chat.create(id="c", owner_id="u", created_at=now, updated_at=now)
            await Instance.create(id="alive", started_at=old, heartbeat_at=now)
            await Instance.create(id="dead", started_at=old, heartbeat_at=old)
            for mid, owner, created in [
                ("m_me", "me", old),  # this instance's own: never reaped by itself
                ("m_alive", "alive", old),
                ("m_dead", "dead", now),  # its instance is silent: taken at once
                ("m_gone", "gone", old),  # an instance with no record, long ago
                ("m_new", "starting", now),  # no record yet, but just started
            ]:
                await Message.create(
                    id=mid,
                    chat_id="c",
                    user_id="u",
                    role="assistant",
                    data={},
                    prefix_hash="h",
                    status="in_progress",
                    instance_id=owner,
                    created_at=created,
                )

        await store.write(setup)
        reaped = await store.reap_instances(30.0)
        assert reaped == {"dead": 1, "gone": 1}
        statuses = await store.read(lambda: Message.all().values_list("id", "status"))
        assert dict(statuses) == {
            "m_me": "in_progress",
            "m_alive": "in_progress",
            "m_dead": "interrupted",
            "m_gone": "interrupted",
            "m_new": "in_progress",
        }
        interrupted = await store.get_message("m_dead")
        assert interrupted is not None and interrupted.completed_at is not None
        instances = await store.read(lambda: Instance.all().values_list("id", flat=True))
        assert sorted(instances) == ["alive"]
        assert await store.reap_instances(30.0) == {}  # nothing twice
    finally:
        await store.close()


async def test_a_running_instance_heartbeats_and_forgets_itself_on_a_clean_stop(
    start_proxy,
) -> None:
    proxy = await start_proxy(**{"server.instance_id": "hb", "server.heartbeat_interval": 0.05})
    store: Store = proxy.app[STORE]

    async def beats() -> list[object]:
        rows = await store.read(lambda: Instance.filter(id="hb").values_list("heartbeat_at"))
        return rows

    first = (await eventually(beats))[0]
    await eventually(lambda: _later(beats, first))
    await proxy.stop()
    reopened = Store(proxy.settings.storage.url, instance_id="other")
    await reopened.open()
    try:
        assert await reopened.read(lambda: Instance.all().count()) == 0
    finally:
        await reopened.close()


async def _later(beats, first: object) -> bool:  # type: ignore[no-untyped-def]
    rows = await beats()
    return bool(rows) and rows[0] > first


@pytest.fixture
async def redis() -> aioredis.Redis:
    client = aioredis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@needs_redis
async def test_stream_records_live_for_the_grace_period_then_expire(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession, redis_prefix: str, redis
) -> None:
    proxy = await start_proxy(
        **{"redis.url": REDIS_URL, "redis.prefix": redis_prefix, "chats.resume_grace": 0.5}
    )
    upstream.enqueue(Reply(chunks=["a ", "b ", "c "], chunk_delay=0.05))
    async with http.post(f"{proxy.url}/chat/completions", json=BODY) as resp:
        chat_id = resp.headers["X-Chat-Id"]
        await resp.read()
    stream, meta = f"{redis_prefix}gen:{chat_id}", f"{redis_prefix}genmeta:{chat_id}"
    busy = f"{redis_prefix}busy:{chat_id}"

    async def closed() -> bool:
        entries = await redis.xrange(stream)
        return bool(entries) and b"e" in entries[-1][1]

    await eventually(closed)
    entries = await redis.xrange(stream)
    assert [e[0] for e in entries] == [f"0-{i}".encode() for i in range(1, len(entries) + 1)]
    assert entries[-2][1] == {b"d": b"[DONE]"}
    assert 0 < await redis.pttl(stream) <= 500
    assert 0 < await redis.pttl(meta) <= 500
    assert not await redis.exists(busy)  # the claim ends with the answer

    async def gone() -> bool:
        return not await redis.exists(stream, meta)

    await eventually(gone, within=5)


@needs_redis
async def test_deleting_the_chat_removes_its_stream_records(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession, redis_prefix: str, redis
) -> None:
    proxy = await start_proxy(
        **{"redis.url": REDIS_URL, "redis.prefix": redis_prefix, "chats.resume_grace": 60}
    )
    async with http.post(f"{proxy.url}/chat/completions", json=BODY) as resp:
        chat_id = resp.headers["X-Chat-Id"]
        await resp.read()
    stream = f"{redis_prefix}gen:{chat_id}"
    await eventually(lambda: redis.exists(stream))
    async with http.delete(f"{proxy.url}/conversations/{chat_id}") as resp:
        assert resp.status == 200
    assert await redis.exists(stream, f"{redis_prefix}genmeta:{chat_id}") == 0
    async with http.get(f"{proxy.url}/conversations/{chat_id}/stream") as resp:
        assert resp.status == 404


@needs_redis
async def test_abort_policy_still_aborts_when_the_only_follower_left_is_the_redis_copy(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession, redis_prefix: str
) -> None:
    proxy = await start_proxy(
        **{
            "redis.url": REDIS_URL,
            "redis.prefix": redis_prefix,
            "chats.on_disconnect": "abort",
        }
    )
    upstream.enqueue(Reply(chunks=[f"w{i} " for i in range(100)], chunk_delay=0.05))
    resp = await http.post(f"{proxy.url}/chat/completions", json=BODY)
    message_id = resp.headers["X-Message-Id"]
    await resp.content.readuntil(b"w3 ")
    resp.close()
    await asyncio.wait_for(upstream.chat_requests[0].disconnected.wait(), 5)
    assert (await settled(proxy.app[STORE], message_id)).status == "cancelled"


async def test_redis_unreachable_answers_are_still_served_and_one_per_chat_on_this_instance(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"redis.url": "redis://127.0.0.1:9/0"})
    upstream.enqueue(Reply(chunks=[f"w{i} " for i in range(20)], chunk_delay=0.05))
    headers = {"X-Chat-Id": "no-redis"}
    async with http.post(f"{proxy.url}/chat/completions", json=BODY, headers=headers) as first:
        assert first.status == 200
        message_id = first.headers["X-Message-Id"]
        await first.content.readuntil(b"w1 ")
        async with http.post(f"{proxy.url}/chat/completions", json=BODY, headers=headers) as second:
            assert second.status == 409
        async with http.get(f"{proxy.url}/conversations/no-redis/stream") as followed:
            assert followed.status == 200
            assert (await followed.read()).endswith(b"data: [DONE]\n\n")
        await first.read()
    assert (await message(proxy.app[STORE], message_id)).status == "completed"
