"""The engine alone: a generation started from a plain description of the work (no HTTP
request anywhere), its numbered event log, and the store it writes; on both stores."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from chatproxy.auth import Caller
from chatproxy.engine.feed import LocalFeed, following
from chatproxy.engine.planning import plan_client_history
from chatproxy.engine.registry import Generations
from chatproxy.engine.start import ChatRequest, Engine, Work, start_generation
from chatproxy.errors import Conflict
from chatproxy.ids import new_message_id
from chatproxy.settings import Settings
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply
from chatproxy.upstream.client import Upstream

CALLER = Caller(user_id="ada", name="Ada")


@pytest.fixture
async def engine(make_settings: Callable[..., Settings]) -> AsyncIterator[Engine]:
    settings = make_settings()
    store = Store(settings.storage.url)
    await store.open()
    await store.ensure_user(CALLER.user_id, CALLER.name)
    async with aiohttp.ClientSession() as session:
        yield Engine(
            settings=settings,
            store=store,
            upstream=Upstream(settings.upstream, session),
            generations=Generations(settings.chats.resume_grace),
        )
    await store.close()


async def _work(engine: Engine, body: dict[str, Any]) -> Work:
    raw = orjson.dumps(body)
    req = ChatRequest(raw, body, body["messages"], bool(body.get("stream")), body["model"])
    turn, parent_hash, history = await plan_client_history(
        engine.store, engine.settings, CALLER, body, req.messages, None
    )
    return Work(
        face="chat.completions",
        caller=CALLER,
        request=req,
        turn=turn,
        parent_hash=parent_hash,
        history=history,
        request_id="req_engine",
    )


async def test_a_stream_started_from_a_plain_description_is_logged_and_stored(
    engine: Engine, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Reply(content="one two three", split_writes=True))
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "count"}]}
    work = await _work(engine, body)
    gen = await start_generation(engine, work)
    feed = LocalFeed(gen)
    batches = []
    async with following(feed):
        while (batch := await feed.next()) is not None:
            batches.append(batch)
    await gen.task
    # Events are numbered from 1 without a gap; each carries the upstream's own bytes.
    numbers = [b.first + i for b in batches for i in range(len(b.data))]
    assert numbers == list(range(1, len(numbers) + 1))
    data = [d for b in batches for d in b.data]
    raw = b"".join(r for b in batches for r in b.raw or [])
    assert data[-1] == b"[DONE]"
    assert raw.count(b"\n\n") == len(data)
    for event, piece in zip(data, (r for b in batches for r in b.raw or []), strict=True):
        assert piece.startswith(b"data: " + event)
    # The usage-only chunk the client did not ask for was asked for upstream, stored, hidden.
    assert orjson.loads(upstream.requests[-1].body)["stream_options"] == {"include_usage": True}
    assert not any(b'"choices":[]' in d for d in data)
    stored = await engine.store.get_message(gen.message_id)
    assert stored is not None and stored.status == "completed"
    assert stored.text == "one two three" and stored.total_tokens is not None
    chat = await engine.store.get_chat(gen.chat_id)
    assert chat is not None and chat.owner_id == "ada" and chat.head_id == gen.message_id


async def test_a_second_answer_in_a_busy_chat_is_refused_and_stores_nothing(
    engine: Engine, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Reply(content="slow", chunk_delay=0.2))
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    first = await start_generation(engine, await _work(engine, body))
    await first.begun()
    assert first.turn is not None
    work = await _work(engine, body)
    # A second answer in the same chat, from the same point, while the first one runs.
    work.turn = dataclasses.replace(first.turn, assistant_id=new_message_id(), new_messages=[])
    with pytest.raises(Conflict) as refused:
        await start_generation(engine, work)
    assert refused.value.code == "chat_busy"
    assert await engine.store.get_message(work.turn.assistant_id) is None
    await first.task
