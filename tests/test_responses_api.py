"""``/v1/responses`` end to end with the official openai SDK, in each way the proxy can reach
the upstream: ``native`` (the upstream has the API and keeps state), ``native`` in front of an
upstream that keeps none (vLLM, Ollama, llama.cpp), and ``translate`` (chat completions only);
asserting what was stored, not only what came back."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest

from chatproxy.server import ProxyServer
from chatproxy.testing import FakeUpstream, Reply, ToolCall

StartProxy = Callable[..., Awaitable[ProxyServer]]

# (the proxy's [upstream] responses, the fake upstream's Responses API)
MODES = {
    "native": ("native", "stateful"),
    "native-stateless": ("native", "stateless"),
    "translate": ("translate", "none"),
}
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def rproxy(mode: str, upstream: FakeUpstream, start_proxy: StartProxy) -> ProxyServer:
    setting, fake = MODES[mode]
    upstream.responses = fake
    return await start_proxy(**{"upstream.responses": setting})


@pytest.fixture
async def rclient(rproxy: ProxyServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=rproxy.url, api_key="sk-client", max_retries=0) as c:
        yield c


async def stored_messages(
    http: aiohttp.ClientSession, proxy: ProxyServer, chat_id: str
) -> list[dict[str, Any]]:
    url = f"{proxy.url}/conversations/{chat_id}/messages?all=true"
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["data"]


def upstream_calls(upstream: FakeUpstream, mode: str) -> list[Any]:
    return upstream.chat_requests if mode == "translate" else upstream.responses_requests


async def test_create_stores_the_turn_and_the_response_id_is_the_stored_answer(
    rclient: openai.AsyncOpenAI,
    rproxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    mode: str,
) -> None:
    upstream.enqueue(Reply(content="Paris is the capital."))
    raw = await rclient.responses.with_raw_response.create(
        model="fake-model", input="What is the capital of France?", instructions="Be brief."
    )
    response = raw.parse()
    assert response.output_text == "Paris is the capital."
    assert response.status == "completed"
    assert response.id == raw.headers["X-Message-Id"]
    assert response.instructions == "Be brief."
    assert response.usage is not None and response.usage.output_tokens > 0
    chat_id = raw.headers["X-Chat-Id"]
    assert response.conversation is not None and response.conversation.id == chat_id
    messages = await stored_messages(http, rproxy, chat_id)
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "What is the capital of France?"),
        ("assistant", "Paris is the capital."),
    ]
    assert messages[1]["id"] == response.id and messages[1]["status"] == "completed"
    assert len(upstream_calls(upstream, mode)) == 1
    if mode == "translate":
        sent = upstream.chat_requests[0].json["messages"]
        assert sent[0] == {"role": "system", "content": "Be brief."}
    again = await rclient.responses.retrieve(response.id)
    assert again.id == response.id and again.output_text == "Paris is the capital."
    assert again.usage == response.usage


async def test_stream_helper_gets_the_final_response_and_it_is_stored(
    rclient: openai.AsyncOpenAI,
    rproxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    upstream.enqueue(Reply(content="one two three four", split_writes=True))
    types: list[str] = []
    async with rclient.responses.stream(model="fake-model", input="count") as stream:
        async for event in stream:
            types.append(event.type)
        final = await stream.get_final_response()
    assert final.output_text == "one two three four"
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.output_text.delta" in types
    got = await rclient.responses.retrieve(final.id)
    assert got.output_text == final.output_text and got.status == "completed"
    assert got.conversation is not None
    messages = await stored_messages(http, rproxy, got.conversation.id)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["content"] == "one two three four"


async def test_previous_response_id_continues_the_branch_over_several_turns(
    rclient: openai.AsyncOpenAI,
    rproxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    mode: str,
) -> None:
    upstream.enqueue(Reply(content="Hi Ada."), Reply(content="Ada."), Reply(content="Yes."))
    first = await rclient.responses.create(model="fake-model", input="I am Ada.")
    second = await rclient.responses.create(
        model="fake-model", input="What is my name?", previous_response_id=first.id
    )
    third = await rclient.responses.create(
        model="fake-model",
        input=[{"role": "user", "content": "Sure?"}],
        previous_response_id=second.id,
        stream=False,
    )
    assert third.previous_response_id == second.id
    assert first.conversation and second.conversation and third.conversation
    chat_id = first.conversation.id
    assert second.conversation.id == chat_id == third.conversation.id
    messages = await stored_messages(http, rproxy, chat_id)
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "I am Ada."),
        ("assistant", "Hi Ada."),
        ("user", "What is my name?"),
        ("assistant", "Ada."),
        ("user", "Sure?"),
        ("assistant", "Yes."),
    ]
    parents = {m["id"]: m["parent_id"] for m in messages}
    assert parents[third.id] == messages[4]["id"] and parents[messages[4]["id"]] == second.id
    # The model saw the whole conversation, whatever the upstream keeps.
    last = upstream_calls(upstream, mode)[-1].json
    seen = json.dumps(last)
    for text in ("I am Ada.", "Hi Ada.", "What is my name?", "Ada.", "Sure?"):
        assert text in seen
    if mode != "translate":
        assert "previous_response_id" not in last
    items = await rclient.responses.input_items.list(third.id, order="asc")
    texts = [
        part.text
        for item in items.data
        if item.type == "message"
        for part in item.content
        if hasattr(part, "text")
    ]
    assert texts == ["I am Ada.", "Hi Ada.", "What is my name?", "Ada.", "Sure?"]


async def test_a_function_tool_round_trip_is_stored_as_one_conversation(
    rclient: openai.AsyncOpenAI,
    rproxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    upstream.enqueue(
        Reply(tool_calls=[ToolCall("get_weather", '{"city": "Oslo"}', id="call_1")]),
        Reply(content="It is 3 degrees in Oslo."),
    )
    first = await rclient.responses.create(
        model="fake-model", input="Weather in Oslo?", tools=[TOOL]
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments), c.call_id) for c in calls] == [
        ("get_weather", {"city": "Oslo"}, "call_1")
    ]
    second = await rclient.responses.create(
        model="fake-model",
        previous_response_id=first.id,
        tools=[TOOL],
        input=[{"type": "function_call_output", "call_id": "call_1", "output": "3 degrees"}],
    )
    assert second.output_text == "It is 3 degrees in Oslo."
    assert second.conversation is not None
    messages = await stored_messages(http, rproxy, second.conversation.id)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Oslo"}',
    }
    assert messages[2]["tool_call_id"] == "call_1" and messages[2]["content"] == "3 degrees"


async def test_retrieve_input_items_and_delete_are_the_owners(
    rclient: openai.AsyncOpenAI, rproxy: ProxyServer, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Reply(content="a"), Reply(content="b"))
    first = await rclient.responses.create(model="fake-model", input="q1")
    second = await rclient.responses.create(
        model="fake-model", input="q2", previous_response_id=first.id
    )
    page = await rclient.responses.input_items.list(second.id, limit=2)
    assert [i.type for i in page.data] == ["message", "message"]
    assert page.has_more is True
    newest = page.data[0]
    assert newest.type == "message" and newest.content[0].text == "q2"  # desc by default
    rest = await rclient.responses.input_items.list(second.id, limit=2, after=page.data[-1].id)
    assert [i.content[0].text for i in rest.data] == ["q1"] and rest.has_more is False
    deleted = await rclient.responses.delete(second.id)
    assert deleted is None  # the SDK returns nothing for a 200
    with pytest.raises(openai.NotFoundError) as info:
        await rclient.responses.retrieve(second.id)
    assert info.value.body["code"] == "response_not_found"
    assert (await rclient.responses.retrieve(first.id)).output_text == "a"


async def test_store_false_stores_nothing_and_asks_the_upstream_not_to(
    rclient: openai.AsyncOpenAI,
    rproxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    mode: str,
) -> None:
    upstream.enqueue(Reply(content="secret"))
    response = await rclient.responses.create(model="fake-model", input="hush", store=False)
    assert response.output_text == "secret"
    with pytest.raises(openai.NotFoundError):
        await rclient.responses.retrieve(response.id)
    async with http.get(f"{rproxy.url}/conversations") as resp:
        assert (await resp.json())["data"] == []
    if mode != "translate":
        assert upstream.responses_requests[0].json["store"] is False
    else:
        assert "store" not in upstream.chat_requests[0].json


async def test_reasoning_and_refusal_come_out_as_items_and_are_stored(
    rclient: openai.AsyncOpenAI,
    rproxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    upstream.enqueue(
        Reply(content="42.", reasoning="Six times seven."), Reply(refusal="I cannot help.")
    )
    thought = await rclient.responses.create(model="fake-reasoner", input="6*7?")
    kinds = [item.type for item in thought.output]
    assert kinds == ["reasoning", "message"]
    reasoning = thought.output[0]
    assert reasoning.type == "reasoning"
    assert "".join(s.text for s in reasoning.summary) == "Six times seven."
    assert thought.output_text == "42."
    refused = await rclient.responses.create(model="fake-model", input="something bad")
    message = refused.output[0]
    assert message.type == "message"
    assert [(p.type, getattr(p, "refusal", None)) for p in message.content] == [
        ("refusal", "I cannot help.")
    ]
    assert thought.conversation is not None and refused.conversation is not None
    stored = await stored_messages(http, rproxy, thought.conversation.id)
    assert stored[1]["reasoning_content"] == "Six times seven." and stored[1]["content"] == "42."
    stored = await stored_messages(http, rproxy, refused.conversation.id)
    assert stored[1]["refusal"] == "I cannot help."
    again = await rclient.responses.retrieve(thought.id)
    assert [item.type for item in again.output] == ["reasoning", "message"]


async def test_an_answer_cut_by_length_is_incomplete(
    rclient: openai.AsyncOpenAI, rproxy: ProxyServer, upstream: FakeUpstream
) -> None:
    upstream.enqueue(*[Reply(content="a b c", finish_reason="length") for _ in range(2)])
    cut = await rclient.responses.create(model="fake-model", input="long")
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    async with rclient.responses.stream(model="fake-model", input="long") as stream:
        events = [event.type async for event in stream]
    assert events[-1] == "response.incomplete"
    stored = await rclient.responses.retrieve(cut.id)
    assert stored.status == "incomplete" and stored.output_text == "a b c"


async def test_upstream_failures_are_openai_errors_and_stored_as_failed(
    rclient: openai.AsyncOpenAI,
    rproxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    upstream.enqueue(Reply(status=500))
    with pytest.raises(openai.InternalServerError) as info:
        await rclient.responses.create(model="fake-model", input="first")
    assert info.value.status_code == 500
    assert set(info.value.body) >= {"message", "type", "code"}
    upstream.enqueue(Reply(chunks=[f"w{i} " for i in range(10)], drop_after=4))
    events = []
    stream = await rclient.responses.create(model="fake-model", input="second", stream=True)
    async for event in stream:
        events.append(event)
    assert events[-1].type == "response.failed"
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None
    got = await rclient.responses.retrieve(failed.id)
    assert got.status == "failed" and got.error is not None
    async with http.get(f"{rproxy.url}/conversations") as resp:
        chats = (await resp.json())["data"]
    assert len(chats) == 2  # both turns are kept, with their failed answers


@pytest.mark.parametrize(("fake", "native"), [("none", False), ("stateless", True)])
async def test_auto_asks_the_upstream_once_and_says_which_it_uses(
    start_proxy: StartProxy,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    fake: str,
    native: bool,
) -> None:
    upstream.responses = fake
    proxy = await start_proxy()  # [upstream] responses = "auto", the default
    caplog.set_level(logging.INFO, logger="chatproxy.responses")
    async with openai.AsyncOpenAI(base_url=proxy.url, api_key="k", max_retries=0) as client:
        for i in range(3):
            upstream.enqueue(Reply(content=f"answer {i}"))
            got = await client.responses.create(model="fake-model", input=f"q{i}")
            assert got.output_text == f"answer {i}"
    probes = [r for r in upstream.requests if r.path == "/v1/responses" and r.json == {}]
    assert len(probes) == 1
    answered = [r for r in upstream.responses_requests if r.json != {}]
    assert (len(answered), len(upstream.chat_requests)) == ((3, 0) if native else (0, 3))
    how = "native" if native else "translate (chat completions)"
    assert [r.getMessage() for r in caplog.records if r.name == "chatproxy.responses"] == [
        f"upstream /v1/responses: {how}"
    ]
