"""Instance heartbeats and the Redis side of generations (SPEC §9), in process: reaping a dead
instance's answers, the lifetime of the Redis stream records, the abort policy with Redis on,
and Redis going away."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp
import pytest
import redis.asyncio as aioredis

from chatproxy.appkeys import GENERATIONS, SETTINGS, STORE
from chatproxy.engine.registry import Generations
from chatproxy.server import ProxyServer
from chatproxy.store.batch import Turn
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
        **{
            "redis.url": REDIS_URL,
            "redis.prefix": redis_prefix,
            "chats.resume_grace": 0.5,
            "server.instance_id": "p1",
        }
    )
    upstream.enqueue(Reply(chunks=["a ", "b ", "c "], chunk_delay=0.05))
    async with http.post(f"{proxy.url}/chat/completions", json=BODY) as resp:
        chat_id, message_id = resp.headers["X-Chat-Id"], resp.headers["X-Message-Id"]
        await resp.read()
        # The chat is free before the client sees the end of its answer.
        assert not await redis.exists(f"{redis_prefix}busy:{chat_id}")
    stream = f"{redis_prefix}gen:{chat_id}:{message_id}"
    meta = f"{redis_prefix}genmeta:{chat_id}"

    async def closed() -> bool:
        entries = await redis.xrange(stream)
        return bool(entries) and b"e" in entries[-1][1]

    await eventually(closed)
    entries = await redis.xrange(stream)
    # A start entry, then event N as entry 1-N, then the end.
    ids = [e[0].decode() for e in entries]
    assert ids == ["0-1", *(f"1-{i}" for i in range(1, len(entries)))]
    assert entries[0][1] == {b"s": b"p1"}
    assert entries[-2][1] == {b"d": b"[DONE]"}
    assert await redis.hgetall(meta) == {
        b"message": message_id.encode(),
        b"instance": b"p1",
    }
    # The meta (how a resume finds the answer) lives for the grace period; the stream a
    # little longer, for followers still reading its end.
    assert 0 < await redis.pttl(meta) <= 500
    assert 0 < await redis.pttl(stream) <= 5000

    async def gone() -> bool:
        return not await redis.exists(meta)

    await eventually(gone, within=5)
    async with http.get(f"{proxy.url}/conversations/{chat_id}/stream") as resp:
        assert resp.status == 204


@needs_redis
async def test_deleting_the_chat_removes_its_stream_records(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession, redis_prefix: str, redis
) -> None:
    proxy = await start_proxy(
        **{"redis.url": REDIS_URL, "redis.prefix": redis_prefix, "chats.resume_grace": 60}
    )
    async with http.post(f"{proxy.url}/chat/completions", json=BODY) as resp:
        chat_id, message_id = resp.headers["X-Chat-Id"], resp.headers["X-Message-Id"]
        await resp.read()
    stream = f"{redis_prefix}gen:{chat_id}:{message_id}"
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


class _SlowRedis:
    """Stands in for a Redis that takes long to answer a claim."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.released: list[tuple[str, str]] = []

    async def claim(self, *args: object) -> bool:
        self.asked.set()
        await asyncio.Event().wait()
        return True

    async def release(self, chat_id: str, message_id: str) -> None:
        self.released.append((chat_id, message_id))


async def test_a_client_leaving_while_redis_answers_the_claim_leaves_the_chat_free() -> None:
    slow = _SlowRedis()
    generations = Generations(30.0, shared=slow)  # type: ignore[arg-type]
    turn = Turn(
        user_id="u",
        chat_id="c",
        chat_is_new=False,
        title=None,
        parent_id=None,
        new_messages=[],
        assistant_id="msg_1",
        params={},
        model=None,
        instance_id="me",
        created_at=utcnow(),
    )
    claiming = asyncio.ensure_future(generations.claim(turn))
    await slow.asked.wait()
    assert generations.busy("c")  # claimed here while Redis is asked
    claiming.cancel()
    with pytest.raises(asyncio.CancelledError):
        await claiming
    assert not generations.busy("c")
    await asyncio.sleep(0)
    assert slow.released == [("c", "msg_1")]  # Redis may have recorded it: given back


@pytest.fixture
async def pair(start_proxy, redis_prefix: str) -> tuple[ProxyServer, ProxyServer]:
    """Two instances in process, one store, one Redis."""
    shared = {"redis.url": REDIS_URL, "redis.prefix": redis_prefix, "limits.ip_rate": "0"}
    a = await start_proxy(**shared, **{"server.instance_id": "a"})
    b = await start_proxy(**shared, **{"server.instance_id": "b"})
    return a, b


