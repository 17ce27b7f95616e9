"""langchain-openai's ChatOpenAI through the proxy: each conversation is one chat with every
message stored once, whichever way the upstream spelled the tool-call arguments that LangChain
re-serialises (tests/clients/langchain_client.py).

Each scenario runs with ``invoke`` (``stream: false``) and then ``stream`` (``stream: true``),
in one store, the mode named in each user message.
"""

from __future__ import annotations

import json

import pytest

from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import DEFAULT_CONTENT, FakeUpstream
from tests.clients.harness import db_url, run_client, transcripts, upstream

__all__ = ["db_url", "upstream"]  # the matrix's fixtures, used here by name

MODES = ("no-stream", "stream")
ANSWER = f"assistant: {DEFAULT_CONTENT}"


async def test_invoke_stream_and_a_multi_turn_list_with_a_system_message(
    proxy: ProxyServer, upstream: FakeUpstream, store: Store
) -> None:
    result = await run_client("langchain_client.py", proxy.url, "chat")
    assert result == {mode: [DEFAULT_CONTENT] * 3 for mode in MODES}
    expected = []
    for mode in MODES:
        expected.append([f"user: Hello there ({mode})", ANSWER])
        # Two conversations share the SystemMessage: a shared setup is not a shared chat.
        expected.append(
            [
                "system: You are a terse assistant.",
                f"user: Turn one ({mode})",
                ANSWER,
                f"user: Turn two ({mode})",
                ANSWER,
            ]
        )
    assert await transcripts(store) == expected
    assert [bool(r.json.get("stream")) for r in upstream.chat_requests] == [False] * 3 + [True] * 3


@pytest.mark.parametrize("upstream", ["compact", "spaced"], indirect=True)
async def test_a_bound_tool_round_trip_is_stored_once_whatever_the_argument_spelling(
    proxy: ProxyServer, upstream: FakeUpstream, store: Store
) -> None:
    result = await run_client("langchain_client.py", proxy.url, "tools")
    turn = {"args": [{"city": "Paris"}], "text": "The tool said: Sunny in Paris"}
    assert result == {mode: [turn, turn] for mode in MODES}
    call = 'assistant: call get_weather {"city":"Paris"}'
    assert await transcripts(store) == [
        [
            f"user: Weather in Paris? ({mode})",
            call,
            "tool: Sunny in Paris",
            "assistant: The tool said: Sunny in Paris",
            f"user: And tomorrow? ({mode})",
            call,
            "tool: Sunny in Paris",
            "assistant: The tool said: Sunny in Paris",
        ]
        for mode in MODES
    ]
    # LangChain sent the call back as json.dumps spells it, whatever the upstream sent.
    resent = [
        m["tool_calls"][0]["function"]["arguments"]
        for r in upstream.chat_requests
        for m in r.json["messages"]
        if m.get("tool_calls")
    ]
    assert resent and set(resent) == {json.dumps({"city": "Paris"})}
