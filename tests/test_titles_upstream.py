"""Titles go through the proxy's one upstream client: the answer's credential, its retries and
the retries metric; a title that cannot be had leaves the first-message title."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatproxy.appkeys import STORE, TITLER
from chatproxy.auth import new_api_key
from chatproxy.engine.titles import TITLE_PROMPT
from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply
from tests.util import all_chats, eventually

QUESTION = "What is the capital of France?"
BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": QUESTION}]}
RETRYING = {
    "chats.title": "upstream",
    "upstream.retries": 1,
    "upstream.backoff_initial": 0.01,
    "upstream.backoff_max": 0.01,
}


async def ask(http: aiohttp.ClientSession, proxy: ProxyServer, headers: dict[str, str]) -> str:
    """One streamed question; the stream the client got, whole."""
    async with http.post(f"{proxy.url}/chat/completions", json=BODY, headers=headers) as resp:
        assert resp.status == 200
        return (await resp.read()).decode()


async def retries(http: aiohttp.ClientSession, proxy: ProxyServer) -> float:
    async with http.get(proxy.url.removesuffix("/v1") + "/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "chatproxy_upstream_retries_total":
                return sample.value
    raise AssertionError("no chatproxy_upstream_retries_total in /metrics")


async def titled(proxy: ProxyServer, title: str) -> bool:
    (chat,) = await all_chats(proxy.app[STORE])
    return chat.title == title


async def test_a_title_request_is_retried_and_counted_in_the_retries_metric(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**RETRYING)
    upstream.enqueue(
        Reply(content="Paris."),
        Reply(status=503, headers={"Retry-After": "0"}),
        Reply(content="Capital of France"),
    )
    stream = await ask(http, proxy, {})

    assert stream.endswith("data: [DONE]\n\n")
    assert await eventually(lambda: titled(proxy, "Capital of France"))
    answer, failed, title = upstream.chat_requests
    for request in (failed, title):
        assert request.json["messages"][0] == {"role": "system", "content": TITLE_PROMPT}
        assert request.json["messages"][1] == {"role": "user", "content": QUESTION}
        assert not request.json.get("stream")
    assert answer.json["stream"] is True
    assert await retries(http, proxy) == 1


async def _key(proxy: ProxyServer) -> str:
    _, key, key_hash, prefix = new_api_key()
    await proxy.app[STORE].add_api_key("key-alice", ("alice", "alice", None), key_hash, prefix)
    return key


@pytest.mark.parametrize(
    ("mode", "upstream_key", "expected"),
    [
        ("none", "sk-upstream-secret", "Bearer sk-upstream-secret"),
        ("none", "", None),
        ("keys", "sk-upstream-secret", "Bearer sk-upstream-secret"),
        ("passthrough", "sk-upstream-secret", "Bearer sk-the-clients-own"),
    ],
)
async def test_the_title_answer_and_pass_through_carry_the_same_upstream_credential(
    start_proxy,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    mode: str,
    upstream_key: str,
    expected: str | None,
) -> None:
    proxy = await start_proxy(
        **{"chats.title": "upstream", "auth.mode": mode, "upstream.api_key": upstream_key}
    )
    headers = {}
    if mode == "keys":
        headers = {"Authorization": f"Bearer {await _key(proxy)}"}
    elif mode == "passthrough":
        headers = {"Authorization": "Bearer sk-the-clients-own"}
    upstream.enqueue(Reply(content="Paris."), Reply(content="Capital of France"))
    await ask(http, proxy, headers)
    assert await eventually(lambda: titled(proxy, "Capital of France"))
    async with http.get(f"{proxy.url}/models", headers=headers) as resp:
        assert resp.status == 200

    answer, title = upstream.chat_requests
    (models,) = [r for r in upstream.requests if r.path.endswith("/models")]
    for request in (answer, title, models):
        assert request.headers.get("Authorization") == expected
    assert title.headers.get("Content-Type") == "application/json"


async def test_a_title_that_fails_after_its_retries_leaves_the_first_message_title(
    start_proxy,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = await start_proxy(**RETRYING)
    upstream.enqueue(Reply(content="Paris."), Reply(status=503), Reply(status=500))
    caplog.set_level(logging.INFO, logger="chatproxy.engine.titles")

    stream = await ask(http, proxy, {})
    assert await eventually(lambda: _asked(upstream, 3))
    await proxy.app[TITLER].close()  # returns once the title request has ended

    assert stream.endswith("data: [DONE]\n\n") and "error" not in stream
    assert [r.getMessage() for r in caplog.records if r.name == "chatproxy.engine.titles"] == [
        f"no title from the upstream for {(await all_chats(proxy.app[STORE]))[0].id} "
        "(upstream_error)"
    ]
    assert await titled(proxy, QUESTION)
    assert await retries(http, proxy) == 1


async def _asked(upstream: FakeUpstream, n: int) -> bool:
    return len(upstream.chat_requests) == n


async def test_a_title_under_way_at_shutdown_is_still_stored(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession, db_url: str
) -> None:
    proxy = await start_proxy(**{"chats.title": "upstream"})
    upstream.enqueue(Reply(content="Paris."), Reply(content="French capital", delay=0.5))
    await ask(http, proxy, {})

    async def asked() -> bool:
        return len(upstream.chat_requests) == 2

    await eventually(asked)
    await proxy.stop()  # while the title request waits for its answer
    store = Store(db_url)
    await store.open()
    try:
        (chat,) = await all_chats(store)
    finally:
        await store.close()
    assert chat.title == "French capital"
