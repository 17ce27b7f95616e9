"""Every other /v1/* request is forwarded unchanged and not stored; health endpoints."""

from __future__ import annotations

import aiohttp
import openai

from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream
from tests.util import all_messages


async def test_models_list_is_passed_through_with_the_sdk(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, store: Store
) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == ["fake-model", "fake-reasoner"]
    request = upstream.requests[-1]
    assert (request.method, request.path) == ("GET", "/v1/models")
    assert request.headers["Authorization"] == "Bearer sk-upstream-secret"
    assert await all_messages(store) == []


async def test_embeddings_are_passed_through_unchanged(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, store: Store
) -> None:
    via_proxy = await client.embeddings.create(model="emb", input=["a", "b"])
    async with openai.AsyncOpenAI(base_url=upstream.url, api_key="x") as direct:
        expected = await direct.embeddings.create(model="emb", input=["a", "b"])
    assert [e.embedding for e in via_proxy.data] == [e.embedding for e in expected.data]
    assert upstream.requests[-2].body == upstream.requests[-1].body
    assert await all_messages(store) == []


async def test_query_string_method_body_and_status_are_forwarded(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.delete(
        f"{proxy.url}/files/file-1?purpose=x&limit=2", data=b"raw body", headers={"X-Custom": "1"}
    ) as resp:
        assert resp.status == 404  # the fake does not know /v1/files
        assert (await resp.json())["error"]["message"]
    request = upstream.requests[-1]
    assert (request.method, request.path, request.query) == (
        "DELETE",
        "/v1/files/file-1",
        {"purpose": "x", "limit": "2"},
    )
    assert request.body == b"raw body"
    assert request.headers["X-Custom"] == "1"


async def test_pass_through_to_an_unreachable_upstream_is_a_502(
    start_proxy, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"upstream.url": "http://127.0.0.1:9/v1"})
    async with http.get(f"{proxy.url}/models") as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_unreachable"


async def test_health_and_readiness(proxy: ProxyServer, http: aiohttp.ClientSession) -> None:
    base = proxy.url.removesuffix("/v1")
    async with http.get(f"{base}/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
    async with http.get(f"{base}/readyz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok", "store": True}
