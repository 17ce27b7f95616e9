"""What the history browser needs from the public API, usable by any client: a chat exported as
a download (``GET /v1/conversations/{id}/export``), and a failed answer's error among
``/messages?all=true``."""

from __future__ import annotations

import aiohttp
import pytest

from chatproxy.appkeys import STORE
from chatproxy.export import export_chat, read_documents
from chatproxy.server import ProxyServer
from chatproxy.testing import FakeUpstream, Reply
from tests.test_conversations_api import QUESTION, TEAM, ask, assert_error, call, sdk


@pytest.fixture
async def team(start_proxy) -> ProxyServer:
    """Two users (``X-User-Id`` from a trusted gateway)."""
    return await start_proxy(**TEAM)


async def download(
    http: aiohttp.ClientSession, url: str, user: str = "alice"
) -> tuple[int, aiohttp.typedefs.LooseHeaders, bytes]:
    async with http.get(url, headers={"X-User-Id": user}) as resp:
        return resp.status, resp.headers, await resp.read()


async def test_export_downloads_what_chatproxy_export_writes(
    team: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.enqueue(Reply(content="Paris."), Reply(content="It is Paris, on the Seine."))
    async with sdk(team, "alice") as client:
        chat_id, first = await ask(client, [QUESTION])
        _, second = await ask(client, [QUESTION])  # a regenerated answer: a second branch
    store = team.app[STORE]
    url = f"{team.url}/conversations/{chat_id}/export"

    for query in ("", "?format=json"):
        status, headers, body = await download(http, url + query)
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        assert headers["Content-Disposition"] == f'attachment; filename="{chat_id}.json"'
        assert body == await export_chat(store, chat_id, "json")
        [document] = read_documents(body)  # what `chatproxy import` reads
        assert {first, second} <= {m["id"] for m in document["messages"]}

    status, headers, body = await download(http, url + "?format=markdown")
    assert status == 200
    assert headers["Content-Type"] == "text/markdown; charset=utf-8"
    assert headers["Content-Disposition"] == f'attachment; filename="{chat_id}.md"'
    assert body == await export_chat(store, chat_id, "markdown")
    # The active branch only.
    assert b"It is Paris, on the Seine." in body and b"Paris.\n" not in body


async def test_export_follows_the_read_rules_and_refuses_bad_input(
    team: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    async with sdk(team, "alice") as client:
        chat_id, _ = await ask(client, [QUESTION])
    base = f"{team.url}/conversations"
    url = f"{base}/{chat_id}/export"

    # Another user's private chat does not exist; a public one may be read, and exported as
    # Markdown, but the lossless file (parameters, metadata) stays its owner's.
    status, body = await call(http, "GET", url, user="bob")
    assert_error(status, body, 404, "chat_not_found")
    await call(http, "POST", f"{base}/{chat_id}", user="alice", json={"visibility": "public"})
    status, body = await call(http, "GET", url, user="bob")
    assert_error(status, body, 403, "permission_denied")
    status, _, body = await download(http, f"{url}?format=markdown", user="bob")
    assert status == 200 and b"## User\n\nWhat is the capital of France?" in body
    status, _, body = await download(http, url, user="alice")
    assert status == 200 and read_documents(body)[0]["chat"]["id"] == chat_id

    cases = [
        (f"{url}?format=xml", 400, "invalid_value", "format"),
        (f"{url}?format=JSON", 400, "invalid_value", "format"),
        (f"{url}?format=", 400, "invalid_value", "format"),
        (f"{base}/chat_{'x' * 24}/export", 404, "chat_not_found", None),
        (f"{base}/{'c' * 129}/export", 400, "invalid_chat_id", "chat_id"),
        (f"{base}/bad!id/export", 400, "invalid_chat_id", "chat_id"),
    ]
    for target, expected, code, param in cases:
        status, body = await call(http, "GET", target, user="alice")
        assert_error(status, body, expected, code, param)
    status, body = await call(http, "POST", url, user="alice")
    assert_error(status, body, 405, "method_not_allowed")
    # Nothing changed.
    status, body = await call(http, "GET", f"{base}/{chat_id}", user="alice")
    assert (status, body["visibility"], body["message_count"]) == (200, "public", 2)


async def test_every_branch_listing_carries_a_failed_answers_error(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.enqueue(Reply(chunks=["part0 ", "part1 ", "part2 "], drop_after=2))
    body = {"model": "m", "messages": [QUESTION], "stream": True}
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        chat_id = resp.headers["X-Chat-Id"]
        await resp.read()
    url = f"{proxy.url}/conversations/{chat_id}/messages?all=true"
    status, listing = await call(http, "GET", url)
    assert status == 200
    question, answer = listing["data"]
    assert answer["status"] == "failed" and answer["content"] == "part0 "
    assert answer["error"]["code"] == "upstream_disconnected" and answer["error"]["message"]
    assert question["status"] == "completed" and "error" not in question
