"""Background responses and resuming a Responses stream by ``sequence_number``: a background
answer runs as the proxy's own generation and can be polled, followed and cancelled; a
streamed answer whose client left is finished and stored, and followed again with
``GET /v1/responses/{id}?stream=true&starting_after=N``, on this instance or (with Redis)
on another one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from chatproxy.server import ProxyServer
from chatproxy.testing import FakeUpstream, Reply
from tests.conftest import REDIS_URL, needs_redis

StartProxy = Callable[..., Awaitable[ProxyServer]]
MODES = {"native": ("native", "stateless"), "translate": ("translate", "none")}
WORDS = [f"w{i} " for i in range(30)]


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest, upstream: FakeUpstream) -> str:
    upstream.responses = MODES[request.param][1]
    return request.param


def client_of(proxy: ProxyServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url, api_key="sk-client", max_retries=0)


async def until_done(client: openai.AsyncOpenAI, response_id: str) -> Any:
    for _ in range(400):
        got = await client.responses.retrieve(response_id)
        if got.status not in ("queued", "in_progress"):
            return got
        await asyncio.sleep(0.02)
    raise AssertionError("the background response never ended")


async def read_events(resp: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """The SSE events of a Responses stream, checked against their ``event:`` names."""
    events = []
    for frame in (await resp.read()).split(b"\n\n"):
        if not frame.strip():
            continue
        lines = dict(line.split(b": ", 1) for line in frame.split(b"\n"))
        event = orjson.loads(lines[b"data"])
        assert lines[b"event"].decode() == event["type"]
        events.append(event)
    return events


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


async def test_background_answers_at_once_and_runs_to_the_end(
    start_proxy: StartProxy, upstream: FakeUpstream, mode: str
) -> None:
    proxy = await start_proxy(**{"upstream.responses": MODES[mode][0]})
    upstream.enqueue(Reply(chunks=WORDS, chunk_delay=0.01))
    async with client_of(proxy) as client:
        queued = await client.responses.create(model="fake-model", input="go", background=True)
        assert queued.status == "queued" and queued.background is True
        done = await until_done(client, queued.id)
        assert done.status == "completed" and done.output_text == "".join(WORDS)
        assert done.background is True
        # Its events can be read again from any point.
        stream = await client.responses.retrieve(queued.id, stream=True, starting_after=3)
        events = [event async for event in stream]
    assert events[0].sequence_number == 4
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "".join(WORDS)
    sent = upstream.chat_requests if mode == "translate" else upstream.responses_requests
    assert len(sent) == 1 and sent[0].json["stream"] is True
    assert "background" not in sent[0].json


async def test_a_background_response_is_cancelled_and_stored_so(
    start_proxy: StartProxy, upstream: FakeUpstream, mode: str
) -> None:
    proxy = await start_proxy(**{"upstream.responses": MODES[mode][0]})
    upstream.enqueue(Reply(chunks=WORDS, chunk_delay=0.2))
    async with client_of(proxy) as client:
        queued = await client.responses.create(model="fake-model", input="go", background=True)
        cancelled = await client.responses.cancel(queued.id)
        assert cancelled.status == "cancelled"
        assert (await client.responses.retrieve(queued.id)).status == "cancelled"
        # One that is not a background response cannot be.
        upstream.enqueue(Reply(content="fine"))
        plain = await client.responses.create(model="fake-model", input="hi")
        with pytest.raises(openai.BadRequestError):
            await client.responses.cancel(plain.id)


async def test_a_stream_whose_client_left_is_finished_and_followed_after_n(
    start_proxy: StartProxy, upstream: FakeUpstream, http: aiohttp.ClientSession, mode: str
) -> None:
    proxy = await start_proxy(**{"upstream.responses": MODES[mode][0]})
    upstream.enqueue(Reply(chunks=WORDS, chunk_delay=0.02))
    body = {"model": "fake-model", "input": "go", "stream": True}
    seen: list[dict[str, Any]] = []
    async with http.post(f"{proxy.url}/responses", json=body) as resp:
        response_id = resp.headers["X-Message-Id"]
        buffer = b""
        while len(seen) < 6:
            buffer += await resp.content.readany()
            *frames, buffer = buffer.split(b"\n\n")
            for frame in frames:
                data = frame.split(b"data: ", 1)[1]
                seen.append(orjson.loads(data))
        # The client goes away mid-answer.
    last = seen[-1]["sequence_number"]
    url = f"{proxy.url}/responses/{response_id}?stream=true&starting_after={last}"
    async with http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        rest = await read_events(resp)
    numbers = [e["sequence_number"] for e in rest]
    assert numbers[0] == last + 1 and numbers == list(range(last + 1, last + 1 + len(rest)))
    assert rest[-1]["type"] == "response.completed"
    assert text_of(seen) + text_of(rest) == "".join(WORDS)
    assert rest[-1]["response"]["id"] == response_id
    async with client_of(proxy) as client:
        stored = await client.responses.retrieve(response_id)
    assert stored.status == "completed" and stored.output_text == "".join(WORDS)


async def test_a_finished_answer_no_longer_running_replays_from_the_store(
    start_proxy: StartProxy, upstream: FakeUpstream, http: aiohttp.ClientSession, mode: str
) -> None:
    proxy = await start_proxy(**{"upstream.responses": MODES[mode][0], "chats.resume_grace": 0.0})
    upstream.enqueue(Reply(content="stored words"))
    async with client_of(proxy) as client:
        done = await client.responses.create(model="fake-model", input="go")
        await asyncio.sleep(0.05)
        stream = await client.responses.retrieve(done.id, stream=True)
        events = [event async for event in stream]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.output_text == "stored words"


@needs_redis
async def test_a_stream_is_followed_through_a_second_instance(
    start_proxy: StartProxy,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    redis_prefix: str,
    mode: str,
) -> None:
    shared = {
        "redis.url": REDIS_URL,
        "redis.prefix": redis_prefix,
        "limits.ip_rate": "0",
        "upstream.responses": MODES[mode][0],
    }
    a = await start_proxy(**shared, **{"server.instance_id": "a"})
    b = await start_proxy(**shared, **{"server.instance_id": "b"})
    upstream.enqueue(Reply(chunks=WORDS, chunk_delay=0.02))
    async with client_of(a) as client_a:
        queued = await client_a.responses.create(model="fake-model", input="go", background=True)
    await asyncio.sleep(0.1)  # under way on a
    url = f"{b.url}/responses/{queued.id}?stream=true&starting_after=2"
    async with http.get(url) as resp:
        assert resp.status == 200
        events = await read_events(resp)
    assert events[0]["sequence_number"] == 3
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "".join(WORDS)
