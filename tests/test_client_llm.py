"""The ``llm`` CLI through the proxy (an ``extra-openai-models.yaml`` pointing ``api_base`` at
it): a conversation continued with ``-c`` is one chat, two runs with the same ``-s`` system
prompt are two, and a ``--functions`` tool round trip, resent by ``-c`` from llm's own log
(its arguments re-serialised), is stored once (tests/clients/llm_client.py).

Each scenario runs with ``--no-stream`` and then streaming, in one store, the mode named in
each prompt.
"""

from __future__ import annotations

import json

from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import DEFAULT_CONTENT, FakeUpstream
from tests.clients.harness import db_url, run_client, transcripts, upstream

__all__ = ["db_url", "upstream"]  # the matrix's fixtures, used here by name

MODES = ("no-stream", "stream")
ANSWER = f"assistant: {DEFAULT_CONTENT}"
SYSTEM = "system: You are a terse assistant."
FORECAST = '{"city":"Paris","sunny":true}'


async def test_continue_system_prompts_and_schemas_thread_one_chat_per_conversation(
    proxy: ProxyServer, upstream: FakeUpstream, store: Store
) -> None:
    result = await run_client("llm_client.py", proxy.url, "chat")
    assert result == {mode: [DEFAULT_CONTENT] * 4 + [FORECAST] for mode in MODES}
    expected = []
    for mode in MODES:
        expected += [
            [f"user: Hello there ({mode})", ANSWER, f"user: Tell me more ({mode})", ANSWER],
            [SYSTEM, f"user: Task one ({mode})", ANSWER],
            [SYSTEM, f"user: Task two ({mode})", ANSWER],
            [f"user: Forecast ({mode})", f"assistant: {FORECAST}"],
        ]
    assert await transcripts(store) == expected
    assert [bool(r.json.get("stream")) for r in upstream.chat_requests] == [False] * 5 + [True] * 5


async def test_a_functions_round_trip_continued_with_c_is_stored_once(
    proxy: ProxyServer, upstream: FakeUpstream, store: Store
) -> None:
    result = await run_client("llm_client.py", proxy.url, "functions")
    answer = "The tool said: Sunny in Paris"
    assert result == {mode: [answer, answer] for mode in MODES}
    call = 'assistant: call get_weather {"city":"Paris"}'
    assert await transcripts(store) == [
        [
            f"user: Weather in Paris? ({mode})",
            call,
            "tool: Sunny in Paris",
            f"assistant: {answer}",
            f"user: And tomorrow? ({mode})",
            call,
            "tool: Sunny in Paris",
            f"assistant: {answer}",
        ]
        for mode in MODES
    ]
    # The upstream sent the arguments compact; llm resent them as json.dumps spells them.
    sent = {
        m["tool_calls"][0]["function"]["arguments"]
        for r in upstream.chat_requests
        for m in r.json["messages"]
        if m.get("tool_calls")
    }
    assert sent == {json.dumps({"city": "Paris"})}
