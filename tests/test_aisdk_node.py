"""The real `ai` npm package (the Vercel AI SDK's chat transport, stream reader and chat class)
against /api/chat: the scripts of tests/node, run with Node.js 22 (tests/node/runner.py), each
with AI SDK 7 (`ai`) and AI SDK 6 (`ai6`, an npm alias of `ai@6`).

`make test` installs the packages and Node.js 22 (`npm ci --prefix tests/node`). In CI a missing
Node.js 22 or package fails these tests; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from chatproxy.appkeys import STORE
from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply, ToolCall
from tests.aisdk import base, full, post_chat, ui_messages, user
from tests.conftest import StartProxy
from tests.node.runner import NODE_DIR, run_node, run_script
from tests.util import all_chats, all_messages, settled

EXAMPLE = Path(__file__).parent.parent / "examples" / "aisdk-chat" / "chat.mjs"
STORY = [f"part{i} " for i in range(40)]
AI_PACKAGES = pytest.mark.parametrize("ai_package", ["ai", "ai6"])


@AI_PACKAGES
async def test_the_ai_sdk_client_sends_reloads_resumes_and_regenerates_through_the_proxy(
    proxy: ProxyServer, upstream: FakeUpstream, store: Store, ai_package: str
) -> None:
    upstream.enqueue(
        Reply(content="Hello from chatproxy!"),
        Reply(content="A second answer."),
        Reply(chunks=STORY, chunk_delay=0.05),
        Reply(content="A regenerated story."),
        Reply(content="Only the last message was sent."),
    )
    result = await run_script("aisdk-e2e.mjs", base(proxy), env={"AI_PACKAGE": ai_package})
    assert result["first"] == "Hello from chatproxy!"
    assert result["second"] == "A second answer."
    assert 0 < len(result["partial"]) < len("".join(STORY))
    assert result["resumed"] == "".join(STORY)
    assert result["regenerated"] == "A regenerated story."
    assert result["single"] == "Only the last message was sent."
    # hello, answer, question, answer, story question, regenerated story, last question, answer
    assert result["messages"] == 8
    assert [c.id for c in await all_chats(store)] == [result["chatId"]]
    requests = [r.json["messages"] for r in upstream.chat_requests]
    assert requests[3] == requests[2]  # regenerate: the same question again
    assert requests[4][:-1] == [
        *requests[3],
        {"role": "assistant", "content": "A regenerated story."},
    ]
    assert requests[4][-1] == {"role": "user", "content": "Only this message is sent."}


def parts_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in message["parts"] if p["type"] != "step-start"]


@AI_PACKAGES
async def test_a_tool_run_by_the_client_continues_the_same_message_and_stores_each_row_once(
    proxy: ProxyServer, upstream: FakeUpstream, store: Store, ai_package: str
) -> None:
    """onToolCall + addToolOutput + sendAutomaticallyWhen: the answer after the tool output is
    the same UIMessage as the tool call, for the client and in the store, and the next turns
    (from the client's own messages, then from a reload) store nothing twice."""
    upstream.enqueue(
        Reply(tool_calls=[ToolCall("getWeather", '{"city":"Paris"}', id="call_paris")]),
        Reply(content="It is sunny in Paris."),
        Reply(content="Sunny again tomorrow."),
        Reply(content="Glad to help."),
        Reply(content="Let me answer without the tool."),
    )
    chat_id = f"tools-{ai_package}"
    result = await run_script(
        "aisdk-tools.mjs", base(proxy), chat_id, env={"AI_PACKAGE": ai_package}
    )
    tool_part = {
        "type": "tool-getWeather",
        "toolCallId": "call_paris",
        "state": "output-available",
        "input": {"city": "Paris"},
        "output": {"city": "Paris", "weather": "sunny"},
    }
    held = result["afterTool"]
    assert [m["role"] for m in held] == ["user", "assistant"]
    assert parts_of(held[1]) == [tool_part, {"type": "text", "text": "It is sunny in Paris."}]
    assert result["reloadedAfterTool"] == held  # one assistant message, the client's id
    assert [m["role"] for m in result["afterNext"]] == ["user", "assistant"] * 2
    assert result["reloadedAfterNext"] == result["afterNext"]
    assert result["afterNext"][:2] == held
    assert [m["role"] for m in result["afterReload"]] == ["user", "assistant"] * 3
    assert result["reloadedAfterReload"] == result["afterReload"]
    regenerated = result["afterRegenerate"]
    assert [m["role"] for m in regenerated] == ["user", "assistant"]
    assert regenerated[1]["id"] != held[1]["id"]
    assert parts_of(regenerated[1]) == [{"type": "text", "text": "Let me answer without the tool."}]
    assert result["reloadedAfterRegenerate"] == regenerated
    # The store: one chat, one branch of the turns, each message once; the regenerated answer
    # is a sibling of the whole answer that went through the tool.
    assert [c.id for c in await all_chats(store)] == [chat_id]
    *rows, again = await all_messages(store)
    assert [m.role for m in rows] == [
        *["user", "assistant", "tool", "assistant"],
        *["user", "assistant", "user", "assistant"],
    ]
    assert [m.parent_id for m in rows] == [None, *(m.id for m in rows[:-1])]
    assert (again.role, again.parent_id, again.text) == (
        "assistant",
        rows[0].id,
        "Let me answer without the tool.",
    )
    assert rows[1].data["tool_calls"][0]["function"] == {
        "name": "getWeather",
        "arguments": '{"city":"Paris"}',
    }
    assert rows[2].data == {
        "role": "tool",
        "tool_call_id": "call_paris",
        "content": '{"city":"Paris","weather":"sunny"}',
    }
    assert [m.text for m in rows if m.role == "assistant"][1:] == [
        "It is sunny in Paris.",
        "Sunny again tomorrow.",
        "Glad to help.",
    ]
    # The upstream was asked each time with the history it answered, never a copy of it.
    sent = [[m["role"] for m in r.json["messages"]] for r in upstream.chat_requests]
    assert sent == [
        ["user"],
        ["user", "assistant", "tool"],
        ["user", "assistant", "tool", "assistant", "user"],
        ["user", "assistant", "tool", "assistant", "user", "assistant", "user"],
        ["user"],
    ]
    assert all(
        r.json["tools"][0]["function"]["name"] == "getWeather" for r in upstream.chat_requests
    )


async def leave_early(
    http: aiohttp.ClientSession, proxy: ProxyServer, body: dict[str, Any], until: bytes
) -> str:
    """POST ``body`` to /api/chat, read the answer up to ``until``, and go away; its id."""
    data = orjson.dumps({"model": "fake-model", **body})
    resp = await http.post(
        f"{base(proxy)}/api/chat", data=data, headers={"Content-Type": "application/json"}
    )
    message_id = resp.headers["X-Message-Id"]
    await resp.content.readuntil(until)
    resp.close()
    return message_id


async def resume(proxy: ProxyServer, chat_id: str, ai_package: str) -> dict[str, Any]:
    """A page load with the chat class (tests/node/aisdk-resume.mjs): stored messages, then
    ``resumeStream()``."""
    return await run_script(
        "aisdk-resume.mjs", base(proxy), chat_id, env={"AI_PACKAGE": ai_package}
    )


@AI_PACKAGES
async def test_a_cancelled_answer_resumes_with_what_was_said_and_ends_in_abort_not_an_error(
    start_proxy: StartProxy, upstream: FakeUpstream, http: aiohttp.ClientSession, ai_package: str
) -> None:
    """Policy abort: the client left, the answer was stopped. On a page load the client
    resumes it: it holds what was said, once, and the stream ends with an ``abort`` part, no
    error for useChat to show."""
    proxy = await start_proxy(**{"chats.on_disconnect": "abort"})
    upstream.enqueue(Reply(chunks=STORY, chunk_delay=0.05))
    message_id = await leave_early(http, proxy, full("c1", user("u1", "A story")), b"part2 ")
    stored = await settled(proxy.app[STORE], message_id)
    assert stored.status == "cancelled"
    result = await resume(proxy, "c1", ai_package)
    assert (result["resumed"], result["error"]) == (True, None)
    assert result["types"][-1] == "abort"
    assert "error" not in result["types"]
    assert result["messages"] == [
        {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "A story"}]},
        {"id": message_id, "role": "assistant", "parts": [{"type": "text", "text": stored.text}]},
    ]


