"""openai-agents with its default model (``OpenAIResponsesModel``: ``POST /v1/responses``)
through the proxy (tests/clients/agents_responses_client.py): every conversation is one chat,
every message stored once, whether the second turn continues on the server
(``previous_response_id=result.last_response_id``) or resends ``result.to_input_list()``, and
each run's ``last_response_id`` is the stored answer that ends it.

Each scenario runs with ``stream: false`` and then ``stream: true``, in one store, so the chats
come in pairs, the mode named in each user message; and in each way the proxy can reach the
upstream: ``native`` in front of an upstream that keeps state, ``native`` in front of one that
keeps none (vLLM, Ollama, llama.cpp), ``translate`` (chat completions only).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest

from chatproxy.server import ProxyServer
from chatproxy.store.models import Message
from chatproxy.store.store import Store
from chatproxy.testing import DEFAULT_CONTENT, FakeUpstream, RecordedRequest
from tests.clients.harness import db_url, run_client, transcripts, upstream
from tests.util import all_chats, all_messages

__all__ = ["db_url", "upstream"]  # the matrix's fixtures, used here by name

StartProxy = Callable[..., Awaitable[ProxyServer]]

# (the proxy's [upstream] responses, the fake upstream's Responses API)
WAYS = {
    "native": ("native", "stateful"),
    "native-stateless": ("native", "stateless"),
    "translate": ("translate", "none"),
}
MODES = ("no-stream", "stream")
INSTRUCTIONS = "You are a weather assistant. Answer briefly."
CALL = 'assistant: call get_weather {"city":"Paris"}'
ANSWER = "The tool said: Sunny in Paris"


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


def text_transcript(mode: str) -> list[str]:
    return [
        f"user: Turn one ({mode})",
        f"assistant: {DEFAULT_CONTENT}",
        f"user: Turn two ({mode})",
        f"assistant: {DEFAULT_CONTENT}",
    ]


def tool_transcript(mode: str) -> list[str]:
    turn = [CALL, "tool: Sunny in Paris", f"assistant: {ANSWER}"]
    return [f"user: Weather in Paris? ({mode})", *turn, f"user: And tomorrow? ({mode})", *turn]


async def stored_chats(store: Store) -> list[list[Message]]:
    """Every chat's messages, in the order :func:`transcripts` shows them."""
    chats = sorted(await all_chats(store), key=lambda c: (c.created_at, c.id))
    messages = await all_messages(store)
    return [[m for m in messages if m.chat_id == chat.id] for chat in chats]


def model_calls(upstream: FakeUpstream, way: str) -> list[RecordedRequest]:
    return upstream.chat_requests if way == "translate" else upstream.responses_requests


async def check_runs(
    result: dict[str, Any],
    store: Store,
    sdk: openai.AsyncOpenAI,
    upstream: FakeUpstream,
    way: str,
    answers_at: tuple[int, int],
) -> None:
    """What every scenario must show beyond its transcripts: the SDK's default model spoke the
    Responses API; each run's ``last_response_id`` is its chat's answer at ``answers_at`` and
    can be retrieved with its text and chat; the model saw each whole conversation, with the
    instructions, and never a ``previous_response_id`` it could not know; every answer is the
    Responses API's."""
    chats = await stored_chats(store)
    calls = model_calls(upstream, way)
    per_mode = len(calls) // len(MODES)
    for index, (mode, chat) in enumerate(zip(MODES, chats, strict=True)):
        got = result[mode]
        assert got["model"] == "OpenAIResponsesModel"
        assert [s["path"] for s in got["sent"]] == ["/v1/responses"] * per_mode
        assert {s["stream"] for s in got["sent"]} == {mode == "stream"}
        runs = got["runs"]
        assert [r["last_response_id"] for r in runs] == [chat[i].id for i in answers_at]
        for run in runs:
            response = await sdk.responses.retrieve(run["last_response_id"])
            assert response.output_text == run["output"]
            assert response.conversation is not None
            assert response.conversation.id == chat[0].chat_id
        mine = calls[index * per_mode : (index + 1) * per_mode]
        assert [bool(c.json.get("stream")) for c in mine] == [mode == "stream"] * per_mode
        for call in mine:
            if way == "translate":
                assert call.json["messages"][0] == {"role": "system", "content": INSTRUCTIONS}
            else:
                assert call.json["instructions"] == INSTRUCTIONS
                assert "previous_response_id" not in call.json
        seen = json.dumps(mine[-1].json)
        assert all(m.text in seen for m in chat[:-1] if m.text)
        answers = [m for m in chat if m.role == "assistant"]
        assert all(m.params and m.params["api"] == "responses" for m in answers)


