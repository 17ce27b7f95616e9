"""The `ai` package's ``streamText`` with the OpenAI provider's default model,
``openai('fake-model')``, which speaks the Responses API, through the proxy with a tool the SDK
runs (tests/node/ai-responses.mjs): one chat per conversation, every message stored once, tool
calls and results in place, each step's response the stored answer; in each way the proxy can
reach the upstream (``native`` in front of an upstream that keeps state or one that keeps none,
``translate`` to chat completions).

The script runs with Node.js 22 (tests/node/runner.py; see tests/test_node_clients.py).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import orjson
import pytest

from chatproxy.server import ProxyServer
from chatproxy.store.models import Message
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, RecordedRequest, Reply, ToolCall
from tests.clients.harness import transcripts
from tests.node.runner import run_script
from tests.util import all_chats, all_messages

StartProxy = Callable[..., Awaitable[ProxyServer]]

# (the proxy's [upstream] responses, the fake upstream's Responses API)
WAYS = {
    "native": ("native", "stateful"),
    "native-stateless": ("native", "stateless"),
    "translate": ("translate", "none"),
}
SYSTEM = "system: You answer in one sentence."  # streamText's instructions, an input message
PARIS = Reply(tool_calls=[ToolCall("getWeather", '{"city":"Paris"}', id="call_w1")])
SUNNY = Reply(content="It is sunny in Paris.")
FIRST_TURN = [
    SYSTEM,
    "user: What is the weather in Paris?",
    'assistant: call getWeather {"city":"Paris"}',
    'tool: {"city":"Paris","weather":"sunny"}',
    "assistant: It is sunny in Paris.",
]


@pytest.fixture(params=list(WAYS))
def way(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def proxy(way: str, upstream: FakeUpstream, start_proxy: StartProxy) -> ProxyServer:
    setting, fake = WAYS[way]
    upstream.responses = fake
    return await start_proxy(**{"upstream.responses": setting})


@pytest.fixture
async def sdk(proxy: ProxyServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=proxy.url, api_key="sk-client", max_retries=0) as c:
        yield c


def model_calls(upstream: FakeUpstream, way: str) -> list[RecordedRequest]:
    return upstream.chat_requests if way == "translate" else upstream.responses_requests


async def one_chat(store: Store) -> tuple[str, list[Message]]:
    """The only stored chat's id and its messages."""
    (chat,) = await all_chats(store)
    return chat.id, await all_messages(store)


def check_sent(result: dict[str, Any], requests: int) -> None:
    """The SDK's default model is the Responses one, and every step was a ``/v1/responses``."""
    assert result["provider"] == "openai.responses"
    assert [s["path"] for s in result["sent"]] == ["/v1/responses"] * requests


def check_first_turn(turn: dict[str, Any], chat_id: str, rows: list[Message]) -> None:
    """The tool round trip of every scenario, as the SDK saw it and as it is stored."""
    assert turn["text"] == "It is sunny in Paris."
    assert turn["toolCalls"] == [{"name": "getWeather", "input": {"city": "Paris"}}]
    assert turn["toolResults"] == [{"city": "Paris", "weather": "sunny"}]
    assert turn["chatIds"] == [chat_id, chat_id]
    assert turn["responseIds"] == [rows[2].id, rows[4].id]
    call = rows[2].data["tool_calls"][0]
    assert (call["id"], call["function"]["name"]) == ("call_w1", "getWeather")
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert rows[3].data["tool_call_id"] == "call_w1"
    assert all(m.params and m.params["api"] == "responses" for m in (rows[2], rows[4]))


def check_model_saw(upstream: FakeUpstream, way: str, rows: list[Message]) -> None:
    """The model's last call saw the whole stored conversation, each message once, and nothing
    it cannot resolve (a ``previous_response_id``, an item reference)."""
    last = model_calls(upstream, way)[-1].json
    seen = json.dumps(last)
    said = Counter(m.text for m in rows[:-1] if m.text)
    assert {text: seen.count(json.dumps(text)[1:-1]) for text in said} == said
    assert "previous_response_id" not in last
    assert "item_reference" not in seen


async def test_a_tool_round_trip_is_one_chat_stored_once(
    proxy: ProxyServer, upstream: FakeUpstream, store: Store, way: str
) -> None:
    """streamText runs the tool and sends its result back with the whole turn: one chat, one
    branch, every message once, each step's response id its stored answer."""
    upstream.enqueue(PARIS, SUNNY)
    result = await run_script("ai-responses.mjs", proxy.url, "tool")
    check_sent(result, 2)
    assert [s["inputs"] for s in result["sent"]] == [
        ["message:system", "message:user"],
        ["message:system", "message:user", "function_call", "function_call_output"],
    ]
    chat_id, rows = await one_chat(store)
    (turn,) = result["turns"]
    check_first_turn(turn, chat_id, rows)
    assert await transcripts(store) == [FIRST_TURN]
    check_model_saw(upstream, way, rows)
    assert len(model_calls(upstream, way)) == 2