@AI_PACKAGES
async def test_resuming_an_answer_that_goes_on_after_a_tool_output_replays_the_whole_message(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession, ai_package: str
) -> None:
    """A page load while the answer after a tool output runs: the client resumes it into the
    one assistant message it holds, tool part and text, without running the tool again."""
    upstream.enqueue(
        Reply(tool_calls=[ToolCall("lookup", '{"q": "x"}', id="call_9")]),
        Reply(chunks=STORY, chunk_delay=0.05),
    )
    await post_chat(http, proxy, full("c1", user("u1", "Find x")))
    held = await ui_messages(http, proxy, "c1")
    for part in held[-1]["parts"]:
        if part["type"] == "tool-lookup":
            part["state"], part["output"] = "output-available", {"x": 42}
    await leave_early(http, proxy, full("c1", *held), b"part1 ")
    result = await resume(proxy, "c1", ai_package)
    assert (result["resumed"], result["error"], result["toolCalls"]) == (True, None, [])
    tool = {"type": "tool-lookup", "state": "output-available", "input": {"q": "x"}}
    assert result["messages"] == [
        {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Find x"}]},
        {
            "id": held[-1]["id"],
            "role": "assistant",
            "parts": [tool | {"output": {"x": 42}}, {"type": "text", "text": "".join(STORY)}],
        },
    ]
    reloaded = await ui_messages(http, proxy, "c1")
    assert [m["id"] for m in reloaded] == ["u1", held[-1]["id"]]
    # Sent back as the client holds it, it is what is stored: the next turn threads onto it.
    upstream.enqueue(Reply(content="Next."))
    status, _, _ = await post_chat(http, proxy, full("c1", *reloaded, user("u2", "Next?")))
    assert status == 200
    sent = upstream.chat_requests[-1].json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "assistant", "user"]
    assert len(await all_messages(proxy.app[STORE])) == 6


