"""A generation's output, in order, for any number of subscribers.

Each subscriber reads :attr:`Fanout.pieces` from its own position. A subscriber that is
waiting, caught up, and can take a piece without blocking (its ``direct`` writer) is handed
the piece in the publishing call itself, so a streaming client costs no task switch per chunk;
otherwise its task is woken and catches up on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Fanout", "Subscriber"]


class Subscriber:
    """One reader of a :class:`Fanout`: its position, and how to hand it a piece directly."""

    __slots__ = ("direct", "seen", "waiter")

    def __init__(self, direct: Callable[[bytes], bool] | None = None) -> None:
        self.seen = 0
        self.waiter: asyncio.Future[None] | None = None
        # Writes a piece without blocking and says whether it did; None: always wake.
        self.direct = direct


class Fanout:
    """Pieces published in order, and the subscribers following them."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.done = False
        self.subscribers: list[Subscriber] = []

    def publish(self, piece: bytes) -> None:
        self.pieces.append(piece)
        n = len(self.pieces)
        for sub in self.subscribers:
            waiter = sub.waiter
            if waiter is None or waiter.done():
                continue
            if sub.seen == n - 1 and sub.direct is not None and sub.direct(piece):
                sub.seen = n
            else:
                waiter.set_result(None)

    def end(self) -> None:
        """No more pieces: wake every subscriber."""
        self.done = True
        for sub in self.subscribers:
            if sub.waiter is not None and not sub.waiter.done():
                sub.waiter.set_result(None)

    async def wait(self, sub: Subscriber) -> None:
        """Return once ``sub`` has pieces to read, or the fanout is done."""
        if sub.seen < len(self.pieces) or self.done:
            return
        sub.waiter = asyncio.get_running_loop().create_future()
        try:
            await sub.waiter
        finally:
            sub.waiter = None
