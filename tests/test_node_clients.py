"""Real Node.js clients against a proxy on a real port, driven as their users drive them, and
what is stored: the npm `openai` SDK (stream and not), and the `ai` package's ``streamText``
with ``createOpenAI({baseURL}).chat(...)`` and a tool it runs. One chat per conversation, every
message stored once, tool calls and results in place, nothing of another conversation.

The scripts are in tests/node, run with Node.js 22 (tests/node/runner.py); `make test` installs
them (`npm ci --prefix tests/node`). In CI a missing Node.js 22 or package fails these tests;
elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import orjson
import pytest

from chatproxy.server import ProxyServer
from chatproxy.store.models import Message
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply, ToolCall
from tests.node.runner import run_script
from tests.util import all_chats, all_messages


def one_branch(rows: list[Message]) -> bool:
    """Whether ``rows`` (oldest first) are one chain, each the child of the one before."""
    return [m.parent_id for m in rows] == [None, *(m.id for m in rows[:-1])]


def by_chat(rows: list[Message]) -> dict[str, list[Message]]:
    chats: dict[str, list[Message]] = {}
    for m in rows:
        chats.setdefault(m.chat_id, []).append(m)
    return chats


@pytest.mark.parametrize("mode", ["plain", "stream"])
async def test_the_openai_node_sdk_threads_each_conversation_into_its_own_chat(
    proxy: ProxyServer, upstream: FakeUpstream, store: Store, mode: str
) -> None:
    """Two conversations with the same system prompt are two chats; the second turn of each
    goes on in its own chat, storing only what is new."""
    upstream.enqueue(
        Reply(content="Apples are fruit."),
        Reply(content="Boats float."),
        Reply(content="Red and green."),
        Reply(content="White, mostly."),
    )
    result = await run_script("openai-sdk.mjs", proxy.url, mode)
    assert [t["text"] for t in result["a"]] == ["Apples are fruit.", "Red and green."]
    assert [t["text"] for t in result["b"]] == ["Boats float.", "White, mostly."]
    chat_a, chat_b = result["a"][0]["chatId"], result["b"][0]["chatId"]
    assert chat_a != chat_b
    assert [t["chatId"] for t in result["a"]] == [chat_a, chat_a]
    assert [t["chatId"] for t in result["b"]] == [chat_b, chat_b]
    assert {c.id for c in await all_chats(store)} == {chat_a, chat_b}
    chats = by_chat(await all_messages(store))
    for chat_id, texts in (
        (chat_a, ["Tell me about apples.", "Apples are fruit.", "And their colours?"]),
        (chat_b, ["Tell me about boats.", "Boats float.", "And their sails?"]),
    ):
        rows = chats[chat_id]
        assert [m.role for m in rows] == ["system", "user", "assistant", "user", "assistant"]
        assert [m.text for m in rows[1:4]] == texts
        assert one_branch(rows)
    assert "apples" not in orjson.dumps([m.data for m in chats[chat_b]]).decode()


@pytest.mark.parametrize(
    "arguments", ['{"city":"Paris"}', '{"city": "Paris"}'], ids=["compact", "spaced"]
)
async def test_ai_stream_text_with_a_tool_stores_the_call_the_result_and_the_answer_once(
    proxy: ProxyServer, upstream: FakeUpstream, store: Store, arguments: str
) -> None:
    """streamText runs the tool and sends its result back with the history, then a second turn
    resends it all: one chat, one branch, every message once, whatever the spelling of the
    arguments the model sent (the SDK sends them back as compact JSON)."""
    upstream.enqueue(
        Reply(tool_calls=[ToolCall("getWeather", arguments, id="call_w1")]),
        Reply(content="It is sunny in Paris."),
        Reply(content="Nothing else, enjoy."),
    )
    result = await run_script("ai-stream-text.mjs", proxy.url)
    first, second = result["first"], result["second"]
    assert first["text"] == "It is sunny in Paris."
    assert first["toolCalls"] == [{"name": "getWeather", "input": {"city": "Paris"}}]
    assert first["toolResults"] == [{"city": "Paris", "weather": "sunny"}]
    assert second["text"] == "Nothing else, enjoy."
    (chat,) = await all_chats(store)
    assert first["chatIds"] == [chat.id, chat.id]
    assert second["chatIds"] == [chat.id]
    rows = await all_messages(store)
    assert [m.role for m in rows] == [
        *["system", "user", "assistant", "tool", "assistant"],
        *["user", "assistant"],
    ]
    assert one_branch(rows)
    call = rows[2].data["tool_calls"][0]
    assert (call["id"], call["function"]["name"]) == ("call_w1", "getWeather")
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert rows[3].data["tool_call_id"] == "call_w1"
    assert orjson.loads(rows[3].data["content"]) == {"city": "Paris", "weather": "sunny"}
    assert [rows[4].text, rows[6].text] == ["It is sunny in Paris.", "Nothing else, enjoy."]
    sent = [[m["role"] for m in r.json["messages"]] for r in upstream.chat_requests]
    assert sent == [
        ["system", "user"],
        ["system", "user", "assistant", "tool"],
        ["system", "user", "assistant", "tool", "assistant", "user"],
    ]
    assert upstream.chat_requests[0].json["tools"][0]["function"]["name"] == "getWeather"
