"""Token buckets: one request takes one token; tokens come back at ``rate`` per second.

A bucket holds at most ``capacity`` tokens (the burst) and a new one starts full, so a client
may send ``capacity`` requests at once and then ``rate`` per second. Two backends answer alike:
:class:`LocalBuckets` keeps buckets in this process; :class:`RedisBuckets` keeps them in Redis,
shared by every instance, and fails open (allows) while Redis is unreachable.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

__all__ = ["BucketResult", "Buckets", "LocalBuckets", "RedisBuckets"]

logger = logging.getLogger("chatproxy.limits")

# Float slack, so that e.g. 60 s at 1/60 token per second counts as one whole token.
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class BucketResult:
    """The outcome of one :meth:`Buckets.take`."""

    allowed: bool
    limit: int  # the bucket's capacity (the burst)
    remaining: int  # whole tokens left after this request (0 when refused)
    reset_after: float  # seconds until the bucket would be full again
    retry_after: float  # seconds until the next request would be allowed (0.0 when allowed)


class Buckets(Protocol):
    """What the limiter needs from a bucket backend."""

    healthy: bool  # False while the backend is unreachable (readiness reports it)

    async def take(self, key: str, *, rate: float, capacity: int) -> BucketResult:
        """Take one token from bucket ``key`` if it has one."""
        ...

    async def close(self) -> None:
        """Release the backend's resources."""
        ...


def _check(rate: float, capacity: int) -> None:
    if not rate > 0 or capacity < 1:
        raise ValueError(f"need rate > 0 and capacity >= 1, got {rate=} {capacity=}")


def _result(allowed: bool, tokens: float, rate: float, capacity: int) -> BucketResult:
    """Describe a bucket holding ``tokens`` after the request was (or was not) served."""
    if allowed:
        return BucketResult(
            True, capacity, int(tokens + _EPS), max(0.0, (capacity - tokens) / rate), 0.0
        )
    return BucketResult(
        False, capacity, 0, (capacity - tokens) / rate, max(0.0, (1.0 - tokens) / rate)
    )


class _Bucket:
    __slots__ = ("full_at", "stamp", "tokens")

    def __init__(self) -> None:
        self.tokens = 0.0
        self.stamp = 0.0
        self.full_at = 0.0


class LocalBuckets:
    """In-process buckets (one instance).

    Memory is bounded by ``max_keys``: when there are more buckets than that, the ones that have
    refilled completely are dropped (a fresh bucket is identical), then the least recently used
    until 10% below the bound, so the sweep runs once per many new keys, not once per request.
    """

    __slots__ = ("_buckets", "_clock", "_low_water", "_max_keys", "healthy")

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self._clock = clock
        self._max_keys = max_keys
        self._low_water = max(1, max_keys - max(1, max_keys // 10))
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.healthy = True

    def __len__(self) -> int:
        return len(self._buckets)

    async def take(self, key: str, *, rate: float, capacity: int) -> BucketResult:
        """Take one token from bucket ``key`` if it has one."""
        _check(rate, capacity)
        now = self._clock()
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = _Bucket()
            tokens = float(capacity)
        else:
            buckets.move_to_end(key)
            tokens = bucket.tokens
            if now > bucket.stamp:
                tokens += (now - bucket.stamp) * rate
            else:
                now = bucket.stamp  # the clock went back: never credit the same time twice
            if tokens > capacity:
                tokens = float(capacity)
        allowed = tokens >= 1.0 - _EPS
        if allowed:
            tokens = max(0.0, tokens - 1.0)
        bucket.tokens = tokens
        bucket.stamp = now
        bucket.full_at = now + (capacity - tokens) / rate
        if len(buckets) > self._max_keys:
            self._evict(now)
        return _result(allowed, tokens, rate, capacity)

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        for key in [k for k, b in buckets.items() if b.full_at <= now]:
            del buckets[key]
        while len(buckets) > self._low_water:
            buckets.popitem(last=False)

    async def close(self) -> None:
        """Forget every bucket."""
        self._buckets.clear()


# KEYS[1]: a hash {t: tokens, ts: time of t in microseconds of the Redis server's clock}.
# ARGV: rate (tokens per second), capacity, float slack. Returns {allowed, tokens as a string}
# (Lua numbers returned to Redis are truncated to integers). Redis TIME gives every instance
# one clock. A refused request writes nothing: the stored state and its expiry still hold.
_TAKE_LUA = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local eps = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tokens = capacity
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
if state[1] and state[2] then
  local ts = tonumber(state[2])
  tokens = tonumber(state[1])
  if now > ts then
    tokens = tokens + (now - ts) * rate / 1000000
  else
    now = ts
  end
  if tokens > capacity then tokens = capacity end
end
if tokens < 1 - eps then
  return {0, tostring(tokens)}
end
tokens = math.max(0, tokens - 1)
redis.call('HSET', KEYS[1], 't', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) * 1000 / rate) + 1)
return {1, tostring(tokens)}
"""


class RedisBuckets:
    """Buckets shared by any number of instances through Redis, atomically (one Lua script).

    Keys are ``f"{prefix}bucket:{key}"`` and expire once they would be full again. On any Redis
    error it fails open: ``take`` allows, ``healthy`` turns False, a warning is logged at most
    once per ``fail_log_interval``, and for ``cooldown`` seconds calls skip Redis entirely (so
    an unreachable host costs one slow request per cooldown, not every request). The next
    successful call, or :meth:`ping`, sets ``healthy`` back to True. ``clock`` only times the
    log interval and the cooldown; bucket time is the Redis server's ``TIME``.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "chatproxy:",
        clock: Callable[[], float] = time.monotonic,
        fail_log_interval: float = 60.0,
        cooldown: float = 1.0,
        timeout: float = 0.5,
    ) -> None:
        # One immediate retry: a pooled connection the server closed fails once, then works.
        self._client = Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._script = self._client.register_script(_TAKE_LUA)
        self._key_prefix = f"{prefix}bucket:"
        self._clock = clock
        self._fail_log_interval = fail_log_interval
        self._cooldown = cooldown
        self._skip_until = float("-inf")
        self._last_log = float("-inf")
        self.healthy = True

    async def take(self, key: str, *, rate: float, capacity: int) -> BucketResult:
        """Take one token from the shared bucket ``key`` if it has one (allow if Redis is down)."""
        _check(rate, capacity)
        if not self.healthy and self._clock() < self._skip_until:
            return _result(True, capacity - 1.0, rate, capacity)
        try:
            allowed, tokens = await self._script(
                keys=(self._key_prefix + key,), args=(rate, capacity, _EPS)
            )
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return _result(True, capacity - 1.0, rate, capacity)
        if not self.healthy:
            self._recovered()
        return _result(allowed == 1, float(tokens), rate, capacity)

    async def ping(self) -> bool:
        """Check Redis now (ignoring the cooldown); updates and returns ``healthy``."""
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            self._failed(exc)
        else:
            if not self.healthy:
                self._recovered()
        return self.healthy

    async def close(self) -> None:
        """Close the Redis client and its connections."""
        await self._client.aclose()

    def _failed(self, exc: BaseException) -> None:
        now = self._clock()
        self.healthy = False
        self._skip_until = now + self._cooldown
        if now - self._last_log >= self._fail_log_interval:
            self._last_log = now
            logger.warning("redis unreachable, rate limits fail open: %r", exc)

    def _recovered(self) -> None:
        self.healthy = True
        self._skip_until = float("-inf")
        logger.info("redis reachable again, rate limits enforced")