async def test_previous_response_id_continues_the_chat(
    proxy: ProxyServer, upstream: FakeUpstream, store: Store, way: str
) -> None:
    """A turn with only a new user message and ``previousResponseId`` (the first turn's last
    response) goes on in that chat, after that answer. The SDK sends its instructions again,
    as an input message: stored as sent, the model sees it there too."""
    upstream.enqueue(PARIS, SUNNY, Reply(content="Rome is sunny too."))
    result = await run_script("ai-responses.mjs", proxy.url, "previous")
    check_sent(result, 3)
    chat_id, rows = await one_chat(store)
    first, second = result["turns"]
    check_first_turn(first, chat_id, rows)
    assert result["sent"][2]["previousResponseId"] == rows[4].id
    assert result["sent"][2]["inputs"] == ["message:system", "message:user"]
    assert second["text"] == "Rome is sunny too."
    assert second["chatIds"] == [chat_id]
    assert second["responseIds"] == [rows[7].id]
    assert await transcripts(store) == [
        [*FIRST_TURN, SYSTEM, "user: And in Rome?", "assistant: Rome is sunny too."]
    ]
    check_model_saw(upstream, way, rows)


async def test_previous_response_id_with_a_tool_stores_each_message_once(
    proxy: ProxyServer, upstream: FakeUpstream, store: Store, way: str
) -> None:
    """With ``previousResponseId`` the SDK sends the same id with every step of the turn, and
    each step's input is the turn so far (the new user message, then the call and its result):
    what the first step stored is not stored again, the turn is one branch after that answer."""
    rome = Reply(tool_calls=[ToolCall("getWeather", '{"city":"Rome"}', id="call_w2")])
    upstream.enqueue(PARIS, SUNNY, rome, Reply(content="Sunny in Rome too."))
    result = await run_script("ai-responses.mjs", proxy.url, "previous")
    check_sent(result, 4)
    chat_id, rows = await one_chat(store)
    first, second = result["turns"]
    check_first_turn(first, chat_id, rows)
    assert [s["previousResponseId"] for s in result["sent"][2:]] == [rows[4].id, rows[4].id]
    assert result["sent"][3]["inputs"] == [
        *["message:system", "message:user", "function_call", "function_call_output"]
    ]
    assert second["text"] == "Sunny in Rome too."
    assert second["toolCalls"] == [{"name": "getWeather", "input": {"city": "Rome"}}]
    assert second["chatIds"] == [chat_id, chat_id]
    assert await transcripts(store) == [
        [
            *FIRST_TURN,
            SYSTEM,
            "user: And in Rome?",
            'assistant: call getWeather {"city":"Rome"}',
            'tool: {"city":"Rome","weather":"sunny"}',
            "assistant: Sunny in Rome too.",
        ]
    ]
    assert second["responseIds"] == [rows[7].id, rows[9].id]
    check_model_saw(upstream, way, rows)


async def test_a_resent_history_with_an_item_reference_is_one_chat(
    proxy: ProxyServer, upstream: FakeUpstream, store: Store, way: str
) -> None:
    """The second turn resends the whole history, the earlier answer as an ``item_reference``
    to its output item (the provider stores by default): the proxy resolves it to the stored
    answer, sends the model the whole conversation and stores only what is new."""
    upstream.enqueue(PARIS, SUNNY, Reply(content="Nothing else, enjoy."))
    result = await run_script("ai-responses.mjs", proxy.url, "history")
    check_sent(result, 3)
    chat_id, rows = await one_chat(store)
    first, second = result["turns"]
    check_first_turn(first, chat_id, rows)
    assert result["sent"][2]["inputs"] == [
        *["message:system", "message:user", "function_call", "function_call_output"],
        *["item_reference", "message:user"],
    ]
    assert result["sent"][2]["references"] == first["itemIds"][1]
    assert second["text"] == "Nothing else, enjoy."
    assert second["chatIds"] == [chat_id]
    assert await transcripts(store) == [
        [*FIRST_TURN, "user: Thanks! Anything else?", "assistant: Nothing else, enjoy."]
    ]
    check_model_saw(upstream, way, rows)


async def test_the_output_item_ids_are_the_stored_responses(
    proxy: ProxyServer, upstream: FakeUpstream, sdk: openai.AsyncOpenAI
) -> None:
    """The ids of the output items each step streamed are those its response has when
    retrieved (the ids an ``item_reference`` names)."""
    upstream.enqueue(PARIS, SUNNY)
    result = await run_script("ai-responses.mjs", proxy.url, "tool")
    (turn,) = result["turns"]
    for response_id, item_ids in zip(turn["responseIds"], turn["itemIds"], strict=True):
        stored = await sdk.responses.retrieve(response_id)
        assert item_ids == [item.id for item in stored.output]
