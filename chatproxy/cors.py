"""Cross-origin requests (``server.cors_origins``): browser apps served from another origin
(a ``useChat`` page on its own dev server, an OpenAI client in the browser) may call the API.

Off by default: with no origins configured nothing here runs. Preflights (``OPTIONS`` with
``Access-Control-Request-Method``) are answered by the proxy itself, before authentication,
since browsers send them without credentials; the real request is authenticated and limited as
usual, and its response (errors included) carries the headers a browser needs to read it.
"""

from __future__ import annotations

import re

from aiohttp import web

__all__ = ["ORIGIN_RE", "Cors"]

ORIGIN_RE = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|\*")
ALLOWED_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
# Response headers a page may read: threading ids, limits, and the AI SDK's stream marker.
EXPOSED_HEADERS = ", ".join(
    (
        "X-Chat-Id",
        "X-Message-Id",
        "X-Request-Id",
        "Retry-After",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-vercel-ai-ui-message-stream",
    )
)
MAX_AGE = "600"


class Cors:
    """The configured origins (``*``: any), and the headers they get."""

    def __init__(self, origins: list[str]) -> None:
        self._any = "*" in origins
        self._origins = frozenset(o.lower() for o in origins)

    def allows(self, origin: str | None) -> bool:
        """Whether a page from ``origin`` may read the API's responses."""
        return origin is not None and (self._any or origin.lower() in self._origins)

    def preflight(self, request: web.Request) -> web.Response | None:
        """The answer to a CORS preflight, or ``None`` when ``request`` is not one."""
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        origin = request.headers.get("Origin")
        resp = web.Response(status=204)
        if self.allows(origin):
            assert origin is not None
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
            requested = request.headers.get("Access-Control-Request-Headers")
            if requested:
                resp.headers["Access-Control-Allow-Headers"] = requested
            resp.headers["Access-Control-Max-Age"] = MAX_AGE
        resp.headers["Vary"] = "Origin"
        return resp

    def decorate(self, request: web.Request, response: web.StreamResponse) -> None:
        """Let the page that made ``request`` read ``response``, if its origin is allowed."""
        origin = request.headers.get("Origin")
        if not self.allows(origin) or "Access-Control-Allow-Origin" in response.headers:
            return
        assert origin is not None
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        response.headers.add("Vary", "Origin")
