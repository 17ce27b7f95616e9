"""The one loop that writes a generation's events to an HTTP client.

Every face follows a :class:`~chatproxy.engine.feed.Feed` and supplies a :class:`Rendering`:
the response head, and the bytes of each batch of events (the chat-completions face forwards
the upstream's own bytes; a resuming client gets numbered events; the AI SDK face, UI message
parts). :func:`write_feed` races "write the next events" against "the client went away": with
``handler_cancellation`` on, a client that leaves cancels the handler while it waits; a client
that leaves during a write makes the write fail. Either way the reader just leaves the
generation, which goes on (or is aborted, by policy) on its own.

While the client keeps up, a local generation's events are written straight to its socket by
the publishing call (:meth:`~chatproxy.engine.feed.LocalFeed.write_directly`), which saves a
task switch per chunk; a client whose socket buffer fills up is served by the handler's own
awaited writes, with back-pressure.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from chatproxy.appkeys import LEFT_EARLY
from chatproxy.engine.feed import DISCONNECTS, Batch, Feed, LocalFeed

__all__ = [
    "EVENT_STREAM_HEADERS",
    "NumberedEvents",
    "Rendering",
    "client_may_leave",
    "direct_writer",
    "write_feed",
]

HIGH_WATER = 64 * 1024
_RESETS = (ConnectionResetError, ClientConnectionResetError)
EVENT_STREAM_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class Rendering(ABC):
    """How a face writes a generation's events to its client (the defaults: an event stream
    that adds nothing before or after the events)."""

    #: Whether :meth:`render` may run inside the publishing call (it is quick and never waits).
    direct = True

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = headers

    async def head(self) -> tuple[int, Mapping[str, str]]:
        """The response's status and headers; an :class:`~chatproxy.errors.APIError` raised
        here is the response instead (nothing was sent)."""
        return 200, {**EVENT_STREAM_HEADERS, **self.headers}

    def start(self) -> bytes:
        """What goes before the first event."""
        return b""

    @abstractmethod
    def render(self, batch: Batch) -> bytes:
        """The bytes of these events."""

    async def end(self) -> bytes:
        """What goes after the last event."""
        return b""


class NumberedEvents(Rendering):
    """Each event's data as an SSE event with its number (``id: N``), as resuming clients
    get them."""

    def render(self, batch: Batch) -> bytes:
        first = batch.first
        return b"".join(_frame(first + i, data) for i, data in enumerate(batch.data))


def _frame(number: int, data: bytes) -> bytes:
    lines = data.split(b"\n") if b"\n" in data else [data]
    return b"id: %d\n" % number + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


def direct_writer(
    request: web.Request, resp: web.StreamResponse
) -> tuple[Callable[[], bool], Callable[[bytes], None]] | None:
    """Whether the client's socket takes bytes without blocking, and a writer to it; ``None``
    where there is none.

    It is only used after ``resp.prepare()``: aiohttp sends the head there and writes the body
    straight to the transport, so raw writes interleave in order with ``resp.write``.
    """
    transport = request.transport
    if transport is None or resp.compression:
        return None
    chunked = resp.headers.get("Transfer-Encoding") == "chunked"

    def ready() -> bool:
        return not transport.is_closing() and transport.get_write_buffer_size() <= HIGH_WATER

    def write(piece: bytes) -> None:
        if chunked:
            transport.writelines((b"%x\r\n" % len(piece), piece, b"\r\n"))
        else:
            transport.write(piece)

    return ready, write


async def write_feed(request: web.Request, feed: Feed, rendering: Rendering) -> web.StreamResponse:
    """Write ``feed``'s events to the client of ``request`` as ``rendering`` says, to the end.

    An :class:`~chatproxy.errors.APIError` from ``rendering.head()`` propagates to the error
    middleware.
    """
    resp = None
    disconnected = False  # following(feed), inline: this runs for every request
    with client_may_leave(request):
        try:
            status, headers = await rendering.head()
            resp = web.StreamResponse(status=status, headers=headers)
            await resp.prepare(request)
            out = rendering.start()
            if out:
                await resp.write(out)
            if rendering.direct and isinstance(feed, LocalFeed):
                writer = direct_writer(request, resp)
                if writer is not None:
                    feed.write_directly(*writer, rendering.render)
            last = b""  # the last events' bytes, written with the end of the body
            local = feed if isinstance(feed, LocalFeed) and _ends_at_once(rendering) else None
            while (batch := await feed.next()) is not None:
                out = rendering.render(batch)
                if out:
                    if local is not None and local.at_end:
                        last = out
                        break
                    await resp.write(out)
            out = await rendering.end()
            await resp.write_eof(last + out)
        except DISCONNECTS:
            disconnected = True
            raise
        finally:
            await feed.close(disconnected=disconnected)
    assert resp is not None  # a write failed, so the response was prepared
    return resp


def _ends_at_once(rendering: Rendering) -> bool:
    """Whether ``rendering`` adds nothing after the last event (its ``end`` is the default):
    the last events can wait for the end of the stream, which follows them at once."""
    return type(rendering).end is Rendering.end


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
