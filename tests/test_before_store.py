"""``before_store`` through a real port: a plugin changes what is stored (a request's messages
before their first write, an answer at each checkpoint and at the end, messages added through
the management API) and never what the client receives or how the conversation threads; a
plugin that breaks leaves the message withheld, never stored unchanged. Both stores."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatproxy.appkeys import STORE
from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply
from tests import plugin_rewrite
from tests.util import all_messages, eventually, message

PLUGIN = "tests.plugin_rewrite"
QUESTION = {"role": "user", "content": "where is the tower?"}


@pytest.fixture(autouse=True)
def rules() -> Iterator[dict[str, Any]]:
    plugin_rewrite.RULES.clear()
    plugin_rewrite.SEEN.clear()
    yield plugin_rewrite.RULES
    plugin_rewrite.RULES.clear()
    plugin_rewrite.SEEN.clear()


@pytest.fixture
async def proxy(start_proxy: Any) -> ProxyServer:
    return await start_proxy(plugins=[PLUGIN])


def _store(proxy: ProxyServer) -> Store:
    assert proxy.app is not None
    return proxy.app[STORE]


async def _chat(
    http: aiohttp.ClientSession, proxy: ProxyServer, messages: list[dict[str, Any]], **kw: Any
) -> tuple[bytes, dict[str, str]]:
    body = {"model": "m", "messages": messages, **kw}
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read(), dict(resp.headers)


async def test_the_store_keeps_what_the_plugin_made_and_the_client_gets_the_answer(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    words = [f"word{i} " for i in range(30)]
    upstream.enqueue(Reply(chunks=words, chunk_delay=0.02))
    body = {"model": "m", "messages": [QUESTION], "stream": True}
    store = _store(proxy)
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        message_id = resp.headers["X-Message-Id"]
        chat_id = resp.headers["X-Chat-Id"]
        head = await resp.content.readuntil(b"word10 ")

        async def checkpointed() -> str | None:
            m = await message(store, message_id)
            return m.text if m.status == "in_progress" and m.text else None

        # A checkpoint of the running answer is stored as the plugin made it.
        partial = await eventually(checkpointed)
        assert partial == partial.upper() and partial.startswith("WORD0 ")
        raw = head + await resp.read()
    answer_text = "".join(words)
    assert raw.count(b"word") == 30 and b"WORD" not in raw  # the client: the upstream's bytes
    assert raw.endswith(b"data: [DONE]\n\n")

    stored = await all_messages(store)
    assert [(m.role, m.text) for m in stored] == [
        ("user", "WHERE IS THE TOWER?"),
        ("assistant", answer_text.upper()),
    ]
    assert stored[0].data == {"role": "user", "content": "WHERE IS THE TOWER?", "rewritten": True}
    assert stored[1].data["content"] == answer_text.upper()
    assert stored[1].status == "completed"
    chat = await store.get_chat(chat_id)
    assert chat is not None and chat.title == "WHERE IS THE TOWER?"

    seen = plugin_rewrite.SEEN
    assert seen[0] == {
        "kind": "message",
        "chat_id": chat_id,
        "message_id": stored[0].id,
        "user_id": "local",
        "role": "user",
        "text": "where is the tower?",
        "final": True,
        "status": None,
    }
    checkpoints = [r for r in seen if r["kind"] == "answer" and not r["final"]]
    assert checkpoints and all(r["message_id"] == message_id for r in checkpoints)
    final = seen[-1]
    assert (final["kind"], final["final"], final["status"]) == ("answer", True, "completed")
    assert (final["text"], final["chat_id"], final["user_id"]) == (answer_text, chat_id, "local")


async def test_a_resent_history_threads_by_what_the_client_sent(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.enqueue(Reply(content="Paris."), Reply(content="Yes."))
    raw, headers = await _chat(http, proxy, [QUESTION])
    assert b'"Paris."' in raw
    again = [
        QUESTION,
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "sure?"},
    ]
    _, second = await _chat(http, proxy, again)
    # The stored texts differ from the request's, the hashes do not.
    assert second["X-Chat-Id"] == headers["X-Chat-Id"]
    assert [m.text for m in await all_messages(_store(proxy))] == [
        "WHERE IS THE TOWER?",
        "PARIS.",
        "SURE?",
        "YES.",
    ]
    # The upstream got the conversation as the client sent it.
    assert upstream.chat_requests[-1].json["messages"] == again


async def test_messages_added_through_the_conversations_api_are_rewritten(
    proxy: ProxyServer, http: aiohttp.ClientSession
) -> None:
    base = proxy.url
    items = {"items": [{"role": "user", "content": "first words"}]}
    async with http.post(f"{base}/conversations", json=items) as resp:
        assert resp.status == 200, await resp.text()
        chat_id = (await resp.json())["id"]
    more = {"items": [{"role": "user", "content": "more words"}]}
    async with http.post(f"{base}/conversations/{chat_id}/items", json=more) as resp:
        assert resp.status == 200, await resp.text()
    store = _store(proxy)
    assert [m.text for m in await store.chat_messages(chat_id)] == ["FIRST WORDS", "MORE WORDS"]
    chat = await store.get_chat(chat_id)
    assert chat is not None and chat.title == "FIRST WORDS"


async def _plugin_errors(http: aiohttp.ClientSession, proxy: ProxyServer) -> float:
    async with http.get(proxy.url.removesuffix("/v1") + "/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = (s.labels.get("plugin"), s.labels.get("hook"))
            if s.name == "chatproxy_plugin_errors_total" and labels == (PLUGIN, "before_store"):
                return s.value
    return 0.0


@pytest.mark.parametrize("stream", [False, True])
async def test_a_broken_plugin_withholds_the_message_and_never_stores_it_unchanged(
    proxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    rules: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    stream: bool,
) -> None:
    rules["crash"] = True
    upstream.enqueue(Reply(content="the secret answer", chunks=["the secret ", "answer"]))
    question = {"role": "user", "content": "my private question"}
    with caplog.at_level(logging.ERROR):
        raw, headers = await _chat(http, proxy, [question], stream=stream)
    # The client's answer is whole; nothing of either message is stored.
    assert b"the secret " in raw and b"answer" in raw
    stored = await all_messages(_store(proxy))
    user, answer = stored
    assert (user.text, user.data, user.status) == ("", {"role": "user", "content": ""}, "completed")
    assert answer.id == headers["X-Message-Id"]
    assert (answer.text, answer.data) == ("", {"role": "assistant", "content": ""})
    assert answer.status == "failed"
    assert answer.error == {
        "message": f"plugin {PLUGIN!r} failed in before_store",
        "type": "server_error",
        "param": None,
        "code": "plugin_error",
    }
    chat = await _store(proxy).get_chat(headers["X-Chat-Id"])
    assert chat is not None and chat.title is None
    # Logged with the plugin's name, counted in /metrics: the question, and the answer.
    logged = [r.getMessage() for r in caplog.records if r.name == "chatproxy.plugins"]
    assert any(PLUGIN in line and "before_store" in line for line in logged)
    assert await _plugin_errors(http, proxy) >= 2
