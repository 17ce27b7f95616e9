"""Instance heartbeats: each instance records that it is alive, and takes over the cleanup of
instances that stopped (kill -9, a lost machine): their in-progress answers become
``interrupted``, as start-up recovery would have done had they come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from chatproxy.store.store import Store, utcnow

__all__ = ["Heartbeat"]

log = logging.getLogger("chatproxy.heartbeat")


class Heartbeat:
    """Beats every ``interval`` seconds and reaps instances silent for ``timeout`` seconds."""

    def __init__(
        self,
        store: Store,
        *,
        interval: float,
        timeout: float,
        on_reaped: Callable[[int], object] | None = None,
    ) -> None:
        self._store = store
        self._on_reaped = on_reaped
        self._interval = interval
        self._timeout = timeout
        self._started_at = utcnow()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Record this instance as alive, then keep beating in the background."""
        await self._store.heartbeat(self._started_at)
        self._task = asyncio.create_task(self._run(), name="heartbeat")

    async def beat(self) -> dict[str, int]:
        """One heartbeat and one reaping round; returns the messages marked, by instance."""
        await self._store.heartbeat(self._started_at)
        reaped = await self._store.reap_instances(self._timeout)
        for instance, count in reaped.items():
            log.warning(
                "instance %s stopped heartbeating: marked %d of its unfinished message(s) "
                "as interrupted",
                instance,
                count,
            )
            if self._on_reaped is not None:
                self._on_reaped(count)
        return reaped

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.beat()
            except Exception as exc:  # the store is down: try again next time
                log.warning("heartbeat failed: %r", exc)

    async def stop(self) -> None:
        """Stop beating and remove this instance's record (a clean stop)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._store.leave()
