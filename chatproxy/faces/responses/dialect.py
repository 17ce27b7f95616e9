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

from chatproxy.appkeys import SETTINGS, UPSTREAM
from chatproxy.auth import Caller
from chatproxy.engine.dialect import CHAT_COMPLETIONS, RESPONSES, Dialect
from chatproxy.errors import UpstreamError

__all__ = ["upstream_dialect"]

log = logging.getLogger("chatproxy.responses")

# What an upstream without the API answers for its path.
_MISSING = frozenset({404, 405, 501})
_FOUND = web.AppKey("responses_dialect", Dialect)
_LOCK = web.AppKey("responses_dialect_lock", asyncio.Lock)


async def upstream_dialect(app: web.Application, caller: Caller) -> Dialect:
    """The dialect to ask the upstream in, for a request of ``caller``."""
    mode = app[SETTINGS].upstream.responses
    if mode != "auto":
        return RESPONSES if mode == "native" else CHAT_COMPLETIONS
    found = app.get(_FOUND)
    if found is not None:
        return found
    lock = app.get(_LOCK)
    if lock is None:
        lock = app[_LOCK] = asyncio.Lock()
    async with lock:
        found = app.get(_FOUND)
        if found is None:
            found = await _probe(app, caller)
            if found is not None:
                app[_FOUND] = found
                how = "native" if found is RESPONSES else "translate (chat completions)"
                log.info("upstream /v1/responses: %s", how)
    return found if found is not None else CHAT_COMPLETIONS


async def _probe(app: web.Application, caller: Caller) -> Dialect | None:
    """Ask the upstream whether it has ``/responses``; ``None``: it could not say."""
    upstream = app[UPSTREAM]
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
