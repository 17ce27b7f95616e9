"""Unit tests for chatproxy.limits: token buckets (in process and Redis), client IP, headers.

Redis tests use the Redis at ``CHATPROXY_TEST_REDIS_URL`` under a random key prefix, deleted
afterwards; the fail-open tests start (and kill) their own ``redis-server`` on a free port.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from chatproxy.limits.buckets import BucketResult, LocalBuckets, RedisBuckets
from chatproxy.limits.client_ip import client_ip, parse_trusted
from chatproxy.limits.headers import go_duration, rate_limit_headers, retry_after_header

REDIS_URL = os.environ.get("CHATPROXY_TEST_REDIS_URL", "")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

needs_redis = pytest.mark.skipif(
    not REDIS_URL, reason="set CHATPROXY_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379/0)"
)
needs_redis_server = pytest.mark.skipif(
    not Path(REDIS_SERVER).exists(), reason="redis-server binary not installed"
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- LocalBuckets -------------------------------------------------------------------------


async def test_fresh_bucket_allows_exactly_capacity_then_refuses() -> None:
    buckets = LocalBuckets(clock=FakeClock())
    results = [await buckets.take("ip", rate=2.0, capacity=3) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.remaining for r in results] == [2, 1, 0, 0]
    assert all(r.limit == 3 for r in results)
    assert [r.retry_after for r in results] == [0.0, 0.0, 0.0, 0.5]
    # reset_after = (capacity - tokens left) / rate
    assert [r.reset_after for r in results] == [0.5, 1.0, 1.5, 1.5]


async def test_retry_after_shrinks_with_elapsed_time() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock=clock)
    assert (await buckets.take("k", rate=1.0, capacity=1)).allowed
    clock.advance(0.25)
    refused = await buckets.take("k", rate=1.0, capacity=1)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.75)
    assert refused.reset_after == pytest.approx(0.75)
    clock.advance(0.75)
    assert (await buckets.take("k", rate=1.0, capacity=1)).allowed


async def test_tokens_refill_at_rate_up_to_capacity() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock=clock)
    for _ in range(5):
        await buckets.take("k", rate=10.0, capacity=5)
    clock.advance(0.25)  # 2.5 tokens back
    r = await buckets.take("k", rate=10.0, capacity=5)
    assert (r.allowed, r.remaining) == (True, 1)
    assert r.reset_after == pytest.approx(0.35)
    clock.advance(3600)  # capped at capacity, not 36,000 tokens
    r = await buckets.take("k", rate=10.0, capacity=5)
    assert (r.allowed, r.remaining) == (True, 4)


async def test_slow_rate_counts_a_whole_token_despite_float_error() -> None:
    clock = FakeClock(0.1)
    buckets = LocalBuckets(clock=clock)
    rate = 1 / 60  # "1/minute"
    await buckets.take("k", rate=rate, capacity=1)
    clock.advance(60.0)
    assert (await buckets.take("k", rate=rate, capacity=1)).allowed


async def test_keys_are_independent() -> None:
    buckets = LocalBuckets(clock=FakeClock())
    assert (await buckets.take("a", rate=1.0, capacity=1)).allowed
    assert not (await buckets.take("a", rate=1.0, capacity=1)).allowed
    assert (await buckets.take("b", rate=1.0, capacity=1)).allowed


async def test_clock_going_back_adds_no_tokens() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock=clock)
    await buckets.take("k", rate=1.0, capacity=1)
    clock.advance(-10)
    assert not (await buckets.take("k", rate=1.0, capacity=1)).allowed
    clock.advance(10.5)
    assert not (await buckets.take("k", rate=1.0, capacity=1)).allowed
    clock.advance(0.5)
    assert (await buckets.take("k", rate=1.0, capacity=1)).allowed


async def test_memory_bound_drops_full_buckets_first_then_least_recently_used() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock=clock, max_keys=10)
    for i in range(5):  # these refill completely within 1 s
        await buckets.take(f"fast{i}", rate=100.0, capacity=1)
    for i in range(5):
        await buckets.take(f"slow{i}", rate=0.001, capacity=1)
    clock.advance(1.0)
    await buckets.take("new", rate=0.001, capacity=1)
    assert len(buckets) == 6  # the five full buckets went, nothing else
    assert not (await buckets.take("slow0", rate=0.001, capacity=1)).allowed

    for i in range(5):
        await buckets.take(f"more{i}", rate=0.001, capacity=1)
    # 11 non-full buckets: least recently used dropped down to 9 (10% headroom).
    assert len(buckets) == 9
    # slow1 and slow2 were the least recently used: forgotten, so they start full again.
    assert (await buckets.take("slow1", rate=0.001, capacity=1)).allowed
    assert not (await buckets.take("slow0", rate=0.001, capacity=1)).allowed


async def test_invalid_rate_or_capacity_is_an_error() -> None:
    buckets = LocalBuckets()
    with pytest.raises(ValueError):
        await buckets.take("k", rate=0.0, capacity=1)
    with pytest.raises(ValueError):
        await buckets.take("k", rate=1.0, capacity=0)
    assert buckets.healthy
    await buckets.close()


# --- RedisBuckets against the shared test Redis ---------------------------------------------


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    if not REDIS_URL:
        pytest.skip("set CHATPROXY_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379/0)")
    value = f"chatproxy-test-{secrets.token_hex(6)}:"
    yield value
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{value}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def redis_buckets(prefix: str) -> AsyncIterator[RedisBuckets]:
    buckets = RedisBuckets(REDIS_URL, prefix=prefix)
    yield buckets
    await buckets.close()


@needs_redis
async def test_redis_fresh_bucket_allows_exactly_capacity(redis_buckets: RedisBuckets) -> None:
    results = [await redis_buckets.take("ip", rate=1.0, capacity=3) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.remaining for r in results] == [2, 1, 0, 0]
    assert all(r.limit == 3 for r in results)
    assert results[0].retry_after == 0.0
    # The refused one waits for the next token: 1/rate minus the few ms already elapsed.
    assert 0.8 < results[3].retry_after <= 1.0
    assert results[3].reset_after == pytest.approx(results[3].retry_after + 2.0)
    assert redis_buckets.healthy


@needs_redis
async def test_redis_refills_at_rate(redis_buckets: RedisBuckets) -> None:
    for _ in range(2):
        assert (await redis_buckets.take("k", rate=20.0, capacity=2)).allowed
    refused = await redis_buckets.take("k", rate=20.0, capacity=2)
    assert not refused.allowed
    assert 0.0 < refused.retry_after <= 0.05
    await asyncio.sleep(0.12)  # 2.4 tokens at 20/s, capped at 2
    r = await redis_buckets.take("k", rate=20.0, capacity=2)
    assert (r.allowed, r.remaining) == (True, 1)
    assert r.reset_after == pytest.approx(0.05, abs=0.01)


@needs_redis
async def test_redis_keys_are_independent_and_expire_when_full(
    redis_buckets: RedisBuckets, prefix: str
) -> None:
    assert (await redis_buckets.take("a", rate=2.0, capacity=1)).allowed
    assert not (await redis_buckets.take("a", rate=2.0, capacity=1)).allowed
    assert (await redis_buckets.take("b", rate=2.0, capacity=1)).allowed
    client = Redis.from_url(REDIS_URL)
    try:
        ttl = await client.pttl(f"{prefix}bucket:a")
        assert 0 < ttl <= 501  # gone once it would be full again: a fresh bucket is the same
    finally:
        await client.aclose()


@needs_redis
async def test_two_instances_share_one_bucket(prefix: str) -> None:
    one, two = RedisBuckets(REDIS_URL, prefix=prefix), RedisBuckets(REDIS_URL, prefix=prefix)
    try:
        takes = [one, two, one, two]
        results = [await b.take("shared", rate=0.01, capacity=3) for b in takes]
        assert [r.allowed for r in results] == [True, True, True, False]
        assert [r.remaining for r in results] == [2, 1, 0, 0]
    finally:
        await one.close()
        await two.close()


@needs_redis
async def test_redis_and_local_give_the_same_answers(redis_buckets: RedisBuckets) -> None:
    local = LocalBuckets()
    for _ in range(5):
        a = await local.take("k", rate=0.01, capacity=3)
        b = await redis_buckets.take("k", rate=0.01, capacity=3)
        assert (a.allowed, a.limit, a.remaining) == (b.allowed, b.limit, b.remaining)
        assert a.retry_after == pytest.approx(b.retry_after, abs=0.5)
        assert a.reset_after == pytest.approx(b.reset_after, abs=0.5)


@needs_redis
async def test_redis_ping_reports_healthy(redis_buckets: RedisBuckets) -> None:
    assert await redis_buckets.ping()
    assert redis_buckets.healthy


# --- RedisBuckets failing open --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server subprocess of our own, so a test can kill it."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 5
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)
            else:
                writer.close()
                await writer.wait_closed()
                return

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None


@pytest.fixture
async def private_redis() -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "chatproxy.limits" and r.levelno == logging.WARNING
    ]


@needs_redis_server
async def test_redis_stopped_fails_open_and_recovers(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatproxy.limits")
    clock = FakeClock()
    buckets = RedisBuckets(private_redis.url, clock=clock, fail_log_interval=60.0)
    try:
        assert (await buckets.take("k", rate=0.01, capacity=2)).allowed
        assert (await buckets.take("k", rate=0.01, capacity=2)).allowed
        assert not (await buckets.take("k", rate=0.01, capacity=2)).allowed

        await private_redis.stop()
        for _ in range(3):
            result = await buckets.take("k", rate=0.01, capacity=2)
            assert result == BucketResult(True, 2, 1, 100.0, 0.0)
            assert not buckets.healthy
            clock.advance(2.0)  # past the cooldown: every call really tries Redis
        assert not await buckets.ping()
        assert len(_warnings(caplog)) == 1

        clock.advance(60.0)
        await buckets.take("k", rate=0.01, capacity=2)
        assert len(_warnings(caplog)) == 2  # once per interval, not once per request

        await private_redis.start()  # same port, empty: the bucket starts full again
        assert await buckets.ping()
        assert buckets.healthy
        assert (await buckets.take("k", rate=0.01, capacity=2)).remaining == 1
        assert (await buckets.take("k", rate=0.01, capacity=2)).remaining == 0
        assert not (await buckets.take("k", rate=0.01, capacity=2)).allowed
        assert buckets.healthy
    finally:
        await buckets.close()


@needs_redis_server
async def test_take_recovers_by_itself_after_the_cooldown(private_redis: PrivateRedis) -> None:
    clock = FakeClock()
    buckets = RedisBuckets(private_redis.url, clock=clock, cooldown=1.0)
    try:
        await private_redis.stop()
        assert (await buckets.take("k", rate=1.0, capacity=1)).allowed
        assert not buckets.healthy
        await private_redis.start()
        await buckets.take("k", rate=1.0, capacity=1)  # within the cooldown: Redis not asked
        assert not buckets.healthy
        clock.advance(1.0)
        assert (await buckets.take("k", rate=1.0, capacity=1)).allowed
        assert buckets.healthy
        assert not (await buckets.take("k", rate=1.0, capacity=1)).allowed
    finally:
        await buckets.close()


async def test_unreachable_redis_fails_open_quickly(caplog: pytest.LogCaptureFixture) -> None:
    buckets = RedisBuckets(f"redis://127.0.0.1:{_free_port()}/0")
    try:
        started = time.monotonic()
        result = await buckets.take("k", rate=1.0, capacity=5)
        assert time.monotonic() - started < 2.0
        assert result == BucketResult(True, 5, 4, 1.0, 0.0)
        assert not buckets.healthy
        assert not await buckets.ping()
        assert len(_warnings(caplog)) == 1
    finally:
        await buckets.close()


# --- client_ip ------------------------------------------------------------------------------

TRUSTED = parse_trusted(["10.0.0.0/8", "fd00::/8", "127.0.0.1"])


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        # Untrusted peer: the header is ignored, whatever it says.
        ("203.0.113.9", "1.2.3.4", "203.0.113.9"),
        ("203.0.113.9", None, "203.0.113.9"),
        # Trusted peer: the right-most untrusted hop.
        ("10.0.0.1", "198.51.100.7", "198.51.100.7"),
        ("10.0.0.1", "198.51.100.7, 10.0.0.2", "198.51.100.7"),
        ("10.0.0.1", "198.51.100.7,10.0.0.2,10.9.9.9", "198.51.100.7"),
        # Spoofing: the client prepends a fake address; our proxy appends the real one.
        ("10.0.0.1", "1.1.1.1, 198.51.100.7", "198.51.100.7"),
        ("10.0.0.1", "10.0.0.5, 198.51.100.7", "198.51.100.7"),
        # Garbage stops the walk at the last trusted hop.
        ("10.0.0.1", "198.51.100.7, garbage, 10.0.0.2", "10.0.0.2"),
        ("10.0.0.1", "198.51.100.7, garbage", "10.0.0.1"),
        ("10.0.0.1", "198.51.100.7, , 10.0.0.2", "10.0.0.2"),
        ("10.0.0.1", "unknown", "10.0.0.1"),
        ("10.0.0.1", "1.2.3.4:99999", "10.0.0.1"),
        ("10.0.0.1", "01.2.3.4", "10.0.0.1"),
        # Every hop trusted: the left-most.
        ("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3"),
        ("10.0.0.1", "", "10.0.0.1"),
        ("10.0.0.1", None, "10.0.0.1"),
        # Ports and brackets are stripped.
        ("10.0.0.1", "198.51.100.7:5678", "198.51.100.7"),
        ("10.0.0.1", "[2001:db8::1]:443", "2001:db8::1"),
        ("10.0.0.1", "[2001:db8::1]", "2001:db8::1"),
        ("10.0.0.1", "[2001:db8::1", "10.0.0.1"),
        # IPv6 and IPv4-mapped IPv6.
        ("fd00::1", "2001:db8::2", "2001:db8::2"),
        ("fd00::1", "2001:db8::2, fd12::3", "2001:db8::2"),
        ("::ffff:10.0.0.1", "::ffff:198.51.100.7", "198.51.100.7"),
        ("::ffff:10.0.0.1", "198.51.100.7, ::ffff:10.0.0.2", "198.51.100.7"),
        ("::ffff:203.0.113.9", "1.2.3.4", "203.0.113.9"),
        ("127.0.0.1", "[::ffff:198.51.100.7]:80", "198.51.100.7"),
        # A unix socket has no peer address.
        (None, "1.2.3.4", "unknown"),
    ],
)
def test_client_ip(peer: str | None, xff: str | None, expected: str) -> None:
    assert client_ip(peer, xff, TRUSTED) == expected


@pytest.mark.parametrize(
    ("peer", "expected"),
    [("203.0.113.9", "203.0.113.9"), ("::ffff:203.0.113.9", "203.0.113.9"), ("::1", "::1")],
)
def test_without_trusted_proxies_forwarded_for_is_never_read(peer: str, expected: str) -> None:
    assert client_ip(peer, "1.2.3.4, 10.0.0.1", ()) == expected


def test_parse_trusted() -> None:
    nets = parse_trusted([" 10.1.2.3/8", "::1", "::ffff:192.168.0.0/112"])
    assert [str(n) for n in nets] == ["10.0.0.0/8", "::1/128", "192.168.0.0/16"]
    assert client_ip("192.168.4.4", "198.51.100.7", nets) == "198.51.100.7"
    with pytest.raises(ValueError):
        parse_trusted(["not-a-network"])


# --- headers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0s"),
        (-3, "0s"),
        (0.02, "20ms"),
        (0.0001, "1ms"),
        (0.29, "290ms"),
        (0.5, "500ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (8.64, "8.64s"),
        (59.999, "59.999s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (61.25, "1m1.25s"),
        (3600, "1h0m0s"),
        (3723, "1h2m3s"),
        (86400, "24h0m0s"),
    ],
)
def test_go_duration(seconds: float, expected: str) -> None:
    assert go_duration(seconds) == expected


def test_rate_limit_headers_in_both_conventions() -> None:
    headers = rate_limit_headers(name="ip", limit=60, remaining=59, reset_after=0.5, window=60)
    assert headers == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "500ms",
        "RateLimit-Policy": '"ip";q=60;w=60',
        "RateLimit": '"ip";r=59;t=1',
    }


def test_rate_limit_headers_round_and_quote() -> None:
    headers = rate_limit_headers(
        name='da"y', limit=100, remaining=0, reset_after=21600.0, window=86400.4
    )
    assert headers["x-ratelimit-reset-requests"] == "6h0m0s"
    assert headers["RateLimit-Policy"] == '"da\\"y";q=100;w=86401'
    assert headers["RateLimit"] == '"da\\"y";r=0;t=21600'


@pytest.mark.parametrize(
    ("seconds", "expected"), [(0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (59.5, "60")]
)
def test_retry_after_header(seconds: float, expected: str) -> None:
    assert retry_after_header(seconds) == expected
