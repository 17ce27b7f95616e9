"""The fake upstream speaks the Chat Completions wire format and misbehaves on demand."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from chatproxy.testing import FakeUpstream, Reply, ToolCall

MESSAGES = [{"role": "user", "content": "Say hello to the nice test"}]


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": MESSAGES, **extra}


def parse_sse(raw: bytes) -> list[Any]:
    """Every ``data:`` payload: decoded JSON, or the raw text when it is not JSON."""
    events: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        try:
            events.append(orjson.loads(data))
        except orjson.JSONDecodeError:
            events.append(data)
    return events


async def raw_stream(
    http: aiohttp.ClientSession, fake: FakeUpstream, **extra: Any
) -> tuple[aiohttp.ClientResponse, list[Any]]:
    async with http.post(f"{fake.url}/chat/completions", json=chat_body(stream=True, **extra)) as r:
        return r, parse_sse(await r.read())


async def sdk_text(sdk: openai.AsyncOpenAI, **extra: Any) -> str:
    stream = await sdk.chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True, **extra
    )
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    return "".join(parts)


async def test_streamed_text_equals_content(fake: FakeUpstream, sdk: openai.AsyncOpenAI) -> None:
    fake.enqueue(Reply(content="The quick  brown fox,\njumps!  "))
    assert await sdk_text(sdk) == "The quick  brown fox,\njumps!  "
    assert await sdk_text(sdk) == "Hello! How can I help you today?"  # queue empty: default


async def test_explicit_chunks(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    fake.enqueue(Reply(chunks=["Hel", "lo", "!"]))
    resp, events = await raw_stream(http, fake)
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert [c["choices"][0]["delta"] for c in chunks[1:4]] == [
        {"content": "Hel"},
        {"content": "lo"},
        {"content": "!"},
    ]
    last = chunks[-1]["choices"][0]
    assert last == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    for chunk in chunks:
        assert chunk["id"] == chunks[0]["id"] and chunk["id"].startswith("chatcmpl-")
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "gpt-test"
        assert chunk["system_fingerprint"] == "fp_fake"
        assert isinstance(chunk["created"], int)
        assert "usage" not in chunk


async def test_non_streamed_completion(fake: FakeUpstream, sdk: openai.AsyncOpenAI) -> None:
    fake.enqueue(Reply(content="Four words right here", model="other-model"))
    completion = await sdk.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.model == "other-model"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Four words right here"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 6
    assert completion.usage.completion_tokens == 4
    assert completion.usage.total_tokens == 10


async def test_tool_calls_stream_in_fragments(fake: FakeUpstream, sdk: openai.AsyncOpenAI) -> None:
    calls = [
        ToolCall("get_weather", '{"city": "Paris", "unit": "celsius"}', id="call_a"),
        ToolCall("get_time", '{"timezone": "Europe/Paris"}'),
    ]
    fake.enqueue(Reply(tool_calls=calls, interleave_tool_calls=True))
    stream = await sdk.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    names: dict[int, str] = {}
    ids: dict[int, str] = {}
    args: dict[int, list[str]] = {0: [], 1: []}
    content, finish, order = "", None, []
    async for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
        for tc in delta.tool_calls or []:
            order.append(tc.index)
            if tc.id:
                ids[tc.index] = tc.id
            if tc.function and tc.function.name:
                names[tc.index] = tc.function.name
            if tc.function and tc.function.arguments:
                args[tc.index].append(tc.function.arguments)
    assert content == ""
    assert finish == "tool_calls"
    assert names == {0: "get_weather", 1: "get_time"}
    assert ids[0] == "call_a" and ids[1].startswith("call_")
    assert "".join(args[0]) == calls[0].arguments
    assert "".join(args[1]) == calls[1].arguments
    assert len(args[0]) > 1 and len(args[1]) > 1
    assert order[:4] == [0, 1, 0, 1]  # interleaved


async def test_tool_calls_non_streamed(fake: FakeUpstream, sdk: openai.AsyncOpenAI) -> None:
    fake.enqueue(Reply(tool_calls=[ToolCall("lookup", '{"q": "x"}', id="call_1")]))
    completion = await sdk.chat.completions.create(model="gpt-test", messages=MESSAGES)
    message = completion.choices[0].message
    assert message.content is None
    assert message.tool_calls is not None
    assert message.tool_calls[0].id == "call_1"
    assert message.tool_calls[0].function.name == "lookup"
    assert message.tool_calls[0].function.arguments == '{"q": "x"}'
    assert completion.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_field(fake: FakeUpstream, http: aiohttp.ClientSession, field: str) -> None:
    fake.enqueue(Reply(content="42", reasoning="Let me think hard.", reasoning_field=field))
    _, events = await raw_stream(http, fake)
    deltas = [e["choices"][0]["delta"] for e in events[:-1]]
    assert "".join(d.get(field, "") for d in deltas) == "Let me think hard."
    first_content = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all(field not in d for d in deltas[first_content:])
    fake.enqueue(Reply(content="42", reasoning="Hmm.", reasoning_field=field))
    async with http.post(f"{fake.url}/chat/completions", json=chat_body()) as resp:
        message = (await resp.json())["choices"][0]["message"]
    assert message[field] == "Hmm." and message["content"] == "42"


async def test_include_usage(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    _, events = await raw_stream(http, fake, stream_options={"include_usage": True})
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["total_tokens"] == (
        usage_chunk["usage"]["prompt_tokens"] + usage_chunk["usage"]["completion_tokens"]
    )
    assert all(e["usage"] is None for e in events[:-2])

    _, events = await raw_stream(http, fake)
    assert all("usage" not in e and e["choices"] for e in events[:-1])


async def test_include_usage_with_sdk(fake: FakeUpstream, sdk: openai.AsyncOpenAI) -> None:
    fake.enqueue(Reply(usage={"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}))
    stream = await sdk.chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 10


async def test_error_status_with_headers(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    fake.enqueue(Reply(status=503, headers={"Retry-After": "1"}))
    async with http.post(f"{fake.url}/chat/completions", json=chat_body(stream=True)) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert body["error"]["type"] == "server_error"
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_error_with_sdk(fake: FakeUpstream, sdk: openai.AsyncOpenAI) -> None:
    error = {"error": {"message": "slow down", "type": "requests", "param": None, "code": "rl"}}
    fake.enqueue(Reply(status=429, error_body=error))
    with pytest.raises(openai.RateLimitError) as info:
        await sdk.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert info.value.status_code == 429
    assert info.value.code == "rl"


async def test_raw_error_body_is_verbatim(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    raw = '{"object":"error","message":"bad things","code":400}'
    fake.enqueue(Reply(status=400, error_body=raw))
    async with http.post(f"{fake.url}/chat/completions", json=chat_body()) as resp:
        assert resp.status == 400
        assert await resp.text() == raw


async def test_drop_after_breaks_the_stream(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake.enqueue(Reply(content="one two three four five", drop_after=3))
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(f"{fake.url}/chat/completions", json=chat_body(stream=True)) as r:
            async for data in r.content.iter_any():
                received += data
    assert b"[DONE]" not in received
    assert received.count(b"data: ") == 3
    assert not fake.chat_requests[0].completed.is_set()


async def test_drop_after_with_sdk(fake: FakeUpstream, sdk: openai.AsyncOpenAI) -> None:
    fake.enqueue(Reply(content="one two three four five", drop_after=2))
    with pytest.raises(openai.APIConnectionError):
        await sdk_text(sdk)


async def test_split_writes_still_parse(
    fake: FakeUpstream, sdk: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    fake.enqueue(Reply(content="split me into many pieces", split_writes=True))
    assert await sdk_text(sdk) == "split me into many pieces"

    fake.enqueue(Reply(content="a b", split_writes=True))
    async with http.post(f"{fake.url}/chat/completions", json=chat_body(stream=True)) as resp:
        reads = [data async for data, _ in resp.content.iter_chunks()]
    assert len(parse_sse(b"".join(reads))) == 5  # role, "a ", "b", finish, [DONE]
    assert len(reads) > 10


async def test_coalesce_and_chunk_delay(fake: FakeUpstream, sdk: openai.AsyncOpenAI) -> None:
    fake.enqueue(Reply(content="all at once", coalesce=True))
    assert await sdk_text(sdk) == "all at once"
    fake.enqueue(Reply(content="slowly but surely", chunk_delay=0.01, delay=0.01))
    assert await sdk_text(sdk) == "slowly but surely"


async def test_garbage_after(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    fake.enqueue(Reply(content="x y", garbage_after=2))
    _, events = await raw_stream(http, fake)
    assert events[2] == "{not json"
    assert events[-1] == "[DONE]"


async def test_requests_are_recorded(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    url = f"{fake.url}/chat/completions?api-version=1"
    headers = {"Authorization": "Bearer sk-test", "X-Custom": "yes"}
    async with http.post(url, json=chat_body(), headers=headers) as resp:
        assert resp.status == 200
    async with http.get(f"{fake.url}/models") as resp:
        assert resp.status == 200
    assert [r.path for r in fake.requests] == ["/v1/chat/completions", "/v1/models"]
    assert len(fake.chat_requests) == 1
    recorded = fake.chat_requests[0]
    assert recorded.method == "POST"
    assert recorded.query == {"api-version": "1"}
    assert recorded.headers["Authorization"] == "Bearer sk-test"
    assert recorded.headers["x-custom"] == "yes"
    assert orjson.loads(recorded.body) == chat_body()
    assert recorded.json == chat_body()
    assert recorded.completed.is_set() and not recorded.disconnected.is_set()


async def test_invalid_json_is_rejected(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    fake.enqueue(Reply(content="kept for later"))
    async with http.post(f"{fake.url}/chat/completions", data=b"{nope") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    assert fake.requests[0].json is None and fake.requests[0].body == b"{nope"
    async with http.post(f"{fake.url}/chat/completions", json=chat_body()) as resp:
        assert (await resp.json())["choices"][0]["message"]["content"] == "kept for later"


async def test_client_disconnect_sets_disconnected(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake.enqueue(Reply(content="a long answer " * 50, chunk_delay=0.02))
    async with http.post(f"{fake.url}/chat/completions", json=chat_body(stream=True)) as resp:
        await resp.content.readuntil(b"\n\n")
        resp.close()
    recorded = fake.chat_requests[0]
    await asyncio.wait_for(recorded.disconnected.wait(), timeout=5)
    assert not recorded.completed.is_set()


async def test_disconnect_detected_by_write_failure(http: aiohttp.ClientSession) -> None:
    fake = FakeUpstream(default=Reply(content="word " * 100, chunk_delay=0.02))
    runner = aiohttp.web.AppRunner(fake.app)  # default runner: no handler cancellation
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"
        async with http.post(url, json=chat_body(stream=True)) as resp:
            await resp.content.readuntil(b"\n\n")
            resp.close()
        await asyncio.wait_for(fake.chat_requests[0].disconnected.wait(), timeout=5)
    finally:
        await runner.cleanup()


async def test_models(fake: FakeUpstream, sdk: openai.AsyncOpenAI) -> None:
    models = [m async for m in sdk.models.list()]
    assert len(models) >= 2
    assert all(m.object == "model" for m in models)


async def test_embeddings(fake: FakeUpstream, sdk: openai.AsyncOpenAI) -> None:
    one = await sdk.embeddings.create(model="emb", input="hello world")
    again = await sdk.embeddings.create(model="emb", input=["hello world", "other"])
    floats = await sdk.embeddings.create(model="emb", input="hello world", encoding_format="float")
    assert one.object == "list" and one.model == "emb"
    assert len(one.data) == 1 and len(again.data) == 2
    assert [d.index for d in again.data] == [0, 1]
    assert one.data[0].embedding == pytest.approx(again.data[0].embedding, abs=1e-6)
    assert one.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert again.data[0].embedding != again.data[1].embedding
    assert abs(sum(v * v for v in floats.data[0].embedding) - 1) < 1e-3


async def test_unknown_path_is_404(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{fake.url}/nope", json={}) as resp:
        assert resp.status == 404
        error = (await resp.json())["error"]
    assert error["message"] == "Invalid URL (POST /v1/nope)"
    assert fake.requests[0].path == "/v1/nope"
    assert fake.chat_requests == []


async def test_demo_echoes_the_user(http: aiohttp.ClientSession) -> None:
    async with FakeUpstream(demo=True) as demo:
        messages = [{"role": "user", "content": [{"type": "text", "text": "Ping  me"}]}]
        async with http.post(
            f"{demo.url}/chat/completions", json={"model": "m", "messages": messages}
        ) as resp:
            content = (await resp.json())["choices"][0]["message"]["content"]
    assert content.startswith('You said: "Ping me".')


async def test_fast_mode(http: aiohttp.ClientSession) -> None:
    async with FakeUpstream(fast=True) as fast:
        _, events = await raw_stream(http, fast, stream_options={"include_usage": True})
        contents = [e["choices"][0]["delta"].get("content") for e in events[:-2]]
        assert len([c for c in contents if c]) == 20
        _, again = await raw_stream(http, fast, stream_options={"include_usage": True})
        assert again[0]["id"] != events[0]["id"]
        assert [e["choices"] for e in again[:-1]] == [e["choices"] for e in events[:-1]]
        assert again[-2]["usage"] == events[-2]["usage"]

        headers = {"X-Fake-Chunks": "3", "X-Fake-Chunk-Delay": "0.001"}
        body = chat_body(stream=True)
        async with http.post(f"{fast.url}/chat/completions", json=body, headers=headers) as r:
            events = parse_sse(await r.read())
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == (
            "lorem ipsum dolor"
        )
