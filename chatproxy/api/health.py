"""``GET /healthz`` (the process is alive) and ``GET /readyz`` (the store answers)."""

from __future__ import annotations

from aiohttp import web

from chatproxy.appkeys import STORE

__all__ = ["healthz", "readyz"]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ok = await request.app[STORE].ping()
    return web.json_response(
        {"status": "ok" if ok else "unavailable", "store": ok}, status=200 if ok else 503
    )
