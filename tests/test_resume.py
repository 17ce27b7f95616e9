"""Resuming a stream (GET /v1/conversations/{chat_id}/stream) and one generation per chat."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import orjson
from openai.types.chat import ChatCompletionChunk

from chatproxy.server import ProxyServer
from chatproxy.testing import FakeUpstream, Reply

WORDS = [f"word{i} " for i in range(20)]
BODY = {"model": "m", "messages": [{"role": "user", "content": "tell me a story"}], "stream": True}


def parse_events(raw: bytes) -> list[tuple[int, bytes]]:
    """``(id, data)`` of each event of a resumed stream."""
    out = []
    for block in raw.split(b"\n\n"):
        if not block:
            continue
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n"))
        out.append((int(fields[b"id"]), fields[b"data"]))
    return out


def text_of(events: list[tuple[int, bytes]]) -> str:
    chunks = [orjson.loads(data) for _, data in events if data != b"[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def start_and_leave(
    http: aiohttp.ClientSession, proxy: ProxyServer, upstream: FakeUpstream, until: bytes
) -> str:
    """Start a slow stream, read it up to ``until``, and go away; the chat id."""
    upstream.enqueue(Reply(chunks=WORDS, chunk_delay=0.03))
    resp = await http.post(f"{proxy.url}/chat/completions", json=BODY)
    chat_id = resp.headers["X-Chat-Id"]
    await resp.content.readuntil(until)
    resp.close()
    return chat_id


async def resume(
    http: aiohttp.ClientSession, proxy: ProxyServer, chat_id: str, **headers: str
) -> tuple[int, bytes]:
    url = f"{proxy.url}/conversations/{chat_id}/stream"
    async with http.get(url, headers=headers) as resp:
        return resp.status, await resp.read()


async def test_resume_after_a_disconnect_returns_the_whole_answer_once_ending_in_done(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    chat_id = await start_and_leave(http, proxy, upstream, b"word3")
    status, raw = await resume(http, proxy, chat_id)
    assert status == 200
    events = parse_events(raw)
    assert [n for n, _ in events] == list(range(1, len(events) + 1))
    assert events[-1][1] == b"[DONE]"
    assert text_of(events) == "".join(WORDS)
    assert b": " not in raw.replace(b"id: ", b"").replace(b"data: ", b"")  # no comment lines


async def test_the_official_sdk_parses_a_resumed_stream(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    chat_id = await start_and_leave(http, proxy, upstream, b"word1")
    async with openai.AsyncOpenAI(base_url=proxy.url, api_key="x", max_retries=0) as client:
        stream = await client.get(
            f"/conversations/{chat_id}/stream",
            cast_to=ChatCompletionChunk,
            stream=True,
            stream_cls=openai.AsyncStream[ChatCompletionChunk],
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "".join(WORDS)


async def test_last_event_id_and_after_skip_exactly_n_events(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    chat_id = await start_and_leave(http, proxy, upstream, b"word1")
    _, raw = await resume(http, proxy, chat_id)
    everything = parse_events(raw)
    _, raw = await resume(http, proxy, chat_id, **{"Last-Event-ID": "5"})
    assert parse_events(raw) == everything[5:]
    async with http.get(f"{proxy.url}/conversations/{chat_id}/stream?after=7") as resp:
        assert parse_events(await resp.read()) == everything[7:]
    _, raw = await resume(http, proxy, chat_id, **{"Last-Event-ID": str(len(everything))})
    assert raw == b""


async def test_two_subscribers_get_the_same_events_live(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.enqueue(Reply(chunks=WORDS, chunk_delay=0.03))
    async with http.post(f"{proxy.url}/chat/completions", json=BODY) as original:
        chat_id = original.headers["X-Chat-Id"]
        (_, a), (_, b) = await asyncio.gather(
            resume(http, proxy, chat_id), resume(http, proxy, chat_id)
        )
        await original.read()
    assert a == b
    assert text_of(parse_events(a)) == "".join(WORDS)


async def test_idle_chat_is_204_and_a_just_finished_one_is_replayed_in_the_grace_period(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"chats.resume_grace": 0.5})
    async with http.post(f"{proxy.url}/chat/completions", json=BODY) as resp:
        chat_id = resp.headers["X-Chat-Id"]
        await resp.read()
    status, raw = await resume(http, proxy, chat_id)
    assert status == 200
    assert parse_events(raw)[-1][1] == b"[DONE]"
    await asyncio.sleep(0.7)
    status, raw = await resume(http, proxy, chat_id)
    assert (status, raw) == (204, b"")


async def test_resume_of_unknown_or_another_users_chat_is_404_and_bad_input_400(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"auth.mode": "header", "server.trusted_proxies": ["127.0.0.0/8"]})
    alice, bob = {"X-User-Id": "alice"}, {"X-User-Id": "bob"}
    upstream.enqueue(Reply(chunks=WORDS, chunk_delay=0.02))
    async with http.post(f"{proxy.url}/chat/completions", json=BODY, headers=alice) as resp:
        chat_id = resp.headers["X-Chat-Id"]
        assert (await resume(http, proxy, chat_id, **bob))[0] == 404
        assert (await resume(http, proxy, "chat_nope", **alice))[0] == 404
        async with http.get(
            f"{proxy.url}/conversations/{chat_id}/stream?after=-1", headers=alice
        ) as bad:
            assert bad.status == 400
            assert (await bad.json())["error"]["code"] == "invalid_value"
        assert (await resume(http, proxy, chat_id, **{**alice, "Last-Event-ID": "x"}))[0] == 400
        assert (await resume(http, proxy, "bad.id", **alice))[0] == 400
        await resp.read()


async def test_a_second_post_on_a_busy_chat_is_409_and_stores_nothing(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    from chatproxy.appkeys import STORE
    from tests.util import all_messages

    upstream.enqueue(Reply(chunks=WORDS, chunk_delay=0.03))
    headers = {"X-Chat-Id": "busy-chat"}
    async with http.post(f"{proxy.url}/chat/completions", json=BODY, headers=headers) as first:
        await first.content.readuntil(b"word1")
        stored = len(await all_messages(proxy.app[STORE]))
        other = {**BODY, "messages": [{"role": "user", "content": "and another thing"}]}
        async with http.post(
            f"{proxy.url}/chat/completions", json=other, headers=headers
        ) as second:
            assert second.status == 409
            assert (await second.json())["error"]["code"] == "chat_busy"
        assert len(await all_messages(proxy.app[STORE])) == stored
        await first.read()
    async with http.post(f"{proxy.url}/chat/completions", json=other, headers=headers) as third:
        assert third.status == 200
        await third.read()
    assert len(upstream.chat_requests) == 2


async def test_finished_replays_stay_within_their_memory_budget() -> None:
    from types import SimpleNamespace

    from chatproxy.engine.eventlog import EventLog
    from chatproxy.engine.registry import Generations

    generations = Generations(grace=30, budget=3000)
    for i in range(5):
        events = EventLog()
        events.pieces = [b"x" * 900]
        events.done = True
        generations._finish(  # a finished stream of ~1 kB
            SimpleNamespace(chat_id=f"c{i}", message_id=f"m{i}", stream=True, events=events)
        )
    kept = [i for i in range(5) if generations.find(f"c{i}") is not None]
    # Each counts 900 bytes of data + 64 of overhead: three fit in 3,000; the oldest went first.
    assert kept == [2, 3, 4]
    assert generations.find("c4").events.pieces == [b"x" * 900]
