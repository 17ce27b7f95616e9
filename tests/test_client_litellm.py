"""LiteLLM as a client of the proxy (``litellm.completion(model="openai/...", api_base=...)``):
a two-turn conversation is one chat, two conversations that share only a system prompt are two
(tests/clients/litellm_client.py).

LiteLLM takes seconds to import, so one run has all the conversations: with ``stream=False``
and then ``stream=True``, in one store, the mode named in each user message.
"""

from __future__ import annotations

from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import DEFAULT_CONTENT, FakeUpstream
from tests.clients.harness import db_url, run_client, transcripts, upstream

__all__ = ["db_url", "upstream"]  # the matrix's fixtures, used here by name

MODES = ("no-stream", "stream")
ANSWER = f"assistant: {DEFAULT_CONTENT}"


async def test_two_turns_are_one_chat_and_a_shared_system_prompt_is_not_a_shared_chat(
    proxy: ProxyServer, upstream: FakeUpstream, store: Store
) -> None:
    result = await run_client("litellm_client.py", proxy.url, "conversations")
    assert result == {mode: [DEFAULT_CONTENT] * 4 for mode in MODES}
    expected = []
    for mode in MODES:
        expected.append([f"user: Turn one ({mode})", ANSWER, f"user: Turn two ({mode})", ANSWER])
        expected += [
            ["system: You are a terse assistant.", f"user: {task} ({mode})", ANSWER]
            for task in ("Task one", "Task two")
        ]
    assert await transcripts(store) == expected
    assert [bool(r.json.get("stream")) for r in upstream.chat_requests] == [False] * 4 + [True] * 4
