"""POST /api/chat end to end on a real port: threading, history mode, regenerate, edits,
reloading UIMessages, resuming, deleting, and the disconnect policy."""

from __future__ import annotations

import copy
from typing import Any

import aiohttp
import orjson

from chatproxy.appkeys import STORE
from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply, ToolCall
from tests.aisdk import base, full, parts, post_chat, single, text_of, ui_messages, user
from tests.util import all_chats, all_messages, settled

WORDS = [f"w{i} " for i in range(20)]


async def stored_branch(http: aiohttp.ClientSession, proxy: ProxyServer, chat_id: str) -> list:
    async with http.get(f"{proxy.url}/conversations/{chat_id}/messages?all=true") as resp:
        return (await resp.json())["data"]


async def test_a_reply_reloads_as_uimessages_with_the_ids_the_client_knows(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.enqueue(Reply(content="Hello there", reasoning="Hmm"))
    status, headers, raw = await post_chat(http, proxy, full("c1", user("u-1", "Hi")))
    assert status == 200
    answer_id = headers["X-Message-Id"]
    assert parts(raw)[0] == {"type": "start", "messageId": answer_id}
    messages = await ui_messages(http, proxy, "c1")
    assert messages[0] == user("u-1", "Hi")
    assert messages[1]["id"] == answer_id
    assert messages[1]["parts"] == [
        {"type": "step-start"},
        {"type": "reasoning", "text": "Hmm", "state": "done"},
        {"type": "text", "text": "Hello there", "state": "done"},
    ]
    assert messages[1]["metadata"]["model"] == "fake-model"
    assert set(messages[1]["metadata"]["usage"]) == {"inputTokens", "outputTokens", "totalTokens"}


async def test_whole_history_threads_into_one_chat_storing_each_message_once(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession, store: Store
) -> None:
    await post_chat(http, proxy, full("c1", user("u1", "One")))
    history = await ui_messages(http, proxy, "c1")
    status, _, raw = await post_chat(http, proxy, full("c1", *history, user("u2", "Two")))
    assert status == 200
    assert text_of(raw)
    assert len(await all_chats(store)) == 1
    assert [m.role for m in await all_messages(store)] == ["user", "assistant"] * 2
    sent = upstream.chat_requests[1].json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert "reasoning_content" not in sent[1]
    reloaded = await ui_messages(http, proxy, "c1")
    assert [m["id"] for m in reloaded[:3]] == [m["id"] for m in history] + ["u2"]


def with_tool_output(messages: list[dict[str, Any]], output: Any) -> list[dict[str, Any]]:
    """What the client holds once it ran the last answer's tool calls."""
    messages = copy.deepcopy(messages)
    for part in messages[-1]["parts"]:
        if part["type"].startswith("tool-"):
            part["state"], part["output"] = "output-available", output
    return messages


async def test_history_mode_sends_the_upstream_the_same_request_as_whole_history(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Two chats, the same turns: one sends its whole history every time, the other only its
    new message (after a tool result, which takes the whole history). The upstream requests
    are byte for byte the same."""
    call = ToolCall("get_weather", '{"city": "Paris", "unit": "C"}', id="call_1")
    replies = [
        Reply(chunks=["Let me look."], reasoning="The user wants weather", tool_calls=[call]),
        Reply(content="It is 21 degrees in Paris."),
        Reply(refusal="I cannot help with that."),
        Reply(content="Goodbye!"),
    ]
    prompts = [user("u1", "Weather in Paris?"), user("u2", "Hack my neighbour"), user("u3", "Bye")]
    sent: dict[str, list[bytes]] = {}
    for chat_id, as_single in (("whole", False), ("single", True)):
        upstream.enqueue(*replies)
        first = len(upstream.chat_requests)

        def body(
            message: dict[str, Any],
            history: list[dict[str, Any]],
            *,
            cid: str = chat_id,
            only_last: bool = as_single,
        ) -> dict[str, Any]:
            return single(cid, message) if only_last else full(cid, *history, message)

        await post_chat(http, proxy, body(prompts[0], []))
        tool_done = with_tool_output(await ui_messages(http, proxy, chat_id), {"celsius": 21})
        await post_chat(http, proxy, full(chat_id, *tool_done))
        for prompt in prompts[1:]:
            history = await ui_messages(http, proxy, chat_id)
            status, _, _ = await post_chat(http, proxy, body(prompt, history))
            assert status == 200
        sent[chat_id] = [r.body for r in upstream.chat_requests[first:]]
    assert sent["single"] == sent["whole"]
    last = orjson.loads(sent["whole"][-1])["messages"]
    assert [m["role"] for m in last] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert last[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris", "unit": "C"}'
    assert last[2] == {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius":21}'}
    assert last[5] == {"role": "assistant", "content": "", "refusal": "I cannot help with that."}
    stored = await stored_branch(http, proxy, "whole")
    assert len(stored) == 8  # each message once: the 7 last sent, then the last answer
    assert len({m["parent_id"] for m in stored}) == 8  # one branch


async def test_an_answer_that_went_through_a_tool_reloads_as_one_message_with_two_steps(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.enqueue(
        Reply(tool_calls=[ToolCall("lookup", '{"q":"x"}', id="call_9")]), Reply(content="Found.")
    )
    await post_chat(http, proxy, full("c1", user("u1", "Find x")))
    tool_done = with_tool_output(await ui_messages(http, proxy, "c1"), "x is 42")
    _, headers, raw = await post_chat(http, proxy, full("c1", *tool_done))
    # The answer goes on in the client's message: its start part names it, not a new one.
    assert parts(raw)[0] == {"type": "start", "messageId": tool_done[-1]["id"]}
    assert headers["X-Message-Id"] != tool_done[-1]["id"]  # stored as an answer of its own
    messages = await ui_messages(http, proxy, "c1")
    assert [m["role"] for m in messages] == ["user", "assistant"]
    answer = messages[1]
    assert answer["id"] == tool_done[-1]["id"]
    assert answer["parts"] == [
        {"type": "step-start"},
        {
            "type": "tool-lookup",
            "toolCallId": "call_9",
            "state": "output-available",
            "input": {"q": "x"},
            "output": "x is 42",
        },
        {"type": "step-start"},
        {"type": "text", "text": "Found.", "state": "done"},
    ]


async def test_regenerate_answers_again_from_the_same_parent_as_a_sibling(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.enqueue(Reply(content="First"), Reply(content="Second"), Reply(content="Third"))
    _, headers, _ = await post_chat(http, proxy, full("c1", user("u1", "Hi")))
    first = headers["X-Message-Id"]
    # useChat's regenerate(): the messages before the answer, and the answer's id.
    regenerate = {"trigger": "regenerate-message", "messageId": first}
    status, headers, raw = await post_chat(http, proxy, full("c1", user("u1", "Hi"), **regenerate))
    assert (status, text_of(raw)) == (200, "Second")
    second = headers["X-Message-Id"]
    # The "send only the last message" form: the same.
    body = single("c1", user("u1", "Hi"), trigger="regenerate-message", messageId=second)
    status, headers, raw = await post_chat(http, proxy, body)
    assert (status, text_of(raw)) == (200, "Third")
    requests = [r.json["messages"] for r in upstream.chat_requests]
    assert requests[0] == requests[1] == requests[2] == [{"role": "user", "content": "Hi"}]
    stored = await stored_branch(http, proxy, "c1")
    answers = [m for m in stored if m["role"] == "assistant"]
    assert len({m["parent_id"] for m in answers}) == 1
    assert len([m for m in stored if m["role"] == "user"]) == 1
    reloaded = await ui_messages(http, proxy, "c1")
    assert [m["id"] for m in reloaded] == ["u1", headers["X-Message-Id"]]


async def test_editing_a_message_in_history_mode_branches_from_before_it(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.enqueue(Reply(content="A1"), Reply(content="A2"), Reply(content="A2 edited"))
    await post_chat(http, proxy, single("c1", user("u1", "One")))
    await post_chat(http, proxy, single("c1", user("u2", "Two")))
    # useChat's sendMessage({text, messageId}) replaces u2, keeping its id.
    body = single("c1", user("u2", "Two, edited"), messageId="u2")
    status, _, raw = await post_chat(http, proxy, body)
    assert (status, text_of(raw)) == (200, "A2 edited")
    assert upstream.chat_requests[2].json["messages"] == [
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Two, edited"},
    ]
    reloaded = await ui_messages(http, proxy, "c1")
    assert [m["parts"][-1]["text"] for m in reloaded] == ["One", "A1", "Two, edited", "A2 edited"]
    # Editing the first message starts a branch from the root.
    upstream.enqueue(Reply(content="Fresh"))
    status, _, raw = await post_chat(http, proxy, single("c1", user("u1", "Zero"), messageId="u1"))
    assert (status, text_of(raw)) == (200, "Fresh")
    assert upstream.chat_requests[3].json["messages"] == [{"role": "user", "content": "Zero"}]
    assert (await ui_messages(http, proxy, "c1"))[0]["id"] == "u1"


async def start_and_leave(
    http: aiohttp.ClientSession, proxy: ProxyServer, upstream: FakeUpstream, until: bytes
) -> str:
    """Start a slow answer in chat c1, read it up to ``until``, and go away; the answer id."""
    upstream.enqueue(Reply(chunks=WORDS, chunk_delay=0.03))
    body = orjson.dumps({"model": "m", **full("c1", user("u1", "Tell me"))})
    resp = await http.post(
        f"{base(proxy)}/api/chat", data=body, headers={"Content-Type": "application/json"}
    )
    message_id = resp.headers["X-Message-Id"]
    await resp.content.readuntil(until)
    resp.close()
    return message_id


async def test_resume_replays_the_running_answer_from_its_start_then_204(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession, store: Store
) -> None:
    url = f"{base(proxy)}/api/chat/c1/stream"
    message_id = await start_and_leave(http, proxy, upstream, b"w2 ")
    async with http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["x-vercel-ai-ui-message-stream"] == "v1"
        raw = await resp.read()
    got = parts(raw)
    assert got[0] == {"type": "start", "messageId": message_id}
    assert got[-2]["type"] == "finish" and got[-1] == "[DONE]"
    assert text_of(raw) == "".join(WORDS)
    stored = await settled(store, message_id)
    assert (stored.status, stored.client_disconnected) == ("completed", True)
    async with http.get(url) as resp:  # just finished: the same stream, whole
        assert (resp.status, await resp.read()) == (200, raw)


async def test_resume_with_nothing_running_is_204(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"chats.resume_grace": 0})
    await post_chat(http, proxy, full("c1", user("u1", "Hi")))
    async with http.get(f"{base(proxy)}/api/chat/c1/stream") as resp:
        assert (resp.status, await resp.read()) == (204, b"")


async def test_a_client_that_leaves_under_policy_abort_cancels_the_answer(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"chats.on_disconnect": "abort"})
    message_id = await start_and_leave(http, proxy, upstream, b"w1 ")
    stored = await settled(proxy.app[STORE], message_id)
    assert stored.status == "cancelled"
    assert 0 < len(stored.text) < len("".join(WORDS))


async def test_a_second_message_while_an_answer_runs_is_409_chat_busy(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession, store: Store
) -> None:
    message_id = await start_and_leave(http, proxy, upstream, b"w0 ")
    count = len(await all_messages(store))
    status, _, raw = await post_chat(http, proxy, single("c1", user("u2", "Hello?")))
    assert status == 409
    assert orjson.loads(raw)["error"]["code"] == "chat_busy"
    assert len(await all_messages(store)) == count
    await settled(store, message_id)


async def test_delete_removes_the_chat_and_everything_in_it(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession, store: Store
) -> None:
    await post_chat(http, proxy, full("c1", user("u1", "Hi")))
    await post_chat(http, proxy, full("c2", user("u1", "Other chat")))
    async with http.delete(f"{base(proxy)}/api/chat", params={"id": "c1"}) as resp:
        assert resp.status == 200
        deleted = await resp.json()
        assert {k: deleted[k] for k in ("id", "object", "deleted")} == {
            "id": "c1",
            "object": "chat.deleted",
            "deleted": True,
        }
    async with http.get(f"{base(proxy)}/api/chat/c1/messages") as resp:
        assert resp.status == 404
    assert {c.id for c in await all_chats(store)} == {"c2"}
    assert {m.chat_id for m in await all_messages(store)} == {"c2"}


async def test_delete_while_an_answer_runs_is_409_and_deletes_nothing(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession, store: Store
) -> None:
    message_id = await start_and_leave(http, proxy, upstream, b"w0 ")
    async with http.delete(f"{base(proxy)}/api/chat?id=c1") as resp:
        assert resp.status == 409
        assert (await resp.json())["error"]["code"] == "chat_busy"
    await settled(store, message_id)
    assert len(await all_messages(store)) == 2


async def test_the_model_comes_from_the_body_or_the_configured_default(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"aisdk.default_model": "house-model"})
    await post_chat(http, proxy, full("c1", user("u1", "Hi")), model=None)
    await post_chat(http, proxy, full("c2", user("u1", "Hi")), model="chosen")
    assert [r.json["model"] for r in upstream.chat_requests] == ["house-model", "chosen"]


async def test_chat_parameters_are_forwarded_and_the_apps_own_fields_are_not(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = full("c1", user("u1", "Hi"), temperature=0.2, tools=tools, webSearch=True)
    await post_chat(http, proxy, body)
    sent = upstream.chat_requests[0].json
    assert (sent["temperature"], sent["tools"]) == (0.2, tools)
    assert "webSearch" not in sent and "id" not in sent and "trigger" not in sent
    assert sent["stream"] is True


async def test_files_go_upstream_as_content_parts_and_reload_as_file_parts(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    pdf = "data:application/pdf;base64,JVBERi0="
    message = {
        "id": "u1",
        "role": "user",
        "parts": [
            {"type": "text", "text": "What is in these?"},
            {"type": "file", "mediaType": "image/png", "url": "https://example.test/a.png"},
            {"type": "file", "mediaType": "application/pdf", "url": pdf, "filename": "a.pdf"},
            {"type": "file", "mediaType": "audio/wav", "url": "data:audio/wav;base64,UklG"},
        ],
    }
    await post_chat(http, proxy, full("c1", message))
    assert upstream.chat_requests[0].json["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "https://example.test/a.png"}},
        {"type": "file", "file": {"file_data": pdf, "filename": "a.pdf"}},
        {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
    ]
    reloaded = (await ui_messages(http, proxy, "c1"))[0]
    assert reloaded["parts"][1] == {
        "type": "file",
        "mediaType": "image/*",
        "url": "https://example.test/a.png",
    }
    assert reloaded["parts"][2:] == message["parts"][2:]
    # Sent back, it is the stored message: the next request threads onto it.
    history = await ui_messages(http, proxy, "c1")
    await post_chat(http, proxy, full("c1", *history, user("u2", "Thanks")))
    assert len(await stored_branch(http, proxy, "c1")) == 4


async def test_a_public_chat_of_another_user_can_be_read_and_resumed_but_not_changed(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"auth.mode": "header", "server.trusted_proxies": ["127.0.0.1/32"]})
    alice, bob = {"X-User-Id": "alice"}, {"X-User-Id": "bob"}
    await post_chat(http, proxy, full("c1", user("u1", "Hi")), headers=alice)
    async with http.post(
        f"{proxy.url}/conversations/c1", json={"visibility": "public"}, headers=alice
    ) as resp:
        assert resp.status == 200
    assert len(await ui_messages(http, proxy, "c1", headers=bob)) == 2
    async with http.get(f"{base(proxy)}/api/chat/c1/stream", headers=bob) as resp:
        assert resp.status in (200, 204)
    async with http.delete(f"{base(proxy)}/api/chat?id=c1", headers=bob) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "permission_denied"
    status, _, raw = await post_chat(http, proxy, single("c1", user("u2", "Mine?")), headers=bob)
    assert (status, orjson.loads(raw)["error"]["code"]) == (403, "chat_forbidden")
