"""A client that leaves before the upstream's response head: the answer is still finished and
stored complete (policy ``finish``), for streamed and non-streamed requests, on both stores."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply
from tests.util import all_messages, eventually

USER = {"role": "user", "content": "Tell me about slow upstreams."}


async def _leave_before_head(proxy: ProxyServer, stream: bool) -> None:
    body = {"model": "m", "messages": [USER], "stream": stream}
    timeout = aiohttp.ClientTimeout(total=0.3)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        with pytest.raises(asyncio.TimeoutError):
            await http.post(f"{proxy.url}/chat/completions", json=body)


async def _answer(store: Store) -> object:
    async def check() -> object:
        answers = [m for m in await all_messages(store) if m.role == "assistant"]
        return answers[0] if answers and answers[0].status != "in_progress" else None

    return await eventually(check)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_client_leaving_before_the_head_still_stores_the_complete_answer(
    proxy: ProxyServer,
    upstream: FakeUpstream,
    store: Store,
    stream: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream.enqueue(Reply(content="A complete answer after a slow head.", delay=1.0))
    with caplog.at_level(logging.WARNING):
        await _leave_before_head(proxy, stream)
        answer = await _answer(store)
    assert answer.status == "completed"
    assert answer.text == "A complete answer after a slow head."
    assert answer.client_disconnected is True
    assert answer.error is None
    assert not [r for r in caplog.records if r.exc_info], "no traceback is logged"


async def test_many_early_leavers_lose_no_answer(
    proxy: ProxyServer, upstream: FakeUpstream, store: Store
) -> None:
    n = 12
    for i in range(n):
        upstream.enqueue(Reply(content=f"answer {i}", delay=1.5))
    async with aiohttp.ClientSession() as http:

        async def ask(i: int) -> None:
            body = {
                "model": "m",
                "messages": [{"role": "user", "content": f"question {i}"}],
                "stream": i % 2 == 0,
            }
            await http.post(f"{proxy.url}/chat/completions", json=body)

        clients = [asyncio.create_task(ask(i)) for i in range(n)]
        # Every client leaves once the upstream has its request, long before the head.
        await eventually(lambda: _count(upstream, n))
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)

    async def done() -> list[object] | None:
        answers = [m for m in await all_messages(store) if m.role == "assistant"]
        finished = [m for m in answers if m.status != "in_progress"]
        return finished if len(finished) == n else None

    answers = await eventually(done)
    assert sorted(m.status for m in answers) == ["completed"] * n
    assert sorted(m.text for m in answers) == sorted(f"answer {i}" for i in range(n))
    assert all(m.client_disconnected for m in answers)


async def _count(upstream: FakeUpstream, n: int) -> bool:
    return len(upstream.chat_requests) >= n
