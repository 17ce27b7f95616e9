"""``GET /healthz`` (the process is alive) and ``GET /readyz`` (the store answers)."""

from __future__ import annotations

from aiohttp import web

from chatproxy.appkeys import LIMITS, STORE
from chatproxy.limits.buckets import RedisBuckets

__all__ = ["healthz", "readyz"]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready while the store answers. Redis is reported, but the proxy serves without it
    (limits fail open), so an unreachable Redis does not make the instance unready."""
    ok = await request.app[STORE].ping()
    body: dict[str, object] = {"status": "ok" if ok else "unavailable", "store": ok}
    buckets = request.app[LIMITS].buckets
    if isinstance(buckets, RedisBuckets):
        redis_ok = await buckets.ping()
        body["redis"] = redis_ok
        if ok and not redis_ok:
            body["status"] = "degraded"
    return web.json_response(body, status=200 if ok else 503)
