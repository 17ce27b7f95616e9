"""The upstream client: every request the proxy makes upstream (answers, pass-through, titles),
with one set of headers, timeouts and retries before the first byte.

Only the call that opens a response (up to its status line and headers) is retried; the
iteration over a body never is, because by then bytes may have reached the client. Each retry
is logged and counted (``on_retry``: the retries metric).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)
from yarl import URL

from chatproxy.errors import UpstreamError, normalize_upstream_error
from chatproxy.settings import UpstreamSettings

__all__ = ["RETRY_STATUSES", "Upstream", "retry_after_seconds"]

log = logging.getLogger("chatproxy.upstream")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_AFTER_CAP = 60.0

# Hop-by-hop headers (RFC 9110 §7.6.1) and those aiohttp sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)

Sleep = Callable[[float], Awaitable[None]]


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The wait an upstream asked for (``retry-after-ms`` or ``Retry-After`` in seconds)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            return None  # an HTTP date: rare from model servers; fall back to backoff
    return None


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, UpstreamError):
        return exc.status in RETRY_STATUSES
    return False


class Upstream:
    """Talks to the configured OpenAI-compatible upstream over one shared ``ClientSession``."""

    def __init__(
        self,
        settings: UpstreamSettings,
        session: aiohttp.ClientSession,
        *,
        sleep: Sleep = asyncio.sleep,
        on_retry: Callable[[], object] | None = None,
    ) -> None:
        self.settings = settings
        self._on_retry = on_retry
        self.session = session
        self.base_url = settings.base_url
        self._base = str(URL(self.base_url))  # the configured URL, encoded once
        self._sleep = sleep
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout, connect=settings.connect_timeout
        )

    def auth_headers(self, client_authorization: str | None = None) -> dict[str, str]:
        """The ``Authorization`` to send upstream: the client's own, or the proxy's key."""
        if client_authorization is not None:
            return {"Authorization": client_authorization}
        if self.settings.api_key:
            return {"Authorization": f"Bearer {self.settings.api_key}"}
        return {}

    def delay(self, retry_number: int, exc: BaseException | None) -> float:
        """How long to wait before retry ``retry_number`` (1 for the first retry): the
        upstream's ``Retry-After`` (capped), else exponential backoff with jitter."""
        if isinstance(exc, UpstreamError):
            asked = retry_after_seconds(exc.headers)
            if asked is not None:
                return min(asked, RETRY_AFTER_CAP)
        up = self.settings
        backoff = min(up.backoff_max, up.backoff_initial * 2 ** (retry_number - 1))
        return backoff + random.uniform(0, up.backoff_initial)

    def _wait(self, state: RetryCallState) -> float:
        # Tenacity counts its own attempts; the first attempt was made before it started.
        exc = state.outcome.exception() if state.outcome else None
        return self.delay(state.attempt_number + 1, exc)

    async def open(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        data: Any = None,
        params: Any = None,
        request_id: str = "",
        retry: bool = True,
        base: str | None = None,
    ) -> aiohttp.ClientResponse:
        """Open an upstream response with a 2xx/3xx status; errors raise :class:`UpstreamError`.

        ``path`` is appended to the base URL as it is, already encoded: nothing resolves its
        dot segments or re-encodes it on the way (the pass-through checked it).
        Connection errors, timeouts and 429/5xx statuses are retried (``retry``) with
        exponential backoff and jitter, honouring the upstream's ``Retry-After``. ``base``:
        another upstream's base URL than the configured one (a plugin chose it).
        """
        if not path.startswith("/"):
            raise ValueError(f"an upstream path must start with '/', not {path!r}")
        url = URL((self._base if base is None else str(URL(base))) + path, encoded=True)
        # The first attempt is made directly: most requests need no retry, and a retrying
        # controller per request costs more than the rest of opening the request.
        try:
            return await self._open_once(method, url, headers, data, params)
        except UpstreamError as exc:
            if not retry or self.settings.retries == 0 or not _retryable(exc):
                raise
            await self._sleep(self.delay(1, exc))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.retries),
            wait=self._wait,
            retry=retry_if_exception(_retryable),
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                n = attempt.retry_state.attempt_number + 1
                log.info("upstream retry request_id=%s attempt=%d", request_id, n)
                if self._on_retry is not None:
                    self._on_retry()
                return await self._open_once(method, url, headers, data, params)
        raise AssertionError("unreachable")  # pragma: no cover

    async def post_json(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str],
        request_id: str = "",
    ) -> Any:
        """POST ``body`` as JSON and return the upstream's JSON answer, read whole.

        For the requests the proxy makes on its own account (a chat's title): opened by
        :meth:`open` (its retries and first-byte timeout), the body read under
        ``idle_timeout``, the whole call under ``max_duration``. Every failure raises
        :class:`UpstreamError`.
        """
        sent = {**headers, "Content-Type": "application/json", "Accept-Encoding": "identity"}
        try:
            async with asyncio.timeout(self.settings.max_duration):
                resp = await self.open(
                    "POST", path, headers=sent, data=orjson.dumps(body), request_id=request_id
                )
                try:
                    raw = await self._read_whole(resp)
                finally:
                    resp.release()
        except TimeoutError:
            limit = self.settings.max_duration
            raise UpstreamError(
                504,
                message=f"the upstream took longer than max_duration ({limit:g} s)",
                code="max_duration_exceeded",
            ) from None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                502, message="the upstream sent invalid JSON", code="upstream_invalid"
            ) from None

    async def _read_whole(self, resp: aiohttp.ClientResponse) -> bytes:
        idle = self.settings.idle_timeout
        parts: list[bytes] = []
        try:
            while True:
                async with asyncio.timeout(idle):
                    data = await resp.content.readany()
                if not data:
                    return b"".join(parts)
                parts.append(data)
        except TimeoutError:
            raise UpstreamError(
                504, message=f"the upstream sent nothing for {idle:g} s", code="upstream_timeout"
            ) from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise UpstreamError(
                502,
                message=f"the upstream connection failed mid-body ({type(exc).__name__})",
                code="upstream_disconnected",
            ) from None

    async def _open_once(
        self, method: str, url: URL, headers: Mapping[str, str], data: Any, params: Any
    ) -> aiohttp.ClientResponse:
        try:
            async with asyncio.timeout(self.settings.first_byte_timeout):
                resp = await self.session.request(
                    method,
                    url,
                    headers=headers,
                    data=data,
                    params=params,
                    timeout=self._timeout,
                    allow_redirects=False,
                    auto_decompress=False,
                )
        except TimeoutError:
            raise UpstreamError(
                504, message="the upstream did not answer in time", code="upstream_timeout"
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                502,
                message=f"could not reach the upstream ({type(exc).__name__})",
                code="upstream_unreachable",
            ) from None
        if resp.status < 400:
            return resp
        try:
            raw = await resp.read()
        except aiohttp.ClientError:
            raw = b""
        finally:
            resp.release()
        keep = {
            k.lower(): v
            for k, v in resp.headers.items()
            if k.lower() in ("retry-after", "retry-after-ms", "x-should-retry")
        }
        raise UpstreamError(resp.status, normalize_upstream_error(resp.status, raw), headers=keep)