async def test_a_second_turn_with_previous_response_id_is_one_chat(
    proxy: ProxyServer,
    upstream: FakeUpstream,
    store: Store,
    sdk: openai.AsyncOpenAI,
    way: str,
) -> None:
    result = await run_client("agents_responses_client.py", proxy.url, "previous")
    for mode in MODES:
        first, second = result[mode]["sent"]
        assert first["previous_response_id"] is None
        assert second["previous_response_id"] == result[mode]["runs"][0]["last_response_id"]
        assert second["inputs"] == 1  # only the new user message: the rest is on the server
        assert [r["output"] for r in result[mode]["runs"]] == [DEFAULT_CONTENT] * 2
    assert await transcripts(store) == [text_transcript(mode) for mode in MODES]
    await check_runs(result, store, sdk, upstream, way, (1, 3))


async def test_a_second_turn_from_to_input_list_is_one_chat(
    proxy: ProxyServer,
    upstream: FakeUpstream,
    store: Store,
    sdk: openai.AsyncOpenAI,
    way: str,
) -> None:
    result = await run_client("agents_responses_client.py", proxy.url, "input_list")
    for mode in MODES:
        assert [s["previous_response_id"] for s in result[mode]["sent"]] == [None, None]
        assert [r["output"] for r in result[mode]["runs"]] == [DEFAULT_CONTENT] * 2
    assert await transcripts(store) == [text_transcript(mode) for mode in MODES]
    await check_runs(result, store, sdk, upstream, way, (1, 3))


async def test_a_function_tool_round_trip_then_previous_response_id_is_stored_once(
    proxy: ProxyServer,
    upstream: FakeUpstream,
    store: Store,
    sdk: openai.AsyncOpenAI,
    way: str,
) -> None:
    """The second run goes on from the first one's last response, and the SDK chains each of
    its calls on the one before: the tool's output is sent alone, after its call."""
    result = await run_client("agents_responses_client.py", proxy.url, "tool")
    chats = await stored_chats(store)
    for mode, chat in zip(MODES, chats, strict=True):
        sent, runs = result[mode]["sent"], result[mode]["runs"]
        assert [r["output"] for r in runs] == [ANSWER, ANSWER]
        # The second run's call of the tool is its stored call (position 5).
        assert [s["previous_response_id"] for s in sent] == [None, None, chat[3].id, chat[5].id]
        assert [s["inputs"] for s in sent] == [1, 3, 1, 1]
    assert await transcripts(store) == [tool_transcript(mode) for mode in MODES]
    await check_runs(result, store, sdk, upstream, way, (3, 7))


async def test_a_function_tool_round_trip_then_to_input_list_is_stored_once(
    proxy: ProxyServer,
    upstream: FakeUpstream,
    store: Store,
    sdk: openai.AsyncOpenAI,
    way: str,
) -> None:
    result = await run_client("agents_responses_client.py", proxy.url, "tool_input_list")
    for mode in MODES:
        sent = result[mode]["sent"]
        assert [r["output"] for r in result[mode]["runs"]] == [ANSWER, ANSWER]
        assert [s["previous_response_id"] for s in sent] == [None] * 4
        assert [s["inputs"] for s in sent] == [1, 3, 5, 7]  # each call resends all before it
    assert await transcripts(store) == [tool_transcript(mode) for mode in MODES]
    await check_runs(result, store, sdk, upstream, way, (3, 7))
