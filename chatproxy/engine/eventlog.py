"""A generation's numbered event log, for any number of subscribers.

Event ``N`` (numbered from 1) is ``pieces[N - 1]``, its data (what a resuming client and the
AI SDK face read), and ``raw[N - 1]``, the upstream's own bytes that carried it (what the
requesting chat-completions client is sent; a non-streamed answer's body pieces are both).
Each subscriber reads from its own position. A subscriber that is waiting, caught up, and can
take new events without blocking (its ``direct`` writer) is handed them in the publishing call
itself, so a streaming client costs no task switch per chunk; otherwise its task is woken and
catches up on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

__all__ = ["EventLog", "Subscriber"]


class Subscriber:
    """One reader of an :class:`EventLog`: its position, and how to hand it events directly."""

    __slots__ = ("direct", "seen", "waiter")

    def __init__(self, direct: Callable[[int, int], bool] | None = None) -> None:
        self.seen = 0
        self.waiter: asyncio.Future[None] | None = None
        # Writes events [start, stop) without blocking and says whether it did; None: wake.
        self.direct = direct


class EventLog:
    """Events published in order, and the subscribers following them."""

    __slots__ = ("done", "pieces", "raw", "subscribers")

    def __init__(self, pieces: list[bytes] | None = None, *, done: bool = False) -> None:
        self.pieces: list[bytes] = [] if pieces is None else pieces
        self.raw: list[bytes] = []  # empty in a replay, which keeps the data only
        self.done = done
        self.subscribers: list[Subscriber] = []

    def publish(self, data: list[bytes], raw: list[bytes]) -> None:
        """Append events (their data, and the bytes that carried each)."""
        start = len(self.pieces)
        self.pieces += data
        self.raw += raw
        n = len(self.pieces)
        for sub in self.subscribers:
            waiter = sub.waiter
            if waiter is None or waiter.done():
                continue
            if sub.seen == start and sub.direct is not None and sub.direct(start, n):
                sub.seen = n
            else:
                waiter.set_result(None)

    def end(self, data: Sequence[bytes] = (), raw: Sequence[bytes] = ()) -> None:
        """No more events after ``data`` (the last ones, and the bytes of each): wake every
        subscriber. The last events are never handed over directly: a reader takes them with
        the end, and writes both at once."""
        self.pieces += data
        self.raw += raw
        self.done = True
        for sub in self.subscribers:
            if sub.waiter is not None and not sub.waiter.done():
                sub.waiter.set_result(None)

    async def wait(self, sub: Subscriber) -> None:
        """Return once ``sub`` has events to read, or the log is done."""
        if sub.seen < len(self.pieces) or self.done:
            return
        sub.waiter = asyncio.get_running_loop().create_future()
        try:
            await sub.waiter
        finally:
            sub.waiter = None
