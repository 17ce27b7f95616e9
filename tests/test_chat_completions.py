"""POST /v1/chat/completions end to end: the real openai SDK and raw HTTP against a proxy on a
real port, in front of the fake upstream, with the store as a real SQLite file."""

from __future__ import annotations

import asyncio
import gc

import aiohttp
import openai
import orjson
import pytest

from chatproxy.engine.generation import Generation
from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply, ToolCall
from tests.util import all_chats, all_messages, eventually, message, post_stream, settled

USER = {"role": "user", "content": "What is the capital of France?"}


async def stream_text(client: openai.AsyncOpenAI, messages: list[dict], **kw: object) -> str:
    stream = await client.chat.completions.create(
        model="fake-model", messages=messages, stream=True, **kw
    )
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    return "".join(parts)


async def test_streamed_answer_is_forwarded_and_stored_with_usage_and_timings(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, store: Store
) -> None:
    upstream.enqueue(Reply(content="Paris is the capital of France."))
    async with client.chat.completions.with_streaming_response.create(
        model="fake-model", messages=[USER], stream=True
    ) as response:
        chat_id = response.headers["x-chat-id"]
        message_id = response.headers["x-message-id"]
        assert response.headers["x-request-id"].startswith("req_")
        text = "".join(
            [c.choices[0].delta.content or "" async for c in await response.parse() if c.choices]
        )
    assert text == "Paris is the capital of France."
    assert chat_id.startswith("chat_") and len(chat_id) == 5 + 24
    assert message_id.startswith("msg_") and len(message_id) == 4 + 24

    answer = await message(store, message_id)
    assert answer.status == "completed"
    assert answer.text == text
    assert answer.data == {"role": "assistant", "content": text}
    assert answer.chat_id == chat_id
    assert answer.finish_reason == "stop"
    assert answer.model == "fake-model"
    assert answer.prompt_tokens and answer.completion_tokens
    assert answer.total_tokens == answer.prompt_tokens + answer.completion_tokens
    assert answer.ttft_ms is not None and answer.duration_ms is not None
    assert answer.duration_ms >= answer.ttft_ms >= 0
    assert answer.upstream_id and answer.upstream_id.startswith("chatcmpl-")
    assert answer.system_fingerprint == "fp_fake"
    assert answer.params == {"model": "fake-model", "stream": True}
    assert answer.client_disconnected is False
    assert answer.completed_at is not None
    question = await message(store, answer.parent_id or "")
    assert (question.role, question.text, question.parent_id) == ("user", USER["content"], None)
    chat = (await all_chats(store))[0]
    assert chat.head_id == message_id
    assert chat.title == USER["content"]


