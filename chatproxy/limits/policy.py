"""Where a limit is decided (SPEC §6): per client IP (a token bucket) and per user (daily quotas
counted from the store).

Each check returns the state of its limit; the request keeps the tightest one, and its headers
go on the response head in both conventions (OpenAI's ``x-ratelimit-*`` and the IETF draft's
``RateLimit-Policy`` / ``RateLimit``). Over a limit: 429 with ``Retry-After``; nothing is
stored for a refused request, because the checks run before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from aiohttp import web

from chatproxy.auth import Caller
from chatproxy.errors import RateLimited
from chatproxy.limits.buckets import Buckets
from chatproxy.limits.client_ip import client_ip, parse_trusted
from chatproxy.limits.headers import go_duration, rate_limit_headers, retry_after_header
from chatproxy.settings import Settings, TierSettings, parse_rate
from chatproxy.store.store import Store, utcnow

__all__ = ["DAY", "LimitState", "Limits", "tightest"]

DAY = 86_400.0
_NO_QUOTA = TierSettings(messages_per_day=0, tokens_per_day=0)


@dataclass(slots=True, frozen=True)
class LimitState:
    """One limit as a response reports it."""

    name: str
    limit: int
    remaining: int
    reset_after: float
    window: float

    def headers(self) -> dict[str, str]:
        return rate_limit_headers(
            name=self.name,
            limit=self.limit,
            remaining=self.remaining,
            reset_after=self.reset_after,
            window=self.window,
        )


def tightest(a: LimitState | None, b: LimitState) -> LimitState:
    """The limit closer to refusing: fewer requests left (of equals, the later reset)."""
    if a is None:
        return b
    return b if (b.remaining, -b.reset_after) < (a.remaining, -a.reset_after) else a


class Limits:
    """The configured limits, on the configured bucket backend."""

    def __init__(self, settings: Settings, buckets: Buckets, store: Store) -> None:
        self.buckets = buckets
        self._store = store
        self._trusted = parse_trusted(settings.server.trusted_proxies)
        self._tiers = settings.limits.tiers
        self._default_tier = settings.limits.default_tier
        rate = parse_rate(settings.limits.ip_rate)
        if rate is None:
            self._ip: tuple[int, float, int] | None = None
        else:
            count, period = rate
            self._ip = (count, period, settings.limits.ip_burst or count)
        # In auth mode "none" (one local user) a tier has a daily quota only where the
        # configuration sets one: a local agent is not locked out by the built-in default.
        self._quota_tiers = settings.limits.quota_tiers if settings.auth.mode == "none" else None

    def client_ip(self, request: web.Request) -> str:
        return client_ip(request.remote, request.headers.get("X-Forwarded-For"), self._trusted)

    async def check_ip(self, request: web.Request) -> LimitState | None:
        """Take a token from the client IP's bucket; raises ``RateLimited`` when empty."""
        if self._ip is None:
            return None
        count, period, burst = self._ip
        result = await self.buckets.take(
            f"ip:{self.client_ip(request)}", rate=count / period, capacity=burst
        )
        # The headers state the configured policy (120 a minute), not the bucket's size.
        state = LimitState("ip", count, result.remaining, result.reset_after, period)
        if not result.allowed:
            raise RateLimited(
                "too many requests from this address; slow down",
                code="rate_limit_exceeded",
                headers={**state.headers(), "Retry-After": retry_after_header(result.retry_after)},
            )
        return state

    def tier(self, caller: Caller) -> TierSettings:
        name = caller.tier if caller.tier in self._tiers else self._default_tier
        if self._quota_tiers is not None and name not in self._quota_tiers:
            return _NO_QUOTA
        return self._tiers[name]

    async def check_daily(self, caller: Caller) -> tuple[LimitState | None, dict[str, str]]:
        """The caller's daily quotas over the last 24 hours, counted from the store.

        Returns the messages quota's state and the token quota's headers; raises
        ``RateLimited`` (``daily_limit_exceeded``, not worth retrying soon) when one is used up.
        """
        tier = self.tier(caller)
        if not tier.messages_per_day and not tier.tokens_per_day:
            return None, {}
        now = utcnow()
        messages, tokens, oldest = await self._store.daily_usage(
            caller.user_id,
            now - timedelta(seconds=DAY),
            at_most=tier.messages_per_day or 1,
            tokens=bool(tier.tokens_per_day),
        )
        reset_after = DAY if oldest is None else max(0.0, (oldest - now).total_seconds() + DAY)
        state = None
        extra: dict[str, str] = {}
        over = None
        if tier.messages_per_day:
            if messages >= tier.messages_per_day:
                over = f"the daily limit of {tier.messages_per_day} messages is used up"
            # What is left once this request is counted.
            remaining = max(0, tier.messages_per_day - messages - 1)
            state = LimitState("daily", tier.messages_per_day, remaining, reset_after, DAY)
        if tier.tokens_per_day:
            left = max(0, tier.tokens_per_day - tokens)
            extra = {
                "x-ratelimit-limit-tokens": str(tier.tokens_per_day),
                "x-ratelimit-remaining-tokens": str(left),
                "x-ratelimit-reset-tokens": go_duration(reset_after),
            }
            if left == 0 and over is None:
                over = f"the daily limit of {tier.tokens_per_day} tokens is used up"
        if over is not None:
            headers = {**(state.headers() if state else {}), **extra}
            headers.update(
                {"Retry-After": retry_after_header(reset_after), "x-should-retry": "false"}
            )
            raise RateLimited(over, code="daily_limit_exceeded", headers=headers)
        return state, extra
