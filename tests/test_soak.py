"""A bounded soak: 200 concurrent streams, clients leaving and upstreams dropping at random.
Afterwards nothing is left in progress and every completed answer is exactly what was sent."""

from __future__ import annotations

import asyncio
import random

import aiohttp

from chatproxy.appkeys import STORE
from chatproxy.testing import FakeUpstream, Reply
from tests.util import all_messages, eventually

STREAMS = 200


async def test_200_streams_with_random_disconnects_and_drops_lose_nothing(
    start_proxy, upstream: FakeUpstream
) -> None:
    rng = random.Random(20261122)
    proxy = await start_proxy(**{"limits.ip_rate": "0"})
    store = proxy.app[STORE]
    sent: dict[str, bool] = {}  # the full text of every reply -> whether it is dropped
    for i in range(STREAMS):
        chunks = [f"s{i}w{j} " for j in range(10)]
        drop = rng.random() < 0.25
        # 1 role chunk + 10 content chunks + the finish chunk + [DONE]: dropping after at most
        # 8 events always cuts the answer short.
        upstream.enqueue(
            Reply(chunks=chunks, chunk_delay=0.005, drop_after=rng.randint(2, 8) if drop else None)
        )
        sent["".join(chunks)] = drop
    leave_after = [rng.choice([None, None, 1, 3, 6]) for _ in range(STREAMS)]

    async def client(http: aiohttp.ClientSession, i: int) -> None:
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": f"q{i}"}]}
        resp = await http.post(f"{proxy.url}/chat/completions", json=body)
        try:
            if leave_after[i] is None:
                await resp.read()
            else:
                for _ in range(leave_after[i]):
                    await resp.content.readuntil(b"\n\n")
        finally:
            resp.close()

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(client(http, i) for i in range(STREAMS)))

    async def settled() -> list:
        answers = [m for m in await all_messages(store) if m.role == "assistant"]
        done = len(answers) == STREAMS and all(m.status != "in_progress" for m in answers)
        return answers if done else []

    answers = await eventually(settled, within=30)
    completed = sorted(m.text for m in answers if m.status == "completed")
    assert completed == sorted(text for text, dropped in sent.items() if not dropped)
    failed = [m for m in answers if m.status == "failed"]
    assert len(failed) == sum(sent.values())
    full_texts = list(sent)
    for m in failed:
        assert m.error is not None and m.error["code"] in (
            "upstream_disconnected",
            "upstream_incomplete",
        )
        assert any(text.startswith(m.text) for text in full_texts)
    assert {m.status for m in answers} <= {"completed", "failed"}