async def test_non_streamed_answer_is_forwarded_and_stored(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, store: Store
) -> None:
    upstream.enqueue(Reply(content="Paris."))
    raw = await client.chat.completions.with_raw_response.create(
        model="fake-model", messages=[USER], temperature=0.2
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Paris."
    answer = await message(store, raw.headers["x-message-id"])
    assert answer.status == "completed"
    assert answer.text == "Paris."
    assert answer.usage == completion.usage.model_dump(exclude_none=True)
    assert answer.total_tokens == completion.usage.total_tokens
    assert answer.params == {"model": "fake-model", "temperature": 0.2}
    assert answer.upstream_id == completion.id


async def test_response_head_arrives_before_the_first_body_byte(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.enqueue(Reply(content="slow answer here", chunk_delay=0.3))
    body = {"model": "m", "messages": [USER], "stream": True}
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        # The head is here, but the answer is still being produced upstream.
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["X-Chat-Id"].startswith("chat_")
        assert resp.headers["X-Message-Id"].startswith("msg_")
        assert resp.headers["X-Request-Id"].startswith("req_")
        assert not upstream.chat_requests[0].completed.is_set()
        await resp.read()


async def test_full_history_resent_threads_into_one_chat_with_each_message_once(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, store: Store
) -> None:
    history: list[dict] = []
    chat_ids = set()
    for turn in range(3):
        upstream.enqueue(Reply(content=f"Answer number {turn}."))
        history.append({"role": "user", "content": f"Question number {turn}?"})
        raw = await client.chat.completions.with_raw_response.create(
            model="fake-model", messages=history
        )
        chat_ids.add(raw.headers["x-chat-id"])
        history.append({"role": "assistant", "content": raw.parse().choices[0].message.content})
    assert len(chat_ids) == 1
    rows = await all_messages(store)
    assert [(m.role, m.text) for m in rows] == [(h["role"], h["content"]) for h in history]
    # A single line of descent: each message is the child of the one before.
    assert [m.parent_id for m in rows] == [None] + [m.id for m in rows[:-1]]
    assert len(await all_chats(store)) == 1


async def test_regenerate_becomes_a_sibling_branch_and_overwrites_nothing(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, store: Store
) -> None:
    upstream.enqueue(Reply(content="First answer."), Reply(content="Second answer."))
    first = await client.chat.completions.with_raw_response.create(
        model="fake-model", messages=[USER]
    )
    # A regenerate sends the same history again, without the answer.
    second = await client.chat.completions.with_raw_response.create(
        model="fake-model", messages=[USER]
    )
    assert first.headers["x-chat-id"] == second.headers["x-chat-id"]
    a = await message(store, first.headers["x-message-id"])
    b = await message(store, second.headers["x-message-id"])
    assert (a.text, b.text) == ("First answer.", "Second answer.")
    assert a.parent_id == b.parent_id is not None
    rows = await all_messages(store)
    assert [m.role for m in rows] == ["user", "assistant", "assistant"]
    chat = (await all_chats(store))[0]
    assert chat.head_id == b.id

    # Continuing from the first branch threads under it, not under the newer sibling.
    upstream.enqueue(Reply(content="Follow-up."))
    history = [USER, {"role": "assistant", "content": "First answer."}]
    history.append({"role": "user", "content": "And Germany?"})
    third = await client.chat.completions.with_raw_response.create(
        model="fake-model", messages=history
    )
    c = await message(store, third.headers["x-message-id"])
    follow_up_question = await message(store, c.parent_id or "")
    assert follow_up_question.parent_id == a.id
    assert len(await all_messages(store)) == 5


async def test_edited_earlier_message_starts_a_new_branch(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, store: Store
) -> None:
    history = [USER]
    upstream.enqueue(Reply(content="Paris."))
    first = await client.chat.completions.with_raw_response.create(
        model="fake-model", messages=history
    )
    history += [
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Tell me more."},
    ]
    await client.chat.completions.create(model="fake-model", messages=history)
    edited = [USER, {"role": "assistant", "content": "Paris."}]
    edited.append({"role": "user", "content": "Tell me less."})
    upstream.enqueue(Reply(content="Fine."))
    raw = await client.chat.completions.with_raw_response.create(
        model="fake-model", messages=edited
    )
    assert raw.headers["x-chat-id"] == first.headers["x-chat-id"]
    users = [m for m in await all_messages(store) if m.role == "user"]
    assert [m.text for m in users] == [USER["content"], "Tell me more.", "Tell me less."]
    assert users[1].parent_id == users[2].parent_id == first.headers["x-message-id"]


async def test_x_chat_id_header_names_the_chat_and_its_aliases_work(
    client: openai.AsyncOpenAI, store: Store
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="fake-model", messages=[USER], extra_headers={"X-Chat-Id": "my-chat_1"}
    )
    assert raw.headers["x-chat-id"] == "my-chat_1"
    # The same first message in another named chat is a second chat, not a thread of the first.
    raw = await client.chat.completions.with_raw_response.create(
        model="fake-model", messages=[USER], extra_headers={"X-OpenWebUI-Chat-Id": "owui-7"}
    )
    assert raw.headers["x-chat-id"] == "owui-7"
    chats = sorted(c.id for c in await all_chats(store))
    assert chats == ["my-chat_1", "owui-7"]
    # Back in the first chat: threads there.
    history = [USER, {"role": "assistant", "content": raw.parse().choices[0].message.content}]
    history.append({"role": "user", "content": "more"})
    raw = await client.chat.completions.with_raw_response.create(
        model="fake-model", messages=history, extra_headers={"x-litellm-session-id": "my-chat_1"}
    )
    assert raw.headers["x-chat-id"] == "my-chat_1"
    assert len(await all_messages(store)) == 2 + 2 + 2


async def test_sse_events_split_across_tcp_writes_are_forwarded_and_stored(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, store: Store
) -> None:
    upstream.enqueue(Reply(content="Split into many little writes.", split_writes=True))
    async with client.chat.completions.with_streaming_response.create(
        model="fake-model", messages=[USER], stream=True
    ) as response:
        text = "".join(
            [c.choices[0].delta.content or "" async for c in await response.parse() if c.choices]
        )
        message_id = response.headers["x-message-id"]
    assert text == "Split into many little writes."
    assert (await message(store, message_id)).text == text


async def test_several_events_in_one_write_are_forwarded_and_stored(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession, store: Store
) -> None:
    upstream.enqueue(Reply(content="All at once, in one write.", coalesce=True))
    body = {"model": "m", "messages": [USER], "stream": True}
    _, events, message_id = await post_stream(http, proxy.url, body)
    assert events[-1] == b"data: [DONE]"
    chunks = [orjson.loads(e[len(b"data: ") :]) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "All at once, in one write."
    assert (await message(store, message_id)).text == text


async def test_stream_bytes_are_forwarded_unmodified(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = {
        "model": "m",
        "messages": [USER],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        via_proxy = await resp.read()
    async with http.post(f"{upstream.url}/chat/completions", json=body) as resp:
        direct = await resp.read()

    # Identical but for the random completion id and timestamp the fake makes per response.
    def normalise(raw: bytes) -> list[dict]:
        out = []
        for event in raw.split(b"\n\n")[:-2]:
            chunk = orjson.loads(event[len(b"data: ") :])
            chunk.pop("id"), chunk.pop("created")
            out.append(chunk)
        return out

    assert via_proxy.endswith(b"data: [DONE]\n\n")
    assert normalise(via_proxy) == normalise(direct)
    assert upstream.chat_requests[0].json == body


async def test_tool_call_fragments_and_reasoning_are_stored_merged(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, store: Store
) -> None:
    upstream.enqueue(
        Reply(
            reasoning="The user wants weather for two cities.",
            tool_calls=[
                ToolCall("get_weather", '{"city": "Paris", "unit": "celsius"}', id="call_a"),
                ToolCall("get_weather", '{"city": "Berlin", "unit": "celsius"}', id="call_b"),
            ],
            interleave_tool_calls=True,
        )
    )
    async with client.chat.completions.with_streaming_response.create(
        model="fake-model", messages=[USER], stream=True
    ) as response:
        message_id = response.headers["x-message-id"]
        [c async for c in await response.parse()]
    answer = await message(store, message_id)
    assert answer.status == "completed"
    assert answer.finish_reason == "tool_calls"
    assert answer.data["reasoning_content"] == "The user wants weather for two cities."
    assert answer.data["content"] is None
    assert answer.data["tool_calls"] == [
        {
            "id": "call_a",
            "type": "function",
            "function": {
                "name": "get_weather",
                "arguments": '{"city": "Paris", "unit": "celsius"}',
            },
        },
        {
            "id": "call_b",
            "type": "function",
            "function": {
                "name": "get_weather",
                "arguments": '{"city": "Berlin", "unit": "celsius"}',
            },
        },
    ]
    # The client then sends the tool results with the full history: it threads under the call.
    history = [USER, answer.data]
    history += [
        {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_b", "content": "15C"},
    ]
    raw = await client.chat.completions.with_raw_response.create(
        model="fake-model", messages=history
    )
    follow = await message(store, raw.headers["x-message-id"])
    tool_b = await message(store, follow.parent_id or "")
    tool_a = await message(store, tool_b.parent_id or "")
    assert (tool_a.parent_id, tool_a.data["tool_call_id"]) == (message_id, "call_a")


async def test_reasoning_sent_as_reasoning_field_is_stored(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, store: Store
) -> None:
    upstream.enqueue(Reply(content="42", reasoning="Think hard.", reasoning_field="reasoning"))
    raw = await client.chat.completions.with_raw_response.create(
        model="fake-model", messages=[USER], stream=True
    )
    [c async for c in raw.parse()]
    answer = await message(store, raw.headers["x-message-id"])
    assert answer.data == {"role": "assistant", "content": "42", "reasoning_content": "Think hard."}


async def test_usage_is_hidden_from_a_client_that_did_not_ask_and_stored_anyway(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession, store: Store
) -> None:
    body = {"model": "m", "messages": [USER], "stream": True}
    raw, _, message_id = await post_stream(http, proxy.url, body)
    chunks = [orjson.loads(e[6:]) for e in raw.split(b"\n\n") if e and e != b"data: [DONE]"]
    assert all(c["choices"] for c in chunks), "the usage-only chunk reached the client"
    assert raw.endswith(b"data: [DONE]\n\n")
    # Upstream was asked for usage, and it was stored.
    assert upstream.chat_requests[0].json["stream_options"] == {"include_usage": True}
    assert (await message(store, message_id)).total_tokens


async def test_usage_is_visible_to_a_client_that_asked(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, store: Store
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="fake-model",
        messages=[USER],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in raw.parse()]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    answer = await message(store, raw.headers["x-message-id"])
    assert answer.total_tokens == chunks[-1].usage.total_tokens


async def test_client_disconnect_mid_stream_still_stores_the_full_answer(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession, store: Store
) -> None:
    words = [f"word{i} " for i in range(20)]
    upstream.enqueue(Reply(chunks=words, chunk_delay=0.03))
    body = {"model": "m", "messages": [USER], "stream": True}
    resp = await http.post(f"{proxy.url}/chat/completions", json=body)
    message_id = resp.headers["X-Message-Id"]
    await resp.content.readuntil(b"word2")
    resp.close()  # the client goes away

    answer = await settled(store, message_id)
    assert answer.status == "completed"
    assert answer.text == "".join(words)
    assert answer.client_disconnected is True
    assert not upstream.chat_requests[0].disconnected.is_set()


async def test_abort_policy_cancels_upstream_and_stores_the_partial_answer_cancelled(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"chats.on_disconnect": "abort"})
    from chatproxy.appkeys import STORE

    store = proxy.app[STORE]
    words = [f"word{i} " for i in range(50)]
    upstream.enqueue(Reply(chunks=words, chunk_delay=0.05))
    body = {"model": "m", "messages": [USER], "stream": True}
    resp = await http.post(f"{proxy.url}/chat/completions", json=body)
    message_id = resp.headers["X-Message-Id"]
    await resp.content.readuntil(b"word3")
    resp.close()

    await asyncio.wait_for(upstream.chat_requests[0].disconnected.wait(), 5)

    answer = await settled(store, message_id)
    assert answer.status == "cancelled"
    assert answer.client_disconnected is True
    assert answer.text.startswith("word0 word1 word2 word3")
    assert len(answer.text) < len("".join(words))


async def test_long_answer_is_checkpointed_while_it_streams(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession, store: Store
) -> None:
    words = [f"w{i} " for i in range(40)]
    upstream.enqueue(Reply(chunks=words, chunk_delay=0.03))
    body = {"model": "m", "messages": [USER], "stream": True}
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        message_id = resp.headers["X-Message-Id"]
        await resp.content.readuntil(b"w20 ")

        async def checkpointed() -> object:
            m = await message(store, message_id)
            return m if m.status == "in_progress" and m.text.startswith("w0 w1 w2") else None

        partial = await eventually(checkpointed, within=5)
        assert partial.data["content"] == partial.text
        await resp.read()
    assert (await message(store, message_id)).text == "".join(words)


@pytest.mark.parametrize(
    ("status", "error_body", "expected"),
    [
        (
            400,
            {
                "error": {
                    "message": "bad model",
                    "type": "invalid_request_error",
                    "param": "model",
                    "code": "model_not_found",
                }
            },
            {
                "message": "bad model",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            },
        ),
        (
            400,
            '{"object": "error", "message": "flat vLLM error", "type": "BadRequestError", '
            '"param": null, "code": 400}',
            {"message": "flat vLLM error", "type": "BadRequestError", "param": None, "code": "400"},
        ),
        (
            503,
            "Service Unavailable",
            {"message": "Service Unavailable", "type": "server_error", "param": None, "code": None},
        ),
        (
            500,
            '{"error": "llama.cpp says no"}',
            {"message": "llama.cpp says no", "type": "server_error", "param": None, "code": None},
        ),
    ],
)
async def test_upstream_error_before_first_byte_keeps_status_and_is_openai_shaped(
    proxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    store: Store,
    status: int,
    error_body: object,
    expected: dict,
) -> None:
    upstream.enqueue(Reply(status=status, error_body=error_body))
    body = {"model": "m", "messages": [USER], "stream": True}
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        assert resp.status == status
        assert resp.content_type == "application/json"
        assert await resp.json() == {"error": expected}
        message_id = resp.headers["X-Message-Id"]
    failed = await message(store, message_id)
    assert failed.status == "failed"
    assert failed.error == expected


async def test_upstream_error_reaches_the_sdk_as_its_typed_exception(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Reply(status=429, headers={"Retry-After": "7"}))
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="fake-model", messages=[USER])
    assert info.value.response.headers["retry-after"] == "7"


async def test_upstream_dropped_mid_stream_ends_with_error_event_and_stores_partial_failed(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession, store: Store
) -> None:
    upstream.enqueue(Reply(chunks=[f"part{i} " for i in range(10)], drop_after=4))
    body = {"model": "m", "messages": [USER], "stream": True}
    _, events, message_id = await post_stream(http, proxy.url, body)
    assert events[-1] == b"data: [DONE]"
    error = orjson.loads(events[-2][6:])["error"]
    assert error["code"] == "upstream_disconnected"
    assert set(error) == {"message", "type", "param", "code"}
    answer = await message(store, message_id)
    assert answer.status == "failed"
    assert answer.error == error
    assert answer.text.startswith("part0 part1")


async def test_sdk_raises_on_the_in_band_error_event(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Reply(chunks=[f"part{i} " for i in range(10)], drop_after=4))
    with pytest.raises(openai.APIError, match="mid-stream"):
        await stream_text(client, [USER])


async def test_invalid_upstream_data_mid_stream_is_a_failed_answer(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession, store: Store
) -> None:
    upstream.enqueue(Reply(chunks=["a ", "b ", "c "], garbage_after=2))
    body = {"model": "m", "messages": [USER], "stream": True}
    raw, _, message_id = await post_stream(http, proxy.url, body)
    assert b"{not json" not in raw
    assert raw.endswith(b"data: [DONE]\n\n")
    assert b'"code":"upstream_invalid"' in raw
    assert (await message(store, message_id)).status == "failed"


async def test_upstream_unreachable_is_a_502_and_a_failed_message(
    start_proxy, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"upstream.url": "http://127.0.0.1:9/v1"})
    from chatproxy.appkeys import STORE

    body = {"model": "m", "messages": [USER]}
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_unreachable"
        message_id = resp.headers["X-Message-Id"]
    assert (await message(proxy.app[STORE], message_id)).status == "failed"


async def test_upstream_key_is_sent_upstream_and_never_the_clients(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    await client.chat.completions.create(model="fake-model", messages=[USER])
    assert upstream.chat_requests[0].headers["Authorization"] == "Bearer sk-upstream-secret"


@pytest.mark.parametrize(
    ("overrides", "reply", "status", "code"),
    [
        (
            {"upstream.idle_timeout": 0.2},
            Reply(chunks=["a ", "b ", "c "], chunk_delay=0.6),
            "failed",
            "upstream_timeout",
        ),
        (
            {"upstream.max_duration": 0.4},
            Reply(chunks=[f"w{i} " for i in range(30)], chunk_delay=0.05),
            "incomplete",
            "max_duration_exceeded",
        ),
    ],
)
async def test_idle_timeout_and_max_duration_end_the_stream_and_store_what_arrived(
    start_proxy,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    overrides: dict,
    reply: Reply,
    status: str,
    code: str,
) -> None:
    from chatproxy.appkeys import STORE

    proxy = await start_proxy(**overrides)
    upstream.enqueue(reply)
    body = {"model": "m", "messages": [USER], "stream": True}
    _, events, message_id = await post_stream(http, proxy.url, body)
    assert events[-1] == b"data: [DONE]"
    assert orjson.loads(events[-2][6:])["error"]["code"] == code
    answer = await message(proxy.app[STORE], message_id)
    assert answer.status == status
    assert answer.error is not None and answer.error["code"] == code
    # What arrived before the limit is kept (for the idle case: the role chunk, no text).
    assert answer.text == "".join(reply.chunks or [])[: len(answer.text)]
    assert bool(answer.text) is (status == "incomplete")


async def test_a_finished_generation_is_freed_without_the_cycle_collector(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    # serve() raises the collector's thresholds, so garbage in reference cycles lingers and
    # adds up under load: an answer's objects must be freed by reference counting alone.
    proxy = await start_proxy(**{"chats.resume_grace": 0})
    gc.collect()
    gc.disable()
    try:
        for stream in (True, False):
            body = {"model": "m", "messages": [USER], "stream": stream}
            async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
                assert resp.status == 200
                await resp.read()

        def alive() -> bool:
            return not any(isinstance(o, Generation) for o in gc.get_objects())

        await eventually(lambda: asyncio.sleep(0, alive()))
    finally:
        gc.enable()
