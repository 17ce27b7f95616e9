"""The built-in ``webhook`` plugin: each event POSTed as JSON to configured URLs, signed.

``on_event`` sends the event (``id``, ``type``, ``created_at``, ``user_id``, ``chat_id``,
``message_id``, ``data``) to every URL, with the headers

- ``Chatproxy-Signature: t=<unix seconds>,v1=<hex>``: HMAC-SHA256 with the secret over
  ``"<t>.<body>"`` (as Stripe signs); a receiver recomputes it and refuses an old ``t``;
- ``Idempotency-Key`` and ``Chatproxy-Event-Id``: the event's id, the same on every delivery
  of it (de-duplicate on it); ``Chatproxy-Event-Type``: its type.

A URL that does not answer 2xx in ``timeout`` seconds is tried again (``attempts`` times in
all, waits growing from half a second, a ``Retry-After`` honoured up to 30 s); if one URL
still fails, the hook raises and the outbox offers the event again later (every URL gets it
again: at least once). The secret is never logged, nor part of an error. Configuration
(``[plugin.webhook]``): ``urls`` (required), ``secret`` or ``secret_env`` (the name of an
environment variable holding it, read at start-up), ``timeout`` (10), ``attempts`` (3),
``events`` (the event types to send; default all).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from chatproxy.errors import SettingsError
from chatproxy.plugins.hookspecs import EVENT_TYPES, Event, hookimpl

__all__ = ["SIGNATURE_HEADER", "Webhook", "WebhookFailed", "payload", "plugin", "sign"]

SIGNATURE_HEADER = "Chatproxy-Signature"
_KEYS = ("urls", "secret", "secret_env", "timeout", "attempts", "events")
_FIRST_WAIT = 0.5  # seconds before the second try; doubling
_LONGEST_WAIT = 30.0  # at most, Retry-After included
_RETRY_STATUSES = frozenset({408, 409, 425, 429})  # and every 5xx


class WebhookFailed(Exception):
    """A URL did not take the event (its status, or no answer)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Again(WebhookFailed):
    """Worth another try within this delivery."""


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``Chatproxy-Signature`` header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def payload(event: Event) -> dict[str, Any]:
    """The JSON object sent for ``event``."""
    created = event.created_at.astimezone(UTC).isoformat(timespec="milliseconds")
    return {
        "id": event.id,
        "type": event.type,
        "created_at": created.replace("+00:00", "Z"),
        "user_id": event.user_id,
        "chat_id": event.chat_id,
        "message_id": event.message_id,
        "data": dict(event.data),
    }


def _shown(url: str) -> str:
    # In errors and logs: no credentials, no query string (either may hold a token).
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


class Webhook:
    """Sends events to ``urls``, signed with ``secret``."""

    def __init__(
        self,
        urls: Sequence[str],
        secret: bytes,
        *,
        timeout: float = 10.0,
        attempts: int = 3,
        events: frozenset[str] = frozenset(EVENT_TYPES),
    ) -> None:
        self.urls = tuple(urls)
        self._secret = secret
        self.timeout = timeout
        self.attempts = attempts
        self.events = events
        # The wait between two tries (replaced in tests).
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        # One client for every event (its connections reused), made in the loop that sends.
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"Webhook(urls={[_shown(u) for u in self.urls]!r})"

    async def aclose(self) -> None:
        """Close the HTTP client (at the proxy's shutdown)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    @hookimpl
    async def on_event(self, event: Event) -> None:
        """POST the event to every URL; raises when one of them did not take it."""
        if event.type not in self.events:
            return
        body = orjson.dumps(payload(event))
        session, loop = self._session, asyncio.get_running_loop()
        if session is None or session.closed or self._loop is not loop:
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            session, self._loop = aiohttp.ClientSession(timeout=timeout), loop
            self._session = session
        results = await asyncio.gather(
            *(self._send(session, url, event, body) for url in self.urls),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _send(
        self, session: aiohttp.ClientSession, url: str, event: Event, body: bytes
    ) -> None:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_Again),
            sleep=self.sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._post(session, url, event, body)

    @staticmethod
    def _wait(state: RetryCallState) -> float:
        wait = _FIRST_WAIT * 2 ** (state.attempt_number - 1)
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, WebhookFailed) and exc.retry_after is not None:
            wait = exc.retry_after
        return min(wait, _LONGEST_WAIT)

    async def _post(
        self, session: aiohttp.ClientSession, url: str, event: Event, body: bytes
    ) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "chatproxy-webhook",
            SIGNATURE_HEADER: sign(self._secret, int(time.time()), body),
            "Idempotency-Key": event.id,
            "Chatproxy-Event-Id": event.id,
            "Chatproxy-Event-Type": event.type,
        }
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _Again(f"POST {_shown(url)} failed ({type(exc).__name__})") from None
        if 200 <= status < 300:
            return
        message = f"POST {_shown(url)} answered {status}"
        if status >= 500 or status in _RETRY_STATUSES:
            raise _Again(message, retry_after)
        raise WebhookFailed(message)


def _fail(key: str, expected: str, value: Any = None) -> SettingsError:
    return SettingsError(f"plugin.webhook.{key}", expected, value)


def _urls(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise _fail("urls", "a list of http(s) URLs", value)
    for i, url in enumerate(value):
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            # Not echoed: a URL may carry a token.
            raise _fail(f"urls[{i}]", "an http(s) URL")
    return list(value)


def _secret(config: Mapping[str, Any], environ: Mapping[str, str]) -> bytes:
    if "secret" in config and "secret_env" in config:
        raise _fail("secret", "either secret or secret_env, not both")
    if "secret_env" in config:
        name = config["secret_env"]
        if not isinstance(name, str) or not name:
            raise _fail("secret_env", "the name of an environment variable", name)
        value = environ.get(name, "")
        if not value:
            raise _fail("secret_env", f"an environment variable that is set ({name} is not)")
        return value.encode()
    value = config.get("secret")
    if not isinstance(value, str) or not value:
        raise _fail("secret", "a non-empty string (or secret_env)")  # never echoed
    return value.encode()


def _positive(config: Mapping[str, Any], key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise _fail(key, "a positive number of seconds", value)
    return float(value)


def plugin(config: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Webhook:
    """The plugin for its ``[plugin.webhook]`` table (see the module's docstring)."""
    for key in config:
        if key not in _KEYS:
            raise SettingsError(f"plugin.webhook.{key}", "", None, unknown=True)
    urls = _urls(config.get("urls"))
    secret = _secret(config, os.environ if environ is None else environ)
    attempts = config.get("attempts", 3)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 20:
        raise _fail("attempts", "a number of tries from 1 to 20", attempts)
    events = config.get("events", list(EVENT_TYPES))
    if not isinstance(events, list) or not all(e in EVENT_TYPES for e in events):
        raise _fail("events", f"a list of {', '.join(EVENT_TYPES)}", events)
    return Webhook(
        urls,
        secret,
        timeout=_positive(config, "timeout", 10.0),
        attempts=attempts,
        events=frozenset(events),
    )
