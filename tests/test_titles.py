"""Chat titles: from the first message at once, and optionally from the upstream afterwards."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from chatproxy.appkeys import STORE
from chatproxy.engine.titles import TITLE_PROMPT, clean_title
from chatproxy.testing import FakeUpstream, Reply
from tests.util import all_chats, eventually

QUESTION = "   What is the capital of France,\n and why is it that one? " + "blah " * 30


async def post(http: aiohttp.ClientSession, url: str) -> dict:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": QUESTION}]}
    async with http.post(f"{url}/chat/completions", json=body) as resp:
        await resp.read()
        return dict(resp.headers)


async def test_first_message_title_is_trimmed_to_about_80_characters(
    proxy, store, http: aiohttp.ClientSession
) -> None:
    await post(http, proxy.url)
    (chat,) = await all_chats(store)
    assert chat.title is not None
    assert chat.title.startswith("What is the capital of France, and why is it that one?")
    assert len(chat.title) <= 81 and chat.title.endswith("…")


async def test_upstream_title_replaces_it_after_the_answer_without_touching_the_stream(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"chats.title": "upstream"})
    upstream.enqueue(Reply(content="Paris is the capital."), Reply(content='"Capital of France."'))
    await post(http, proxy.url)

    async def titled() -> str | None:
        (chat,) = await all_chats(proxy.app[STORE])
        return chat.title if chat.title == "Capital of France" else None

    assert await eventually(titled) == "Capital of France"
    title_request = upstream.chat_requests[1].json
    assert title_request["messages"][0] == {"role": "system", "content": TITLE_PROMPT}
    assert title_request["messages"][1]["content"] == QUESTION
    assert not title_request.get("stream")


async def test_a_failed_title_request_keeps_the_first_message_title(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"chats.title": "upstream"})
    upstream.enqueue(Reply(content="Paris."), Reply(status=500))
    await post(http, proxy.url)

    async def asked() -> bool:
        return len(upstream.chat_requests) == 2

    await eventually(asked)
    await asyncio.sleep(0.2)  # the failed answer has been handled by now
    (chat,) = await all_chats(proxy.app[STORE])
    assert chat.title is not None
    assert chat.title.startswith("What is the capital of France")


@pytest.mark.parametrize(
    ("raw", "title"),
    [
        ('"Capital of France."', "Capital of France"),
        ("Title: Paris trip\nmore text", "Paris trip"),
        ("  ", None),
        (None, None),
        ("x" * 200, "x" * 80),
    ],
)
def test_clean_title(raw: str | None, title: str | None) -> None:
    assert clean_title(raw) == title
