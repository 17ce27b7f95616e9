"""Every other ``/v1/*`` request: forwarded unchanged, streamed both ways, not stored."""

from __future__ import annotations

from aiohttp import web
from aiohttp.client_exceptions import ClientError

from chatproxy.appkeys import CALLER, REQUEST_ID, UPSTREAM
from chatproxy.proxy.upstream import HOP_BY_HOP

__all__ = ["handle_passthrough"]

# Never sent upstream as the client sent them: the proxy decides the upstream credential.
_DROP_REQUEST_HEADERS = HOP_BY_HOP | {"authorization"}
_DROP_RESPONSE_HEADERS = HOP_BY_HOP | {"date", "server"}
_CHUNK = 64 * 1024


async def handle_passthrough(request: web.Request) -> web.StreamResponse:
    """Forward ``request`` to the upstream path below ``/v1`` and stream the answer back."""
    caller = request[CALLER]
    upstream = request.app[UPSTREAM]
    path = request.match_info["tail"]
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST_HEADERS}
    headers.update(upstream.auth_headers(caller.upstream_authorization))
    has_body = request.body_exists
    resp_up = await upstream.open(
        request.method,
        "/" + path,
        headers=headers,
        params=request.rel_url.query,
        data=request.content.iter_chunked(_CHUNK) if has_body else None,
        request_id=request[REQUEST_ID],
        retry=not has_body,  # a streamed body cannot be sent twice
    )
    try:
        resp = web.StreamResponse(
            status=resp_up.status,
            headers={
                k: v for k, v in resp_up.headers.items() if k.lower() not in _DROP_RESPONSE_HEADERS
            },
        )
        await resp.prepare(request)
        async for data in resp_up.content.iter_any():
            await resp.write(data)
        await resp.write_eof()
        return resp
    except ClientError:
        # The upstream broke mid-body: the client sees a truncated response, as it would
        # talking to the upstream directly.
        if request.transport is not None:
            request.transport.close()
        return resp
    finally:
        resp_up.close()
