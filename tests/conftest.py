"""Shared fixtures: a scriptable fake upstream and the proxy, each on a real port."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import openai
import pytest

from chatproxy.appkeys import STORE
from chatproxy.server import ProxyServer
from chatproxy.settings import Settings, load_settings
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream
from tests.browser import browser, chromium  # noqa: F401 (fixtures for the browser tests)
from tests.plugin_util import example_plugin, example_plugin_dir  # noqa: F401 (fixtures)

StartProxy = Callable[..., Awaitable[ProxyServer]]
pytest_plugins = ["tests.fake_fixtures"]  # the fake upstream's own tests: fake, sdk


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


POSTGRES_URL = os.environ.get("CHATPROXY_TEST_POSTGRES_URL", "")


REDIS_URL = os.environ.get("CHATPROXY_TEST_REDIS_URL", "")
needs_redis = pytest.mark.skipif(
    not REDIS_URL, reason="set CHATPROXY_TEST_REDIS_URL to run the Redis tests (.ci/run does)"
)
needs_postgres = pytest.mark.skipif(
    not POSTGRES_URL,
    reason="set CHATPROXY_TEST_POSTGRES_URL to run the PostgreSQL tests (.ci/run does)",
)


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A fresh key prefix in the test Redis; its keys are deleted afterwards."""
    import redis.asyncio as aioredis

    assert REDIS_URL
    prefix = f"chatproxy-test-{secrets.token_hex(6)}:"
    yield prefix
    client = aioredis.from_url(REDIS_URL)
    try:
        async for key in client.scan_iter(match=f"{prefix}*"):
            await client.delete(key)
    finally:
        await client.aclose()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "chatproxy.db"


@contextlib.asynccontextmanager
async def fresh_postgres() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database on the test server; dropped afterwards."""
    import asyncpg
    from tortoise.backends.base.executor import EXECUTOR_CACHE

    name = f"chatproxy_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(POSTGRES_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    # Tortoise caches each model's statements by connection name, whatever the database; a
    # process normally has one database, this one has both, one after the other.
    EXECUTOR_CACHE.clear()
    try:
        yield urlunsplit(urlsplit(POSTGRES_URL)._replace(path=f"/{name}"))
    finally:
        EXECUTOR_CACHE.clear()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def fresh_db(db_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """A second empty store of the same kind as ``db_url``."""
    if db_url.startswith("sqlite"):
        yield f"sqlite://{tmp_path / 'second.db'}"
        return
    async with fresh_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"] if POSTGRES_URL else ["sqlite"])
async def db_url(request: pytest.FixtureRequest, db_path: Path) -> AsyncIterator[str]:
    """The store of a test: a fresh SQLite file, and (with CHATPROXY_TEST_POSTGRES_URL set, as
    .ci/run does) a fresh PostgreSQL database too: every test using it runs on both."""
    if request.param == "sqlite":
        yield f"sqlite://{db_path}"
        return
    async with fresh_postgres() as url:
        yield url


@pytest.fixture
def make_settings(db_url: str, upstream: FakeUpstream) -> Callable[..., Settings]:
    """Settings for a test: real SQLite file, the fake upstream, any free port."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "server.port": 0,
            "upstream.url": upstream.url,
            "upstream.api_key": "sk-upstream-secret",
            "storage.url": db_url,
            "storage.checkpoint_interval": 0.05,
            "upstream.retries": 0,
        }
        values.update(overrides)
        return load_settings(None, env={}, overrides=values)

    return make


@pytest.fixture
async def start_proxy(make_settings: Callable[..., Settings]) -> AsyncIterator[StartProxy]:
    """Start a proxy with settings overrides (``"chats.on_disconnect": "abort"``)."""
    servers: list[ProxyServer] = []

    async def start(**overrides: Any) -> ProxyServer:
        server = ProxyServer(make_settings(**overrides))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.stop()


@pytest.fixture
async def proxy(start_proxy: StartProxy) -> ProxyServer:
    return await start_proxy()


@pytest.fixture
def store(proxy: ProxyServer) -> Store:
    assert proxy.app is not None
    return proxy.app[STORE]


@pytest.fixture
async def client(proxy: ProxyServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=proxy.url, api_key="sk-client", max_retries=0) as c:
        yield c


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
