"""The one place a generation's output is written to an HTTP client.

It races "forward the next piece" against "the client went away": with
``handler_cancellation`` on, a client that leaves cancels the handler while it waits; a client
that leaves during a write makes the write fail. Either way the subscriber just leaves the
generation, which goes on (or is aborted, by policy) on its own.

While the client keeps up, pieces are written straight to its socket by the generation's
publishing call (:func:`direct_writer`), which saves a task switch per chunk; a client whose
socket buffer fills up is served by this handler's own awaited writes, with back-pressure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from chatproxy.appkeys import LEFT_EARLY
from chatproxy.errors import APIError
from chatproxy.proxy.fanout import Fanout, Subscriber
from chatproxy.proxy.feed import DISCONNECTS, Feed, following
from chatproxy.proxy.generation import Generation

__all__ = ["client_may_leave", "direct_writer", "relay", "relay_events"]

HIGH_WATER = 64 * 1024
_RESETS = (ConnectionResetError, ClientConnectionResetError)


def direct_writer(request: web.Request, resp: web.StreamResponse) -> Callable[[bytes], bool] | None:
    """A non-blocking writer to the client's socket, or ``None`` where there is none.

    It is only used after ``resp.prepare()``: aiohttp sends the head there and writes the body
    straight to the transport, so raw writes interleave in order with ``resp.write``.
    """
    transport = request.transport
    if transport is None or resp.compression:
        return None
    chunked = resp.headers.get("Transfer-Encoding") == "chunked"

    def write(piece: bytes) -> bool:
        if transport.is_closing() or transport.get_write_buffer_size() > HIGH_WATER:
            return False
        if chunked:
            transport.writelines((b"%x\r\n" % len(piece), piece, b"\r\n"))
        else:
            transport.write(piece)
        return True

    return write


async def relay(
    request: web.Request, gen: Generation, headers: Mapping[str, str]
) -> web.StreamResponse:
    """Stream ``gen`` to the client of ``request``, adding ``headers`` to the response head.

    Errors before the upstream answered (an :class:`~chatproxy.errors.APIError` from
    ``gen.wait_head()``) propagate to the error middleware.
    """
    sub = Subscriber()
    resp = None
    with client_may_leave(request), _subscription(gen, gen.output, sub):
        try:
            head = await gen.wait_head()
        except APIError as exc:
            exc.headers = {**exc.headers, **headers}
            raise
        resp = web.StreamResponse(status=head.status, headers=head.headers)
        resp.headers.update(headers)
        await resp.prepare(request)
        sub.direct = direct_writer(request, resp)
        await _follow(resp, gen.output, sub, b"".join)
    assert resp is not None  # a write failed, so the response was prepared
    return resp


async def relay_events(
    request: web.Request, feed: Feed, headers: Mapping[str, str]
) -> web.StreamResponse:
    """Stream ``feed``'s events, each with its ``id: N``, to the client of ``request``."""
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers}
    )
    with client_may_leave(request):
        async with following(feed):
            await resp.prepare(request)
            while (batch := await feed.next()) is not None:
                first = feed.position - len(batch)  # its position is its last event's number
                await resp.write(
                    b"".join(_frame(first + i + 1, data) for i, data in enumerate(batch))
                )
            await resp.write_eof()
    return resp


@contextlib.contextmanager
def client_may_leave(request: web.Request) -> Iterator[None]:
    """Around writing a response: a client that goes away is normal traffic, not an error.

    A write to its closed connection ends the block quietly (the handler then returns its
    response, and aiohttp's own final write meets the closed connection without a traceback);
    a cancelled handler goes on being cancelled. Either way the request is marked
    :data:`~chatproxy.appkeys.LEFT_EARLY` for its access-log line.
    """
    try:
        yield
    except _RESETS:
        request[LEFT_EARLY] = True
    except asyncio.CancelledError:
        request[LEFT_EARLY] = True
        raise


@contextlib.contextmanager
def _subscription(gen: Generation, fanout: Fanout, sub: Subscriber) -> Iterator[None]:
    """``sub`` follows ``fanout`` for the block; leaving by an exception that means the client
    went away counts as a disconnect."""
    gen.subscribe(sub, fanout)
    disconnected = False
    try:
        yield
    except DISCONNECTS:
        disconnected = True
        raise
    finally:
        gen.unsubscribe(sub, fanout, disconnected=disconnected)


def _frame(number: int, data: bytes) -> bytes:
    lines = data.split(b"\n") if b"\n" in data else [data]
    return b"id: %d\n" % number + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


async def _follow(
    resp: web.StreamResponse,
    fanout: Fanout,
    sub: Subscriber,
    render: Callable[[list[bytes]], bytes],
) -> None:
    """Write ``fanout``'s pieces from ``sub``'s position until it is done, then end."""
    pieces = fanout.pieces
    while True:
        n = len(pieces)
        if sub.seen < n:
            seen, sub.seen = sub.seen, n
            await resp.write(render(pieces[seen:n]))
        elif fanout.done:
            break
        else:
            await fanout.wait(sub)
    await resp.write_eof()