async def run_example(tmp_path: Path, proxy: ProxyServer, *args: str) -> str:
    """examples/aisdk-chat/chat.mjs, with the test's copy of the `ai` package."""
    folder = tmp_path / "aisdk-chat"
    if not folder.exists():
        folder.mkdir()
        shutil.copy(EXAMPLE, folder / EXAMPLE.name)
        (folder / "node_modules").symlink_to(NODE_DIR.resolve() / "node_modules")
    out, err = await run_node(folder / EXAMPLE.name, "--url", base(proxy), *args, within=60)
    assert err == ""  # no error, not even for a new chat (nothing to resume)
    return out


async def test_the_example_chats_and_a_second_run_goes_on_with_the_stored_history(
    proxy: ProxyServer, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.enqueue(Reply(content="Hi, I am the example."), Reply(content="Still here."))
    out = await run_example(tmp_path, proxy, "--chat", "example-1", "--model", "m", "Hello!")
    assert out.splitlines() == [
        "assistant> Hi, I am the example.",
        "(chat example-1: 2 messages stored)",
    ]
    out = await run_example(tmp_path, proxy, "--chat", "example-1", "--model", "m", "Again")
    assert out.splitlines() == [
        "user> Hello!",
        "assistant> Hi, I am the example.",
        "assistant> Still here.",
        "(chat example-1: 4 messages stored)",
    ]
    assert upstream.chat_requests[1].json["messages"][:2] == [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi, I am the example."},
    ]
