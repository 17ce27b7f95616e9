"""Limits end to end (SPEC §6): the per-IP token bucket, per-user daily quotas, their headers,
and the Redis backend shared by two instances."""

from __future__ import annotations

import aiohttp
import pytest

from chatproxy.appkeys import LIMITS, STORE
from chatproxy.auth import LOCAL_USER, new_api_key
from chatproxy.errors import SettingsError
from chatproxy.server import ProxyServer
from chatproxy.settings import load_settings
from chatproxy.testing import FakeUpstream, Reply
from tests.conftest import REDIS_URL, needs_redis
from tests.util import all_messages

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
IP_LIMIT = {"limits.ip_rate": "10/minute", "limits.ip_burst": 3}


async def get_models(http: aiohttp.ClientSession, proxy: ProxyServer, **headers: str) -> int:
    async with http.get(f"{proxy.url}/models", headers=headers) as resp:
        await resp.read()
        return resp.status


async def test_ip_limit_lets_exactly_burst_requests_through_then_429_with_headers(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**IP_LIMIT)
    for remaining in (2, 1, 0):
        async with http.get(f"{proxy.url}/models") as resp:
            assert resp.status == 200
            # The configured policy (10 a minute); what is left of the burst of 3.
            assert resp.headers["x-ratelimit-limit-requests"] == "10"
            assert resp.headers["x-ratelimit-remaining-requests"] == str(remaining)
            assert resp.headers["RateLimit-Policy"] == '"ip";q=10;w=60'
            assert resp.headers["RateLimit"].startswith(f'"ip";r={remaining};t=')
    async with http.post(f"{proxy.url}/chat/completions", json=BODY) as resp:
        assert resp.status == 429
        body = await resp.json()
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert body["error"]["type"] == "rate_limit_error"
        assert 5 <= int(resp.headers["Retry-After"]) <= 6  # one token every 6 s
        assert resp.headers["x-ratelimit-remaining-requests"] == "0"
        assert resp.headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-should-retry" not in resp.headers
    assert await all_messages(proxy.app[STORE]) == []  # nothing stored for a refused request
    assert len(upstream.requests) == 3


async def test_health_endpoints_are_not_limited(start_proxy, http: aiohttp.ClientSession) -> None:
    proxy = await start_proxy(**{"limits.ip_rate": "1/minute", "limits.ip_burst": 1})
    base = proxy.url.removesuffix("/v1")
    for _ in range(5):
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200


async def test_a_spoofed_x_forwarded_for_from_an_untrusted_peer_does_not_escape_the_limit(
    start_proxy, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**IP_LIMIT)
    statuses = [
        await get_models(http, proxy, **{"X-Forwarded-For": f"203.0.113.{i}"}) for i in range(5)
    ]
    assert statuses == [200, 200, 200, 429, 429]


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket(
    start_proxy, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**IP_LIMIT, **{"server.trusted_proxies": ["127.0.0.0/8"]})
    for client in ("198.51.100.1", "198.51.100.2"):
        statuses = [
            await get_models(http, proxy, **{"X-Forwarded-For": f"{client}, 127.0.0.1"})
            for _ in range(4)
        ]
        assert statuses == [200, 200, 200, 429]


async def test_daily_message_quota_refuses_the_next_message_and_stores_nothing(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"limits.tiers.free.messages_per_day": 2})
    store = proxy.app[STORE]
    for remaining in (1, 0):
        async with http.post(f"{proxy.url}/chat/completions", json=BODY) as resp:
            assert resp.status == 200
            assert resp.headers["x-ratelimit-remaining-requests"] == str(remaining)
    stored = len(await all_messages(store))
    body = {"model": "m", "messages": [{"role": "user", "content": "one more, please"}]}
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        assert resp.status == 429
        error = (await resp.json())["error"]
        assert error["code"] == "daily_limit_exceeded"
        assert resp.headers["x-should-retry"] == "false"
        assert int(resp.headers["Retry-After"]) > 86_000  # the oldest answer is seconds old
        assert resp.headers["RateLimit-Policy"] == '"daily";q=2;w=86400'
    assert len(await all_messages(store)) == stored
    assert "one more, please" not in [m.text for m in await all_messages(store)]
    assert len(upstream.chat_requests) == 2


async def test_daily_quota_holds_across_a_restart(
    make_settings, http: aiohttp.ClientSession
) -> None:
    settings = make_settings(**{"limits.tiers.free.messages_per_day": 1})
    for expected in (200, 429):
        proxy = ProxyServer(settings)
        await proxy.start()
        try:
            async with http.post(f"{proxy.url}/chat/completions", json=BODY) as resp:
                assert resp.status == expected
        finally:
            await proxy.stop()


