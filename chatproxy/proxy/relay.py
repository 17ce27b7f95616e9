"""The one place a generation's output is written to an HTTP client.

It races "forward the next piece" against "the client went away": with
``handler_cancellation`` on, a client that leaves cancels the handler while it waits; a client
that leaves during a write makes the write fail. Either way the subscriber just leaves the
generation, which goes on (or is aborted, by policy) on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from chatproxy.errors import APIError
from chatproxy.proxy.generation import Generation

__all__ = ["relay"]


async def relay(
    request: web.Request, gen: Generation, headers: Mapping[str, str]
) -> web.StreamResponse:
    """Stream ``gen`` to the client of ``request``, adding ``headers`` to the response head.

    Errors before the upstream answered (an :class:`~chatproxy.errors.APIError` from
    ``gen.head``) propagate to the error middleware.
    """
    gen.subscribe()
    disconnected = False
    try:
        try:
            head = await gen.head
        except APIError as exc:
            exc.headers = {**exc.headers, **headers}
            raise
        resp = web.StreamResponse(status=head.status, headers=head.headers)
        resp.headers.update(headers)
        await resp.prepare(request)
        seen = 0
        pieces = gen.pieces
        while True:
            n = len(pieces)
            if seen < n:
                await resp.write(pieces[seen] if n - seen == 1 else b"".join(pieces[seen:n]))
                seen = n
            elif gen.done:
                break
            else:
                await gen.wait(seen)
        await resp.write_eof()
        return resp
    except (asyncio.CancelledError, ConnectionResetError, ClientConnectionResetError):
        disconnected = True
        raise
    finally:
        gen.unsubscribe(disconnected=disconnected)
