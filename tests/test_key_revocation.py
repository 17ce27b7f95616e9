"""Revoking a proxy key (`chatproxy keys revoke`) on running proxies (issue 13, item 7).

With ``redis.url`` the CLI announces the revocation and every proxy drops the key from its
cache at once, however long ``auth.key_cache_seconds`` is. Without Redis a proxy learns of it
when its cached entry expires: the window is ``auth.key_cache_seconds``, as documented.

The CLI runs through click's ``CliRunner`` in a worker thread (it runs its own event loop),
against the proxy's own database, while the proxy serves. Each test stops the proxies'
listeners itself (``Authenticator.close``, idempotent), so that none outlives its test.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner, Result

from chatproxy.appkeys import AUTH, STORE
from chatproxy.auth import new_api_key, revocation_channel
from chatproxy.cli import main
from chatproxy.server import ProxyServer
from chatproxy.testing import FakeUpstream
from tests.conftest import REDIS_URL, StartProxy, needs_redis

LONG_CACHE = 3600.0  # an hour: nothing in these tests expires by itself
POLL = 0.02
POLLS = 250  # at most 5 s for a pub/sub message to arrive


def keys_mode(**extra: Any) -> dict[str, Any]:
    return {
        "auth.mode": "keys",
        "auth.key_cache_seconds": LONG_CACHE,
        "limits.ip_rate": "0",  # polling must never meet the IP limit
        **extra,
    }


def redis_settings(prefix: str, url: str = REDIS_URL) -> dict[str, Any]:
    return {"redis.url": url, "redis.prefix": prefix}


async def cli(*args: str, env: Mapping[str, str] | None = None) -> Result:
    """The CLI, configured as the proxies are (the same cache time; Redis when ``env`` says)."""
    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("CHATPROXY_")}
    clean["CHATPROXY_AUTH__KEY_CACHE_SECONDS"] = str(LONG_CACHE)
    clean.update(env or {})
    return await asyncio.to_thread(
        CliRunner().invoke, main, list(args), env=clean, catch_exceptions=True
    )


def redis_env(prefix: str, url: str = REDIS_URL) -> dict[str, str]:
    return {"CHATPROXY_REDIS__URL": url, "CHATPROXY_REDIS__PREFIX": prefix}


async def add_key(proxy: ProxyServer, user: str = "alice") -> tuple[str, str, str]:
    """A new key of ``user`` in the proxy's store: ``(id, key, prefix)``."""
    key_id, key, key_hash, prefix = new_api_key()
    await proxy.app[STORE].add_api_key(key_id, (user, user, None), key_hash, prefix)
    return key_id, key, prefix


