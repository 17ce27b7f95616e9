"""A pass-through request never leaves the upstream's base path: every way of spelling a dot
segment or a slash is a 404 in OpenAI's shape that the upstream never sees, and plain paths
still reach it, below its base path, with the proxy's key."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from chatproxy.server import ProxyServer
from chatproxy.testing import FakeUpstream
from tests.conftest import StartProxy
from tests.test_http_parser import answered, raw_exchange

REFUSED = (
    404,
    "application/json",
    {
        "error": {
            "message": "unknown API path",
            "type": "invalid_request_error",
            "param": None,
            "code": "not_found",
        }
    },
)

# Request targets as they go on the wire: nothing normalises them on the way.
ESCAPES = [
    "/v1/../admin",
    "/v1/..",
    "/v1/./models",
    "/v1/models/../../admin",
    "/v1/models/..",
    "/v1/%2e%2e/admin",
    "/v1/%2E%2E/admin",
    "/v1/.%2e/admin",
    "/v1/%2e./admin",
    "/v1/%2e/models",
    "/v1/..%2fadmin",
    "/v1/..%2Fadmin",
    "/v1/%2e%2e%2fadmin",
    "/v1/models%2f..%2f..%2fadmin",
    "/v1/%252e%252e/admin",
    "/v1/%252e%252e%252fadmin",
    "/v1/%25252e%25252e/admin",
    "/v1/..%5cadmin",
    "/v1/..%5Cadmin",
    "/v1/..\\admin",
    "/v1/\\..\\admin",
    "/v1/%c0%ae%c0%ae/admin",
    "/v1/..%c0%afadmin",
    "/v1/%e0%80%ae%e0%80%ae/admin",
    "/v1/%u002e%u002e/admin",
    "/v1/%ef%bc%8e%ef%bc%8e/admin",
    "/v1/models%ef%bc%8f..%ef%bc%8fadmin",
    "/v1/..;/admin",
    "/v1/..%3b/admin",
    "/v1/..%20/admin",
    "/v1/...",
    "/v1//admin",
    "/v1/models/%00",
    "/v1/models%00.json",
    "/v1/models/a%0d%0aX-Injected:%20x",
    "/v1/models/%0a",
    "/v1/models/%7f",
    "/v1/models/%zz",
    "/v1/models/%2",
    "/%761/../admin",
    "http://upstream.example/v1/../admin",
]


NO_IP_LIMIT = {"limits.ip_rate": "0"}  # the battery is more requests than the default burst


async def refusals(proxy: ProxyServer) -> dict[str, tuple]:
    """What the proxy answers to each of :data:`ESCAPES`, sent over a raw socket."""
    answers = {}
    for target in ESCAPES:
        raw = (
            f"GET {target} HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer sk-client\r\n"
            "Connection: close\r\n\r\n"
        )
        answers[target] = answered(*await raw_exchange(proxy.port, raw.encode()))
    return answers


@pytest.fixture
def db_url(db_path: Path) -> str:
    """No store is involved here: SQLite only, whatever CHATPROXY_TEST_POSTGRES_URL says."""
    return f"sqlite://{db_path}"


async def test_paths_escaping_v1_are_404_and_never_sent_upstream(
    start_proxy: StartProxy,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="chatproxy.access")
    proxy = await start_proxy(**NO_IP_LIMIT)
    assert await refusals(proxy) == dict.fromkeys(ESCAPES, REFUSED)
    assert upstream.requests == []
    # One access-log line each, with the path as sent: an encoded CR LF forges no line.
    access = [r.getMessage() for r in caplog.records if r.name == "chatproxy.access"]
    assert len(access) == len(ESCAPES)
    assert [line for line in access if "\r" in line or "\n" in line] == []
    assert any(" /v1/models/a%0d%0aX-Injected:%20x status=404 " in line for line in access)
    # The same proxy does forward a plain path: the fake records what it receives.
    async with http.get(f"{proxy.url}/models") as resp:
        assert resp.status == 200
    assert [(r.method, r.path) for r in upstream.requests] == [("GET", "/v1/models")]


async def test_paths_escaping_a_deeper_base_path_are_404_and_never_sent_upstream(
    start_proxy: StartProxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = upstream.url.removesuffix("/v1") + "/openai/v1"
    proxy = await start_proxy(**{"upstream.url": base}, **NO_IP_LIMIT)
    assert await refusals(proxy) == dict.fromkeys(ESCAPES, REFUSED)
    assert upstream.requests == []
    async with http.get(f"{proxy.url}/models", headers={"Authorization": "Bearer x"}) as resp:
        assert resp.status == 404  # the fake serves nothing under /openai: it answers itself
        assert (await resp.json())["error"]["message"] == "Invalid URL (GET /openai/v1/models)"
    (request,) = upstream.requests
    assert request.path == "/openai/v1/models"
    assert request.headers["Authorization"] == "Bearer sk-upstream-secret"


@dataclass
class WireUpstream:
    """An upstream that records each request target exactly as it came off the wire."""

    url: str = ""
    seen: list[tuple[str, str, str]] = field(default_factory=list)  # method, target, auth


@pytest.fixture
async def wire() -> AsyncIterator[WireUpstream]:
    recorder = WireUpstream()

    async def record(request: web.Request) -> web.Response:
        await request.read()
        auth = request.headers.get("Authorization", "")
        recorder.seen.append((request.method, request.raw_path, auth))
        return web.json_response({"object": "list", "data": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:(?s:.*)}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    recorder.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield recorder
    await runner.cleanup()


# (what the client sends after /v1, what the upstream receives after its base path)
PLAIN = [
    ("/models", "/models"),
    ("/models/gpt-4o", "/models/gpt-4o"),
    ("/models/llama3:8b", "/models/llama3:8b"),
    ("/models/llama3:8b?x=1&y=2", "/models/llama3:8b?x=1&y=2"),
    ("/models/meta-llama/Llama-3.1-8B", "/models/meta-llama/Llama-3.1-8B"),
    ("/files/file-abc/content", "/files/file-abc/content"),
    ("/models/a%3Fb%20c", "/models/a%3Fb%20c"),  # an encoded "?" stays in the path
    ("/models/%41bc", "/models/Abc"),  # one canonical encoding
    ("/models/", "/models/"),
    ("/", "/"),
]


@pytest.mark.parametrize("base", ["/v1", "/openai/v1"])
async def test_plain_paths_reach_the_upstream_below_its_base_path_with_the_proxys_key(
    start_proxy: StartProxy, wire: WireUpstream, http: aiohttp.ClientSession, base: str
) -> None:
    proxy = await start_proxy(**{"upstream.url": wire.url + base})
    for sent, _ in PLAIN:
        url = URL(proxy.url + sent, encoded=True)
        async with http.get(url, headers={"Authorization": "Bearer sk-client"}) as resp:
            assert resp.status == 200, sent
    async with http.post(f"{proxy.url}/embeddings", json={"model": "m", "input": "x"}) as resp:
        assert resp.status == 200
    expected = [("GET", base + received, "Bearer sk-upstream-secret") for _, received in PLAIN]
    expected.append(("POST", base + "/embeddings", "Bearer sk-upstream-secret"))
    assert wire.seen == expected