@needs_redis
async def test_the_next_turn_through_another_instance_right_after_the_end_is_never_busy(
    pair, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    a, b = pair
    headers = {"X-Chat-Id": "back-to-back"}
    messages: list[dict[str, str]] = []
    for i in range(6):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        messages.append({"role": "user", "content": f"q{i}"})
        body = {"model": "m", "stream": True, "messages": messages}
        async with http.post(f"{first.url}/chat/completions", json=body, headers=headers) as r:
            assert r.status == 200
            assert (await r.read()).endswith(b"data: [DONE]\n\n")
        # At once, through the other instance: the chat is already free there.
        probe = {"model": "m", "messages": [*messages, {"role": "assistant", "content": "x"}]}
        async with http.post(f"{second.url}/chat/completions", json=probe, headers=headers) as r:
            assert r.status == 200, await r.text()
            await r.read()
        messages.append({"role": "assistant", "content": "x"})


@needs_redis
async def test_two_answers_on_different_branches_keep_separate_streams(
    pair, upstream: FakeUpstream, http: aiohttp.ClientSession, redis
) -> None:
    a, b = pair
    upstream.enqueue(Reply(content="Paris."))
    body = {"model": "m", "messages": [{"role": "user", "content": "Capital of France?"}]}
    async with http.post(f"{a.url}/chat/completions", json=body) as r:
        chat_id, answer = r.headers["X-Chat-Id"], r.headers["X-Message-Id"]
    user = (await message(a.app[STORE], answer)).parent_id
    upstream.enqueue(
        Reply(chunks=[f"again{i} " for i in range(20)], chunk_delay=0.03),
        Reply(chunks=[f"next{i} " for i in range(20)], chunk_delay=0.03),
    )
    server = {"X-Chat-History": "server", "X-Chat-Id": chat_id}
    again = {"model": "m", "stream": True, "messages": []}
    nxt = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "And?"}]}
    async with (
        http.post(
            f"{a.url}/chat/completions", json=again, headers={**server, "X-Chat-Parent": user}
        ) as first,
        http.post(
            f"{a.url}/chat/completions", json=nxt, headers={**server, "X-Chat-Parent": answer}
        ) as second,
    ):
        assert first.status == second.status == 200
        # Through B, the chat's newest answer (once its first write is in Redis): the second
        # one, whole and only it.
        meta = f"{a.app[SETTINGS].redis.prefix}genmeta:{chat_id}"
        newest = second.headers["X-Message-Id"].encode()

        async def published() -> bool:
            return await redis.hget(meta, "message") == newest

        await eventually(published)
        async with http.get(f"{b.url}/conversations/{chat_id}/stream") as followed:
            assert followed.headers["X-Message-Id"] == second.headers["X-Message-Id"]
            followed_text = await followed.read()
        await first.read(), await second.read()
    assert b"next19 " in followed_text and b"again" not in followed_text
    for resp, word in ((first, b"again"), (second, b"next")):
        key = f"{a.app[SETTINGS].redis.prefix}gen:{chat_id}:{resp.headers['X-Message-Id']}"

        async def closed(key: str = key) -> bool:
            entries = await redis.xrange(key)
            return bool(entries) and b"e" in entries[-1][1]

        await eventually(closed)
        data = b"".join(e[1].get(b"d", b"") for e in await redis.xrange(key))
        assert word + b"19 " in data and data.count(b"19 ") == 1


@needs_redis
async def test_resuming_through_another_instance_after_the_last_event_ends_at_once(
    pair, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    a, b = pair
    async with http.post(f"{a.url}/chat/completions", json=BODY) as r:
        chat_id = r.headers["X-Chat-Id"]
        await r.read()
    resume = f"{b.url}/conversations/{chat_id}/stream"
    async with http.get(resume) as whole:
        events = (await whole.read()).count(b"\n\n")
    started = asyncio.get_running_loop().time()
    async with http.get(resume, headers={"Last-Event-ID": str(events + 50)}) as r:
        assert r.status == 200
        assert await r.read() == b""
    assert asyncio.get_running_loop().time() - started < 5  # not the grace period


@needs_redis
async def test_a_resume_through_another_instance_at_once_after_the_head_finds_the_answer(
    pair, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    a, b = pair
    for _ in range(5):
        upstream.enqueue(Reply(chunks=[f"w{i} " for i in range(10)], chunk_delay=0.02))
        async with http.post(f"{a.url}/chat/completions", json=BODY) as original:
            chat_id, message_id = original.headers["X-Chat-Id"], original.headers["X-Message-Id"]
            # No wait: the answer's first write to Redis may not have happened yet.
            async with http.get(f"{b.url}/conversations/{chat_id}/stream") as followed:
                assert followed.status == 200
                assert followed.headers["X-Message-Id"] == message_id
                assert (await followed.read()).endswith(b"data: [DONE]\n\n")
            await original.read()


@needs_redis
async def test_flushes_at_once_beside_the_flusher_write_an_ended_answer_once(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession, redis_prefix: str, redis
) -> None:
    proxy = await start_proxy(**{"redis.url": REDIS_URL, "redis.prefix": redis_prefix})
    shared = proxy.app[GENERATIONS].shared
    assert shared is not None
    async with http.post(f"{proxy.url}/chat/completions", json=BODY) as resp:
        chat_id, message_id = resp.headers["X-Chat-Id"], resp.headers["X-Message-Id"]
        await resp.read()
    # close() flushes while the flusher task may be flushing too: each sees the other's end.
    await asyncio.gather(*(shared.flush() for _ in range(5)))
    stream = f"{redis_prefix}gen:{chat_id}:{message_id}"
    assert await redis.exists(stream) == 1
    assert not shared._live