async def test_daily_token_quota(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(
        **{"limits.tiers.free.messages_per_day": 0, "limits.tiers.free.tokens_per_day": 100}
    )
    usage = {"prompt_tokens": 40, "completion_tokens": 70, "total_tokens": 110}
    upstream.enqueue(Reply(content="long answer", usage=usage))
    async with http.post(f"{proxy.url}/chat/completions", json=BODY) as resp:
        assert resp.status == 200
        assert resp.headers["x-ratelimit-limit-tokens"] == "100"
        assert resp.headers["x-ratelimit-remaining-tokens"] == "100"
    async with http.post(f"{proxy.url}/chat/completions", json=BODY) as resp:
        assert resp.status == 429
        assert (await resp.json())["error"]["code"] == "daily_limit_exceeded"
        assert resp.headers["x-ratelimit-remaining-tokens"] == "0"
        assert resp.headers["x-should-retry"] == "false"


async def test_tiers_come_from_the_users_key(start_proxy, http: aiohttp.ClientSession) -> None:
    proxy = await start_proxy(
        **{
            "auth.mode": "keys",
            "limits.tiers.free.messages_per_day": 1,
            "limits.tiers.pro.messages_per_day": 3,
        }
    )
    store = proxy.app[STORE]
    keys = {}
    for user, tier in (("fay", None), ("gus", "pro")):
        key_id, key, key_hash, prefix = new_api_key()
        await store.add_api_key(key_id, (user, user, tier), key_hash, prefix)
        keys[user] = {"Authorization": f"Bearer {key}"}
    statuses = {}
    for user, headers in keys.items():
        statuses[user] = []
        for i in range(4):
            body = {"model": "m", "messages": [{"role": "user", "content": f"{user} {i}"}]}
            async with http.post(f"{proxy.url}/chat/completions", json=body, headers=headers) as r:
                statuses[user].append(r.status)
    assert statuses == {"fay": [200, 429, 429, 429], "gus": [200, 200, 200, 429]}


@needs_redis
async def test_two_instances_share_one_ip_bucket_through_redis(
    start_proxy, redis_prefix: str, http: aiohttp.ClientSession
) -> None:
    redis = {"redis.url": REDIS_URL, "redis.prefix": redis_prefix}
    a = await start_proxy(**IP_LIMIT, **redis)
    b = await start_proxy(**IP_LIMIT, **redis)
    statuses = [await get_models(http, proxy) for proxy in (a, b, a, b, a)]
    assert statuses == [200, 200, 200, 429, 429]


@needs_redis
async def test_redis_unreachable_the_proxy_keeps_serving_and_readyz_reports_it(
    start_proxy, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start_proxy(**IP_LIMIT, **{"redis.url": "redis://127.0.0.1:9/0"})
    statuses = [await get_models(http, proxy) for _ in range(5)]
    assert statuses == [200] * 5  # fails open: the bucket cannot be consulted
    base = proxy.url.removesuffix("/v1")
    async with http.get(f"{base}/readyz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "degraded", "store": True, "redis": False}
    warnings = [
        r for r in caplog.records if r.name == "chatproxy.limits" and r.levelname == "WARNING"
    ]
    assert len(warnings) == 1


async def test_auth_mode_none_has_no_daily_quota_unless_one_is_configured(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    # The built-in free tier (200 a day) does not lock a local user out.
    proxy = await start_proxy(**{"limits.ip_rate": "0"})
    async with http.post(f"{proxy.url}/chat/completions", json=BODY) as resp:
        assert resp.status == 200
        assert "RateLimit-Policy" not in resp.headers
    assert await proxy.app[LIMITS].check_daily(LOCAL_USER) == (None, {})


async def test_a_configured_quota_applies_in_auth_mode_none_even_at_the_default_value(
    make_settings,
) -> None:
    configured = make_settings(**{"limits.tiers.free.messages_per_day": 200})
    assert configured.limits.quota_tiers == frozenset({"free"})
    assert make_settings().limits.quota_tiers == frozenset()
    env = load_settings(None, env={"CHATPROXY_LIMITS__TIERS__FREE__TOKENS_PER_DAY": "5"})
    assert env.limits.quota_tiers == frozenset({"free"})


def test_the_loader_never_takes_the_configured_tiers_as_a_key() -> None:
    with pytest.raises(SettingsError, match=r"limits\.quota_tiers"):
        load_settings(None, env={}, overrides={"limits.quota_tiers": ["free"]})


async def test_the_built_in_daily_quota_applies_with_proxy_keys(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"limits.ip_rate": "0", "auth.mode": "keys"})
    key_id, key, key_hash, prefix = new_api_key()
    await proxy.app[STORE].add_api_key(key_id, ("ada", "ada", None), key_hash, prefix)
    headers = {"Authorization": f"Bearer {key}"}
    async with http.post(f"{proxy.url}/chat/completions", json=BODY, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["RateLimit-Policy"] == '"daily";q=200;w=86400'
