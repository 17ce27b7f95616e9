"""Which dialect ``/v1/responses`` speaks with the upstream (``[upstream] responses``).

``native``: the upstream's own ``/v1/responses``; ``translate``: its chat completions, the
request and the answer converted both ways; ``auto``: ``native`` when the upstream answers
``/v1/responses``, found once by a request it cannot answer (an empty body: an upstream with
the API refuses it with 400, one without says 404) and remembered for the process.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from chatproxy.appkeys import UPSTREAM
from chatproxy.auth import Caller
from chatproxy.engine.dialect import CHAT_COMPLETIONS, RESPONSES, Dialect
from chatproxy.errors import UpstreamError
from chatproxy.upstream.client import Upstream

__all__ = ["UPSTREAM_DIALECT", "UpstreamDialect", "upstream_dialect"]

log = logging.getLogger("chatproxy.responses")

# What an upstream without the API answers for its path.
_MISSING = frozenset({404, 405, 501})


class UpstreamDialect:
    """The dialect ``[upstream] responses`` names, or (``auto``) the one found."""

    def __init__(self, mode: str) -> None:
        self._found: Dialect | None = None
        if mode != "auto":
            self._found = RESPONSES if mode == "native" else CHAT_COMPLETIONS
        self._lock = asyncio.Lock()

    async def get(self, upstream: Upstream, caller: Caller) -> Dialect:
        """The dialect to ask ``upstream`` in, for a request of ``caller``."""
        if self._found is not None:
            return self._found
        async with self._lock:
            if self._found is None:
                found = await _probe(upstream, caller)
                if found is None:
                    return CHAT_COMPLETIONS  # ask again next time
                self._found = found
                how = "native" if found is RESPONSES else "translate (chat completions)"
                log.info("upstream /v1/responses: %s", how)
        return self._found


UPSTREAM_DIALECT = web.AppKey("upstream_dialect", UpstreamDialect)


async def upstream_dialect(app: web.Application, caller: Caller) -> Dialect:
    """The dialect the running application asks its upstream in, for ``caller``."""
    return await app[UPSTREAM_DIALECT].get(app[UPSTREAM], caller)


async def _probe(upstream: Upstream, caller: Caller) -> Dialect | None:
    """Ask the upstream whether it has ``/responses``; ``None``: it could not say."""
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    headers.update(upstream.auth_headers(caller.upstream_authorization))
    try:
        resp = await upstream.open("POST", "/responses", headers=headers, data=b"{}", retry=False)
    except UpstreamError as exc:
        if exc.status in _MISSING:
            return CHAT_COMPLETIONS
        if exc.status in (401, 403) or exc.status >= 500:
            return None  # not an answer about the path
        return RESPONSES
    resp.release()
    return RESPONSES
