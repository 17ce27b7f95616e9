"""Scale-out (SPEC §9): two real `chatproxy serve` processes on one PostgreSQL and one Redis
behave as one proxy."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import openai
import orjson
from prometheus_client.parser import text_string_to_metric_families

from chatproxy.testing import FakeUpstream, Reply
from tests.conftest import REDIS_URL, fresh_postgres, needs_postgres, needs_redis
from tests.serve import Serve
from tests.util import eventually

pytestmark = [needs_postgres, needs_redis]

HEARTBEAT = {
    "CHATPROXY_SERVER__HEARTBEAT_INTERVAL": "0.2",
    "CHATPROXY_SERVER__HEARTBEAT_TIMEOUT": "1.5",
}
SLOW = Reply(chunks=[f"tok{i} " for i in range(60)], chunk_delay=0.05)


@contextlib.asynccontextmanager
async def two_instances(
    fake: FakeUpstream, redis_prefix: str, **env: str
) -> AsyncIterator[tuple[Serve, Serve, str]]:
    """Instances ``a`` and ``b`` of one deployment (one PostgreSQL database, one Redis), and
    the database's URL."""
    async with fresh_postgres() as db:
        common = {
            "CHATPROXY_REDIS__URL": REDIS_URL,
            "CHATPROXY_REDIS__PREFIX": redis_prefix,
            "CHATPROXY_UPSTREAM__RETRIES": "0",
            **HEARTBEAT,
            **env,
        }
        a = Serve(
            "--upstream", fake.url, db=db, env={**common, "CHATPROXY_SERVER__INSTANCE_ID": "a"}
        )
        b = Serve(
            "--upstream", fake.url, db=db, env={**common, "CHATPROXY_SERVER__INSTANCE_ID": "b"}
        )
        await a.start()  # one after the other: the first applies the migrations
        await b.start()
        try:
            yield a, b, db
        finally:
            await asyncio.gather(a.stop(), b.stop())


def events_of(raw: bytes) -> list[tuple[int | None, bytes]]:
    """(id, data) of each SSE event in ``raw``."""
    out = []
    for block in raw.split(b"\n\n"):
        if not block.strip():
            continue
        number, data = None, []
        for line in block.split(b"\n"):
            if line.startswith(b"id: "):
                number = int(line[4:])
            elif line.startswith(b"data: "):
                data.append(line[6:])
        out.append((number, b"\n".join(data)))
    return out


async def stream_body(http: aiohttp.ClientSession, server: Serve, **headers: str) -> Any:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    return http.post(f"{server.base}/v1/chat/completions", json=body, headers=headers)


async def status_of(db: str, message_id: str) -> str:
    conn = await asyncpg.connect(db)
    try:
        return str(await conn.fetchval("SELECT status FROM messages WHERE id = $1", message_id))
    finally:
        await conn.close()


async def test_a_conversation_alternating_between_instances_threads_into_one_chat(
    redis_prefix: str,
) -> None:
    async with FakeUpstream() as fake, two_instances(fake, redis_prefix) as (a, b, _):
        messages: list[dict[str, Any]] = []
        chat_ids = []
        for i, server in enumerate([a, b, a, b]):
            messages.append({"role": "user", "content": f"question {i}"})
            async with openai.AsyncOpenAI(
                base_url=f"{server.base}/v1", api_key="k", max_retries=0
            ) as client:
                raw = await client.chat.completions.with_raw_response.create(
                    model="m", messages=messages
                )
            chat_ids.append(raw.headers["x-chat-id"])
            messages.append(
                {"role": "assistant", "content": raw.parse().choices[0].message.content}
            )
        assert len(set(chat_ids)) == 1
        async with aiohttp.ClientSession() as http:
            url = f"{a.base}/v1/conversations/{chat_ids[0]}/messages"
            async with http.get(url) as resp:
                stored = await resp.json()
        assert [(m["role"], m["content"]) for m in stored["data"]] == [
            (m["role"], m["content"]) for m in messages
        ]


async def test_a_stream_started_on_a_is_resumed_through_b_with_every_event_once(
    redis_prefix: str,
) -> None:
    async with (
        FakeUpstream() as fake,
        two_instances(fake, redis_prefix) as (a, b, _),
        aiohttp.ClientSession() as http,
    ):
        fake.enqueue(SLOW)
        async with await stream_body(http, a) as original:
            chat_id = original.headers["X-Chat-Id"]
            message_id = original.headers["X-Message-Id"]
            head = await original.content.readuntil(b"tok10 ")
            resume = f"{b.base}/v1/conversations/{chat_id}/stream"
            async with (
                http.get(resume) as followed,
                http.get(resume, headers={"Last-Event-ID": "5"}) as later,
            ):
                assert followed.status == later.status == 200
                assert followed.headers["X-Message-Id"] == message_id
                whole, tail = await followed.read(), await later.read()
            direct = events_of(head + await original.read())
        events = events_of(whole)
        assert [n for n, _ in events] == list(range(1, len(events) + 1))
        datas = [d for _, d in events]
        assert datas[-1] == b"[DONE]"
        assert b"".join(datas).count(b"tok10 ") == 1
        assert [d for _, d in direct] == datas  # the same events as the original client's
        assert events_of(tail) == events[5:]
        # After the end, within the grace period, B still replays it all.
        async with http.get(resume) as again:
            assert events_of(await again.read()) == events


