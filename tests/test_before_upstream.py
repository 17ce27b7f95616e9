"""``before_upstream`` plugins through a real port: they see every face's upstream request and
change it (model, body, headers, which upstream), refuse it (nothing stored), or fail (a clean
error naming no secret, the turn kept with a failed answer, logged and counted); both stores."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from chatproxy.appkeys import STORE
from chatproxy.server import ProxyServer
from chatproxy.testing import FakeUpstream, Reply
from tests import plugin_guard

PLUGIN = "tests.plugin_guard"


@pytest.fixture(autouse=True)
def rules() -> Iterator[dict[str, Any]]:
    plugin_guard.RULES.clear()
    plugin_guard.SEEN.clear()
    yield plugin_guard.RULES
    plugin_guard.RULES.clear()
    plugin_guard.SEEN.clear()


@pytest.fixture
async def guarded(start_proxy: Any) -> ProxyServer:
    return await start_proxy(plugins=[PLUGIN])


@pytest.fixture
async def guarded_client(guarded: ProxyServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=guarded.url, api_key="sk-client", max_retries=0) as c:
        yield c


async def _counts(proxy: ProxyServer) -> tuple[int, int]:
    assert proxy.app is not None
    conn = proxy.app[STORE].conn
    chats = await conn.execute_query_dict("SELECT count(*) AS n FROM chats")
    messages = await conn.execute_query_dict("SELECT count(*) AS n FROM messages")
    return int(chats[0]["n"]), int(messages[0]["n"])


@pytest.mark.parametrize("stream", [False, True])
async def test_a_plugin_changes_model_headers_and_body_of_the_upstream_request(
    guarded: ProxyServer,
    guarded_client: openai.AsyncOpenAI,
    upstream: FakeUpstream,
    rules: dict[str, Any],
    stream: bool,
) -> None:
    rules.update(model="gpt-cheap", header="on")
    messages = [{"role": "user", "content": "hello"}]
    if stream:
        chunks = await guarded_client.chat.completions.create(
            model="gpt-big", messages=messages, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    else:
        done = await guarded_client.chat.completions.create(model="gpt-big", messages=messages)
        text = done.choices[0].message.content or ""
    assert text
    sent = upstream.requests[-1]
    assert orjson.loads(sent.body)["model"] == "gpt-cheap"
    assert sent.headers["X-Guard"] == "on"
    assert sent.headers["Authorization"] == "Bearer sk-upstream-secret"
    (call,) = plugin_guard.SEEN
    assert call.face == "chat.completions" and call.user_id == "local"
    assert call.model == "gpt-big" and call.path == "/chat/completions"
    assert call.chat_id is not None and call.chat_id.startswith("chat_")
    # What the client sent is what is stored: the rewrite only went upstream.
    assert guarded.app is not None
    stored = await guarded.app[STORE].chat_messages(call.chat_id)
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[0].text == "hello" and stored[1].status == "completed"


async def test_a_refusal_is_the_clients_error_and_stores_nothing(
    guarded: ProxyServer, http: aiohttp.ClientSession, upstream: FakeUpstream, rules: dict[str, Any]
) -> None:
    rules["deny"] = ["gpt-forbidden"]
    before = len(upstream.requests)
    body = {"model": "gpt-forbidden", "messages": [{"role": "user", "content": "hi"}]}
    for stream in (False, True):
        async with http.post(
            f"{guarded.url}/chat/completions", json={**body, "stream": stream}
        ) as resp:
            assert resp.status == 400
            assert await resp.json() == {
                "error": {
                    "message": "the model 'gpt-forbidden' is not allowed here",
                    "type": "invalid_request_error",
                    "code": "model_not_allowed",
                    "param": "model",
                }
            }
            assert "X-Chat-Id" not in resp.headers
    assert len(upstream.requests) == before
    assert await _counts(guarded) == (0, 0)


async def test_a_failing_plugin_is_a_clean_500_and_the_turn_is_kept_as_failed(
    guarded: ProxyServer,
    http: aiohttp.ClientSession,
    upstream: FakeUpstream,
    rules: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rules["crash"] = True
    before = len(upstream.requests)
    body = {"model": "m", "messages": [{"role": "user", "content": "keep me"}]}
    with caplog.at_level(logging.ERROR):
        async with http.post(f"{guarded.url}/chat/completions", json=body) as resp:
            assert resp.status == 500
            text = await resp.text()
            chat_id = resp.headers["X-Chat-Id"]
    error = orjson.loads(text)["error"]
    assert error["code"] == "plugin_error" and error["type"] == "server_error"
    assert PLUGIN in error["message"] and "before_upstream" in error["message"]
    assert "sk-guard-secret" not in text and "Traceback" not in text
    assert len(upstream.requests) == before  # never asked
    assert guarded.app is not None
    stored = await guarded.app[STORE].chat_messages(chat_id)
    assert [(m.role, m.status) for m in stored] == [("user", "completed"), ("assistant", "failed")]
    assert stored[0].text == "keep me"
    assert stored[1].error is not None and stored[1].error["code"] == "plugin_error"
    assert any(
        PLUGIN in r.getMessage() and "before_upstream" in r.getMessage() for r in caplog.records
    )
    async with http.get(guarded.url.removesuffix("/v1") + "/metrics") as resp:
        metrics = await resp.text()
    line = f'chatproxy_plugin_errors_total{{hook="before_upstream",plugin="{PLUGIN}"}} 1.0'
    assert line in metrics


async def test_a_plugin_sends_the_request_to_another_upstream(
    guarded: ProxyServer,
    guarded_client: openai.AsyncOpenAI,
    upstream: FakeUpstream,
    rules: dict[str, Any],
) -> None:
    async with FakeUpstream() as other:
        other.enqueue(Reply(content="from the other one"))
        rules["upstream"] = other.url
        before = len(upstream.requests)
        done = await guarded_client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "where?"}]
        )
        assert done.choices[0].message.content == "from the other one"
        assert len(upstream.requests) == before and len(other.requests) == 1


async def test_the_ai_sdk_face_goes_through_the_same_hook(
    guarded: ProxyServer, http: aiohttp.ClientSession, upstream: FakeUpstream, rules: dict[str, Any]
) -> None:
    rules["deny"] = ["gpt-forbidden"]
    base = guarded.url.removesuffix("/v1")
    message = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}
    body = {"id": "chat_aisdk_guard", "messages": [message], "model": "gpt-forbidden"}
    async with http.post(f"{base}/api/chat", json=body) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "model_not_allowed"
    assert await _counts(guarded) == (0, 0)
    async with http.post(f"{base}/api/chat", json={**body, "model": "gpt-ok"}) as resp:
        assert resp.status == 200
        assert b'"type":"finish"' in await resp.read()
    assert [c.face for c in plugin_guard.SEEN] == ["aisdk", "aisdk"]
    assert plugin_guard.SEEN[-1].chat_id == "chat_aisdk_guard"
