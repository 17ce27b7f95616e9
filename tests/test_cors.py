"""Cross-origin browser apps (``server.cors_origins``): preflights, the headers on every response
of /v1/* and /api/chat, and a real page on another origin calling the proxy from Chromium."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser

from chatproxy.appkeys import STORE
from chatproxy.errors import SettingsError
from chatproxy.server import ProxyServer
from chatproxy.settings import load_settings
from chatproxy.testing import FakeUpstream, Reply
from tests.util import all_messages

APP = "http://localhost:3000"
PREFLIGHT = {
    "Origin": APP,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-chat-id",
}
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def test_without_origins_configured_no_cors_headers_are_sent(
    proxy: ProxyServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{proxy.url}/chat/completions", json=BODY, headers={"Origin": APP}) as r:
        assert r.status == 200
        assert "Access-Control-Allow-Origin" not in r.headers
    async with http.options(f"{proxy.url}/chat/completions", headers=PREFLIGHT) as r:
        assert r.status >= 400  # forwarded upstream, which has no such route: the browser refuses
        assert "Access-Control-Allow-Origin" not in r.headers


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models", "/api/chat"])
async def test_a_preflight_from_an_allowed_origin_is_answered_without_a_key(
    start_proxy, http: aiohttp.ClientSession, upstream: FakeUpstream, path: str
) -> None:
    proxy = await start_proxy(**{"server.cors_origins": [APP], "auth.mode": "keys"})
    base = proxy.url.removesuffix("/v1")
    async with http.options(base + path, headers=PREFLIGHT) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == APP
        assert (
            r.headers["Access-Control-Allow-Headers"] == PREFLIGHT["Access-Control-Request-Headers"]
        )
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert r.headers["Vary"] == "Origin"
    assert upstream.requests == []  # answered by the proxy, never forwarded


async def test_a_preflight_from_another_origin_gets_no_permission(
    start_proxy, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"server.cors_origins": [APP]})
    headers = {**PREFLIGHT, "Origin": "https://evil.example"}
    async with http.options(f"{proxy.url}/chat/completions", headers=headers) as r:
        assert r.status == 204
        assert "Access-Control-Allow-Origin" not in r.headers


async def test_responses_and_errors_carry_the_headers_a_page_needs(
    start_proxy, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"server.cors_origins": [APP], "auth.mode": "keys"})
    async with http.post(f"{proxy.url}/chat/completions", json=BODY, headers={"Origin": APP}) as r:
        assert r.status == 401  # the page can read why
        assert r.headers["Access-Control-Allow-Origin"] == APP
        assert "X-Chat-Id" in r.headers["Access-Control-Expose-Headers"]
    async with http.post(
        f"{proxy.url}/chat/completions", json=BODY, headers={"Origin": "https://evil.example"}
    ) as r:
        assert "Access-Control-Allow-Origin" not in r.headers


def test_an_origin_that_is_not_one_stops_start_up() -> None:
    with pytest.raises(SettingsError, match=r"server\.cors_origins"):
        load_settings(None, env={}, overrides={"server.cors_origins": ["localhost:3000/"]})
    env = {"CHATPROXY_SERVER__CORS_ORIGINS": "http://localhost:3000, https://app.example.com"}
    assert load_settings(None, env=env).server.cors_origins == [APP, "https://app.example.com"]


@pytest.fixture
async def app_page() -> AsyncIterator[str]:
    """A page's origin: a tiny server on another port than the proxy's."""

    async def index(_: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>app</title>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    server = TestServer(app, host="localhost")
    await server.start_server()
    yield f"http://localhost:{server.port}"
    await server.close()


@pytest.mark.parametrize("allowed", [True, False])
async def test_a_page_on_another_origin_streams_an_answer_only_when_its_origin_is_allowed(
    start_proxy, upstream: FakeUpstream, browser: Browser, app_page: str, allowed: bool
) -> None:
    proxy = await start_proxy(**{"server.cors_origins": [app_page] if allowed else [APP]})
    upstream.enqueue(Reply(content="Hello from across origins"))
    page = await browser.new_page()
    await page.goto(app_page)
    result = await page.evaluate(
        """async (url) => {
            try {
                const r = await fetch(url, {
                    method: "POST",
                    headers: {"Content-Type": "application/json", "X-Chat-Id": "cors-chat"},
                    body: JSON.stringify({model: "m", stream: true,
                                          messages: [{role: "user", content: "hi"}]}),
                });
                return {status: r.status, chat: r.headers.get("X-Chat-Id"), text: await r.text()};
            } catch (e) {
                return {error: String(e)};
            }
        }""",
        f"{proxy.url}/chat/completions",
    )
    await page.close()
    if allowed:
        assert result["status"] == 200
        assert result["chat"] == "cors-chat"
        assert "Hello" in result["text"] and result["text"].endswith("data: [DONE]\n\n")
        assert len(await all_messages(proxy.app[STORE])) == 2
    else:
        assert "Failed to fetch" in result["error"]
        # The preflight was refused: the request itself was never sent.
        assert upstream.requests == []
        assert await all_messages(proxy.app[STORE]) == []
