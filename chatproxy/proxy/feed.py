"""Following a generation's events, wherever it runs: the resume endpoints read a :class:`Feed`.

A feed hands out the data of the generation's SSE events in order, in batches, from a given
event number on, and ``None`` once the stream has ended. :class:`LocalFeed` follows a
generation of this process (or its replay within the grace period); a feed over Redis follows
one running on another instance (:mod:`chatproxy.proxy.shared`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

from aiohttp.client_exceptions import ClientConnectionResetError

from chatproxy.proxy.fanout import Subscriber

if TYPE_CHECKING:
    from chatproxy.proxy.generation import Generation
    from chatproxy.proxy.registry import Replay

__all__ = ["DISCONNECTS", "Feed", "LocalFeed", "following"]

# What a handler sees when its client went away.
DISCONNECTS = (asyncio.CancelledError, ConnectionResetError, ClientConnectionResetError)


class Feed(Protocol):
    """A generation's events from one position on."""

    message_id: str
    #: The number of the last event handed out (events are numbered from 1).
    position: int

    async def next(self) -> list[bytes] | None:
        """The next events' data (at least one), or ``None`` at the end of the stream."""
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

    async def next(self) -> list[bytes] | None:
        fanout, sub = self._gen.events, self._sub
        while True:
            n = len(fanout.pieces)
            if sub.seen < n:
                batch = fanout.pieces[sub.seen : n]
                sub.seen = self.position = n
                return batch
            if fanout.done:
                return None
            await fanout.wait(sub)

    async def close(self, *, disconnected: bool) -> None:
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
