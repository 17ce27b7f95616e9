"""Every other ``/v1/*`` request: forwarded unchanged, streamed both ways, not stored.

Only paths below the upstream's base path are ever forwarded. The path is read as the client
sent it (``rel_url.raw_path``: ``request.path`` is already decoded, so ``%2F`` is a ``/``
there, and aiohttp resolves no dot segment), each segment is percent-decoded once and
checked, and the upstream gets the segments re-encoded in one canonical form.

Refused, with ``404``, and never sent: dot segments (``..``, ``%2e%2e``, ``.%2E``, ``..;``,
fullwidth dots), encoded or back slashes, a ``%`` left after decoding (double encoding),
malformed escapes, bytes that are not UTF-8 (overlong forms such as ``%c0%ae``), control
characters and empty segments.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote, unquote_to_bytes

from aiohttp import web
from aiohttp.client_exceptions import ClientError

from chatproxy.appkeys import CALLER, REQUEST_ID, UPSTREAM
from chatproxy.errors import ResourceNotFound
from chatproxy.upstream.client import HOP_BY_HOP

__all__ = ["handle_passthrough", "upstream_path"]

# Never sent upstream as the client sent them: the proxy decides the upstream credential.
_DROP_REQUEST_HEADERS = HOP_BY_HOP | {"authorization"}
_DROP_RESPONSE_HEADERS = HOP_BY_HOP | {"date", "server"}
_CHUNK = 64 * 1024

# A raw segment: printable ASCII but backslash, with every "%" starting a valid escape.
_RAW_SEGMENT = re.compile(r"(?:[!-$&-\[\]-~]|%[0-9A-Fa-f]{2})*")
# RFC 3986 pchar besides letters, digits and escapes: kept as they are when re-encoding.
_PCHAR = "!$&'()*+,;=:@-._~"
_FORBIDDEN = frozenset("/\\%")


def _refused() -> ResourceNotFound:
    # Names nothing of the path: it may be long, and it is the attacker's text.
    return ResourceNotFound("unknown API path", code="not_found")


def _segment(raw: str) -> str:
    """One path segment, percent-decoded; :func:`_refused` is raised if it is not a plain name."""
    if not _RAW_SEGMENT.fullmatch(raw):
        raise _refused()
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise _refused() from None
    # NFKC folds lookalikes (fullwidth dot and solidus) that some servers fold too.
    for form in {text, unicodedata.normalize("NFKC", text)}:
        if _FORBIDDEN.intersection(form) or any(unicodedata.category(c) == "Cc" for c in form):
            raise _refused()
        core = form.split(";", 1)[0].strip()  # "..;" and ".. " are ".." to some servers
        if core and not core.strip("."):
            raise _refused()
    return text


def upstream_path(raw_path: str) -> str:
    """The path below the upstream's base path for a client's raw ``/v1/...`` path, in one
    canonical encoding (``/models/llama3:8b``); a path that is not a plain one below ``/v1``
    raises :class:`ResourceNotFound`."""
    parts = raw_path.split("/")
    if len(parts) < 3 or parts[0] or _segment(parts[1]) != "v1":
        raise _refused()
    tail = [_segment(part) for part in parts[2:]]
    if "" in tail[:-1]:  # "//": no API path has one, and front ends merge them unpredictably
        raise _refused()
    return "/" + "/".join(quote(segment, safe=_PCHAR) for segment in tail)


async def handle_passthrough(request: web.Request) -> web.StreamResponse:
    """Forward ``request`` to the upstream path below its base path (what follows ``/v1``)
    and stream the answer back."""
    path = upstream_path(request.rel_url.raw_path)
    caller = request[CALLER]
    upstream = request.app[UPSTREAM]
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST_HEADERS}
    headers.update(upstream.auth_headers(caller.upstream_authorization))
    has_body = request.body_exists
    resp_up = await upstream.open(
        request.method,
        path,
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
