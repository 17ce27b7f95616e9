"""Idle and total time limits for reading an upstream body, at one timer per idle period.

``asyncio.timeout`` rescheduled before every read costs a timer per chunk; here a read only
records the time, and one timer checks it when it is due.
"""

from __future__ import annotations

import asyncio
from typing import Literal

__all__ = ["Watchdog"]


class Watchdog:
    """Cancels ``task`` when nothing was read for ``idle`` seconds or at ``deadline``.

    After a cancellation, :attr:`fired` says which limit it was (``None``: a cancellation from
    elsewhere, which the caller must let through).
    """

    __slots__ = ("_deadline", "_handle", "_idle", "_loop", "_task", "fired", "last")

    def __init__(self, task: asyncio.Task[object], *, idle: float, deadline: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = task
        self._idle = idle
        self._deadline = deadline
        self.last = self._loop.time()
        self.fired: Literal["idle", "deadline"] | None = None
        self._handle = self._loop.call_at(min(self.last + idle, deadline), self._check)

    def _check(self) -> None:
        now = self._loop.time()
        if now >= self._deadline:
            self.fired = "deadline"
        elif now - self.last >= self._idle:
            self.fired = "idle"
        else:
            self._handle = self._loop.call_at(
                min(self.last + self._idle, self._deadline), self._check
            )
            return
        self._task.cancel()

    def disarm(self) -> None:
        """Stop watching; after a firing, undo its cancellation request on the task."""
        self._handle.cancel()
        if self.fired is not None:
            self._task.uncancel()