async def models(http: aiohttp.ClientSession, proxy: ProxyServer, key: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    async with http.get(f"{proxy.url}/models", headers=headers) as resp:
        await resp.read()
        return resp.status


async def first_refusal(http: aiohttp.ClientSession, proxy: ProxyServer, key: str) -> int:
    """Ask until the key is refused, at most POLLS times: the status of the last answer."""
    status = 0
    for _ in range(POLLS):
        status = await models(http, proxy, key)
        if status == 401:
            break
        await asyncio.sleep(POLL)
    return status


def models_calls(upstream: FakeUpstream) -> int:
    return sum(1 for r in upstream.requests if r.path.endswith("/models"))


@needs_redis
async def test_a_key_revoked_with_the_cli_is_refused_at_once_through_redis(
    start_proxy: StartProxy,
    upstream: FakeUpstream,
    db_url: str,
    redis_prefix: str,
    http: aiohttp.ClientSession,
) -> None:
    proxy = await start_proxy(**keys_mode(**redis_settings(redis_prefix)))
    try:
        key_id, key, _ = await add_key(proxy)
        _, other_key, _ = await add_key(proxy, "bob")
        assert await models(http, proxy, key) == 200  # cached now, for an hour
        assert await models(http, proxy, other_key) == 200

        result = await cli("keys", "revoke", key, "--db", db_url, env=redis_env(redis_prefix))
        assert result.exit_code == 0, (result.output, result.exception)
        assert result.stdout.splitlines()[0].startswith(f"Revoked {key_id} (")
        assert "told through Redis" in result.stdout
        assert key not in result.output

        assert await first_refusal(http, proxy, key) == 401
        forwarded = models_calls(upstream)
        assert await models(http, proxy, key) == 401
        # A refused request never reaches the upstream; other keys are not affected.
        assert models_calls(upstream) == forwarded
        assert await models(http, proxy, other_key) == 200
    finally:
        await proxy.app[AUTH].close()


@needs_redis
async def test_every_running_proxy_hears_the_revocation(
    start_proxy: StartProxy, db_url: str, redis_prefix: str, http: aiohttp.ClientSession
) -> None:
    a = await start_proxy(**keys_mode(**redis_settings(redis_prefix)))
    b = await start_proxy(**keys_mode(**redis_settings(redis_prefix)))
    try:
        key_id, key, prefix = await add_key(a)
        assert [await models(http, p, key) for p in (a, b)] == [200, 200]
        # Revoked by the prefix `keys list` prints, as an operator would copy it.
        result = await cli(
            "keys", "revoke", f"{prefix}...", "--db", db_url, env=redis_env(redis_prefix)
        )
        assert result.exit_code == 0, (result.output, result.exception)
        assert key_id in result.stdout
        assert [await first_refusal(http, p, key) for p in (a, b)] == [401, 401]
    finally:
        await a.app[AUTH].close()
        await b.app[AUTH].close()


@needs_redis
async def test_a_proxy_listens_again_after_losing_redis_and_forgets_what_it_cached(
    start_proxy: StartProxy,
    db_url: str,
    redis_prefix: str,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import redis.asyncio as aioredis

    proxy = await start_proxy(**keys_mode(**redis_settings(redis_prefix)))
    admin = aioredis.from_url(REDIS_URL)
    channel = revocation_channel(redis_prefix)
    try:
        _, key, _ = await add_key(proxy)
        assert await models(http, proxy, key) == 200
        # The listener's connection is cut, as when Redis restarts: a revocation announced
        # while it is away is lost, so the proxy forgets every cached key when it is back.
        name = f"{redis_prefix}key-revocations"
        clients = await admin.client_list()
        ids = [c["id"] for c in clients if c.get("name") == name]
        assert len(ids) == 1
        with caplog.at_level(logging.WARNING, logger="chatproxy.auth"):
            await admin.client_kill_filter(_id=ids[0])
            # Revoked while the proxy is not listening: only the store knows.
            result = await cli("keys", "revoke", key, "--db", db_url)
            assert result.exit_code == 0, (result.output, result.exception)
            for _ in range(POLLS):
                if caplog.text.count("listening for revoked keys on Redis again"):
                    break
                await asyncio.sleep(POLL)
        assert "cannot listen for revoked keys on Redis" in caplog.text
        assert "listening for revoked keys on Redis again" in caplog.text
        assert dict(await admin.pubsub_numsub(channel)) == {channel.encode(): 1}
        assert await models(http, proxy, key) == 401

        # And it hears revocations again.
        key_id, key, _ = await add_key(proxy, "bob")
        assert await models(http, proxy, key) == 200
        result = await cli("keys", "revoke", key_id, "--db", db_url, env=redis_env(redis_prefix))
        assert result.exit_code == 0, (result.output, result.exception)
        assert await first_refusal(http, proxy, key) == 401
    finally:
        await admin.aclose()
        await proxy.app[AUTH].close()


@needs_redis
async def test_an_unreachable_redis_neither_stops_the_proxy_nor_the_revocation(
    start_proxy: StartProxy,
    db_url: str,
    redis_prefix: str,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    nowhere = "redis://127.0.0.1:9/0"  # nothing listens on the discard port
    with caplog.at_level(logging.WARNING, logger="chatproxy.auth"):
        proxy = await start_proxy(**keys_mode(**redis_settings(redis_prefix, nowhere)))
    try:
        assert "cannot listen for revoked keys on Redis" in caplog.text
        assert "auth.key_cache_seconds" in caplog.text
        key_id, key, _ = await add_key(proxy)
        assert await models(http, proxy, key) == 200

        result = await cli(
            "keys", "revoke", key_id, "--db", db_url, env=redis_env(redis_prefix, nowhere)
        )
        # The key is revoked in the store (exit 0); that the proxies were not told is a
        # warning, one line on stderr, with the window that applies instead.
        assert result.exit_code == 0, (result.output, result.exception)
        assert result.stdout.startswith(f"Revoked {key_id} (")
        (warning,) = result.stderr.splitlines()
        assert warning.startswith("chatproxy: warning: ")
        assert "within auth.key_cache_seconds (3600 s)" in warning
        again = await cli("keys", "revoke", key_id, "--db", db_url)
        assert again.exit_code == 1
        assert again.stderr == f"chatproxy: {key_id} ({key[:11]}...) is already revoked\n"
    finally:
        await proxy.app[AUTH].close()


# -- without Redis: the cache window ------------------------------------------------------------


async def test_without_redis_a_revoked_key_works_until_its_cached_entry_expires(
    start_proxy: StartProxy, db_url: str, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**keys_mode())
    key_id, key, _ = await add_key(proxy)
    _, unused_key, _ = await add_key(proxy, "bob")
    assert await models(http, proxy, key) == 200

    result = await cli("keys", "revoke", key_id, "--db", db_url)
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.splitlines() == [
        f"Revoked {key_id} ({key[:11]}...).",
        "Running proxies stop accepting it within auth.key_cache_seconds (3600 s).",
    ]
    # The documented window: the entry this proxy cached stays until it expires ...
    assert await models(http, proxy, key) == 200
    # ... and a key it had not cached yet is read from the store, revoked at once.
    result = await cli("keys", "revoke", unused_key, "--db", db_url)
    assert result.exit_code == 0
    assert await models(http, proxy, unused_key) == 401


async def test_without_redis_a_zero_cache_time_makes_revocation_immediate(
    start_proxy: StartProxy, db_url: str, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**keys_mode(**{"auth.key_cache_seconds": 0}))
    key_id, key, _ = await add_key(proxy)
    assert await models(http, proxy, key) == 200
    result = await cli("keys", "revoke", key_id, "--db", db_url)
    assert result.exit_code == 0, (result.output, result.exception)
    assert await models(http, proxy, key) == 401
