"""Following a generation's events, wherever it runs: every client of a generation reads a
:class:`Feed`.

A feed hands out the generation's events in order, in batches, from a given event number on,
and ``None`` once the stream has ended. :class:`LocalFeed` follows a generation of this process
(or its replay within the grace period), with the upstream's bytes of each event; a feed over
Redis follows one running on another instance (:mod:`chatproxy.engine.shared`), with their data
only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol

from aiohttp.client_exceptions import ClientConnectionResetError

from chatproxy.engine.eventlog import Subscriber

if TYPE_CHECKING:
    from chatproxy.engine.generation import Generation
    from chatproxy.engine.registry import Replay

__all__ = ["DISCONNECTS", "Batch", "Feed", "LocalFeed", "following"]

# What a handler sees when its client went away.
DISCONNECTS = (asyncio.CancelledError, ConnectionResetError, ClientConnectionResetError)


class Batch(NamedTuple):
    """Consecutive events: the number of the first (from 1), their data, and the upstream's
    bytes of each (``None`` where the feed has only the data)."""

    first: int
    data: list[bytes]
    raw: list[bytes] | None = None


class Feed(Protocol):
    """A generation's events from one position on."""

    message_id: str
    #: The number of the last event handed out (events are numbered from 1).
    position: int

    async def next(self) -> Batch | None:
        """The next events (at least one), or ``None`` at the end of the stream."""
        ...

    async def close(self, *, disconnected: bool) -> None:
        """Stop following; ``disconnected`` when the reader's client went away first."""
        ...


class LocalFeed:
    """A feed over a generation (or replay) of this process."""

    def __init__(self, gen: Generation | Replay, after: int = 0) -> None:
        self.message_id = gen.message_id
        self._gen = gen
        self._sub = Subscriber()
        self._sub.seen = self.position = min(after, len(gen.events.pieces))
        gen.subscribe(self._sub, gen.events)

    def write_directly(
        self,
        ready: Callable[[], bool],
        write: Callable[[bytes], None],
        render: Callable[[Batch], bytes],
    ) -> None:
        """From now on, hand events to ``write`` (rendered) in the publishing call whenever the
        reader is caught up and ``ready()`` says the client takes them without blocking."""
        log, sub = self._gen.events, self._sub

        def direct(start: int, stop: int) -> bool:
            if not ready():
                return False
            raw = log.raw[start:stop] if log.raw else None
            out = render(Batch(start + 1, log.pieces[start:stop], raw))
            self.position = stop
            if out:
                write(out)
            return True

        sub.direct = direct

    async def next(self) -> Batch | None:
        log, sub = self._gen.events, self._sub
        while True:
            n = len(log.pieces)
            if sub.seen < n:
                start = sub.seen
                raw = log.raw[start:n] if log.raw else None
                sub.seen = self.position = n
                return Batch(start + 1, log.pieces[start:n], raw)
            if log.done:
                return None
            await log.wait(sub)

    @property
    def at_end(self) -> bool:
        """Whether every event was handed out and no more will come."""
        log = self._gen.events
        return log.done and self._sub.seen == len(log.pieces)

    async def close(self, *, disconnected: bool) -> None:
        self._sub.direct = None
        self._gen.unsubscribe(self._sub, self._gen.events, disconnected=disconnected)


@contextlib.asynccontextmanager
async def following(feed: Feed) -> AsyncIterator[Feed]:
    """Use ``feed`` for the block, then close it; leaving by an exception that means the client
    went away counts as a disconnect."""
    disconnected = False
    try:
        yield feed
    except DISCONNECTS:
        disconnected = True
        raise
    finally:
        await feed.close(disconnected=disconnected)
