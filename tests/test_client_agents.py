"""openai-agents (OpenAIChatCompletionsModel) through the proxy: every agent run is threaded
into its own chat with every message stored once (tests/clients/agents_client.py).

Each scenario runs with ``stream: false`` and then ``stream: true``, in one store, so the
expected chats come in pairs, the mode named in each user message.
"""

from __future__ import annotations

from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import DEFAULT_CONTENT, FakeUpstream
from tests.clients.harness import db_url, run_client, transcripts, upstream

__all__ = ["db_url", "upstream"]  # the matrix's fixtures, used here by name

MODES = ("no-stream", "stream")
SYSTEM = "system: You are a weather assistant. Answer briefly."  # the agents' instructions
CALL = 'assistant: call get_weather {"city":"Paris"}'


async def test_two_runs_of_one_agent_are_two_chats(
    proxy: ProxyServer, upstream: FakeUpstream, store: Store
) -> None:
    result = await run_client("agents_client.py", proxy.url, "two_runs")
    forecast = {"city": "Paris", "sunny": True}  # the JSON the upstream gave the output type
    assert result == {mode: [forecast, forecast] for mode in MODES}
    assert await transcripts(store) == [
        [SYSTEM, f"user: Forecast for {city} ({mode})", 'assistant: {"city":"Paris","sunny":true}']
        for mode in MODES
        for city in ("Paris", "Rome")
    ]
    assert all(r.json["response_format"]["type"] == "json_schema" for r in upstream.chat_requests)


async def test_a_second_turn_from_to_input_list_is_one_chat(
    proxy: ProxyServer, store: Store
) -> None:
    result = await run_client("agents_client.py", proxy.url, "two_turns")
    assert result == {mode: [DEFAULT_CONTENT, DEFAULT_CONTENT] for mode in MODES}
    assert await transcripts(store) == [
        [
            SYSTEM,
            f"user: Turn one ({mode})",
            f"assistant: {DEFAULT_CONTENT}",
            f"user: Turn two ({mode})",
            f"assistant: {DEFAULT_CONTENT}",
        ]
        for mode in MODES
    ]


async def test_a_function_tool_round_trip_is_stored_once(
    proxy: ProxyServer, upstream: FakeUpstream, store: Store
) -> None:
    result = await run_client("agents_client.py", proxy.url, "tool")
    answer = "The tool said: Sunny in Paris"
    assert result == {mode: [answer, answer] for mode in MODES}
    assert await transcripts(store) == [
        [
            SYSTEM,
            f"user: Weather in Paris? ({mode})",
            CALL,
            "tool: Sunny in Paris",
            f"assistant: {answer}",
            f"user: And tomorrow? ({mode})",
            CALL,
            "tool: Sunny in Paris",
            f"assistant: {answer}",
        ]
        for mode in MODES
    ]
    # Four model calls per mode: call, answer, call, answer; the two streamed when asked.
    assert [bool(r.json.get("stream")) for r in upstream.chat_requests] == [False] * 4 + [True] * 4