async def test_limits_are_shared_ip_bucket_and_daily_quota(redis_prefix: str) -> None:
    env = {
        "CHATPROXY_LIMITS__IP_RATE": "10/minute",
        "CHATPROXY_LIMITS__IP_BURST": "5",
        "CHATPROXY_LIMITS__TIERS__FREE__MESSAGES_PER_DAY": "2",
    }
    async with (
        FakeUpstream() as fake,
        two_instances(fake, redis_prefix, **env) as (a, b, _),
        aiohttp.ClientSession() as http,
    ):
        statuses = []
        for i, server in enumerate([a, b, a]):
            body = {"model": "m", "messages": [{"role": "user", "content": f"new chat {i}"}]}
            async with http.post(f"{server.base}/v1/chat/completions", json=body) as resp:
                statuses.append((resp.status, (await resp.json()).get("error", {}).get("code")))
        assert statuses == [(200, None), (200, None), (429, "daily_limit_exceeded")]
        # Three requests taken from the burst of 5 so far, whichever instance served them.
        codes = []
        for server in [b, a, b]:
            async with http.get(f"{server.base}/v1/models") as resp:
                codes.append(resp.status)
        assert codes == [200, 200, 429]


async def test_a_concurrent_post_on_the_same_chat_through_the_other_instance_gets_409(
    redis_prefix: str,
) -> None:
    async with (
        FakeUpstream() as fake,
        two_instances(fake, redis_prefix) as (a, b, _),
        aiohttp.ClientSession() as http,
    ):
        fake.enqueue(SLOW)
        async with await stream_body(http, a, **{"X-Chat-Id": "shared-chat"}) as running:
            await running.content.readuntil(b"tok1 ")
            async with await stream_body(http, b, **{"X-Chat-Id": "shared-chat"}) as second:
                assert second.status == 409
                assert (await second.json())["error"]["code"] == "chat_busy"
            async with http.delete(f"{b.base}/v1/conversations/shared-chat") as deleting:
                assert deleting.status == 409
            await running.read()
        # Once the answer is done, the chat is free on every instance.
        async with await stream_body(http, b, **{"X-Chat-Id": "shared-chat"}) as after:
            assert after.status == 200
            await after.read()


async def test_killing_a_mid_stream_b_marks_the_answer_interrupted_and_ends_its_followers(
    redis_prefix: str,
) -> None:
    async with (
        FakeUpstream() as fake,
        two_instances(fake, redis_prefix) as (a, b, db),
        aiohttp.ClientSession() as http,
    ):
        fake.enqueue(Reply(chunks=[f"tok{i} " for i in range(400)], chunk_delay=0.05))
        async with await stream_body(http, a) as original:
            chat_id = original.headers["X-Chat-Id"]
            message_id = original.headers["X-Message-Id"]
            await original.content.readuntil(b"tok3 ")
            async with http.get(f"{b.base}/v1/conversations/{chat_id}/stream") as followed:
                await followed.content.readuntil(b"tok5 ")
                assert await a.stop(signal.SIGKILL) == -signal.SIGKILL
                assert await status_of(db, message_id) == "in_progress"
                # B notices A's missing heartbeat within the timeout (1.5 s) and a beat.
                await eventually(lambda: _is(status_of(db, message_id), "interrupted"), within=15)
                tail = events_of(await asyncio.wait_for(followed.read(), 15))
        error = orjson.loads(tail[-2][1])["error"]
        assert error["code"] == "generation_interrupted"
        assert tail[-1][1] == b"[DONE]"
        # The chat is free again: B takes a new question in it.
        body = {"model": "m", "messages": [{"role": "user", "content": "again"}]}
        headers = {"X-Chat-Id": chat_id}
        await eventually(lambda: _posts(http, b, body, headers), within=15)
        # An operator sees it in B's metrics.
        async with http.get(f"{b.base}/metrics") as resp:
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(await resp.text())
                for s in family.samples
            }
        assert samples[("chatproxy_reaped_answers_total", ())] == 1
        assert samples[("chatproxy_instance_info", (("instance_id", "b"),))] == 1


async def _is(value: Any, expected: str) -> bool:
    return await value == expected


async def _posts(
    http: aiohttp.ClientSession, server: Serve, body: dict[str, Any], headers: dict[str, str]
) -> bool:
    async with http.post(f"{server.base}/v1/chat/completions", json=body, headers=headers) as r:
        await r.read()
        return r.status == 200
