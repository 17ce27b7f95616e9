"""Delivery of the outbox's events to the ``on_event`` hooks, off the request path.

One task per serving store (:meth:`Store.attach_plugins`). A round finds the rows that may be
delivered now (a read), claims up to :attr:`EventDelivery.batch` of them with a lease (a short
write, see :mod:`chatproxy.store.outbox`), calls every ``on_event`` implementation for each
event — events of one chat one after the other, in order; chats side by side — and settles
the rows: delivered when every implementation returned, else offered again after a growing
wait (:attr:`retry_first` doubling up to :attr:`retry_longest`). An implementation that
raises, or takes longer than :attr:`call_timeout`, is logged with its plugin's name and
counted (:meth:`Plugins.failed`); an event that keeps failing for :attr:`give_up_after` is
dropped with an error in the log. The task wakes when the store commits events, and looks
every :attr:`poll` seconds anyway (events written by the CLI or another instance, retries
coming due). Delivered rows are deleted after :attr:`keep_delivered`.

A coroutine function is awaited on the event loop; a plain function runs in a worker thread,
so that a blocking one never holds the loop (a plain function returning an awaitable has it
awaited too). Delivery is at least once: a round cut by a crash leaves its rows leased to
this instance, offered again when it starts again (or once another instance reaps it, or the
lease expires), with the same event ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from chatproxy.plugins.hookspecs import Event
from chatproxy.store import outbox

if TYPE_CHECKING:
    from chatproxy.metrics import Metrics
    from chatproxy.plugins.manager import Plugins
    from chatproxy.store.store import Store

__all__ = ["HOOK", "EventDelivery"]

log = logging.getLogger("chatproxy.plugins.events")
HOOK = "on_event"


class EventDelivery:
    """Delivers a store's outbox to the ``on_event`` implementations of ``plugins``."""

    batch = 100  # rows claimed per round
    concurrency = 16  # chats delivered at once
    lease = 120.0  # seconds a claimed row is left to this instance
    poll = 1.0  # seconds between two looks when nothing woke the task
    gap = 0.05  # seconds at least between two rounds that delivered nothing
    call_timeout = 300.0  # seconds one implementation may take for one event
    retry_first = 1.0  # seconds before a failed event is tried again, doubling...
    retry_longest = 600.0  # ...up to this
    give_up_after = 3 * 86400.0  # seconds after which a failing event is dropped
    keep_delivered = 3600.0  # seconds a delivered row is kept
    purge_every = 60.0  # seconds between two deletes of delivered rows
    stop_grace = 5.0  # seconds a clean stop lets the round under way finish

    def __init__(self, store: Store, plugins: Plugins, metrics: Metrics | None = None) -> None:
        self._store = store
        self._plugins = plugins
        self._impls: list[tuple[str, Callable[..., Any]]] = plugins.implementations(HOOK)
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._delivered: Counter | None = None
        if metrics is not None:
            self._delivered = Counter(
                "chatproxy_events_delivered",
                "Plugin events delivered to every on_event implementation",
                registry=metrics.registry,
            )

    @property
    def owner(self) -> str:
        """The lease owner: this store's instance."""
        return self._store.instance_id

    def start(self) -> None:
        """Start the delivery task."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="chatproxy-event-delivery")

    def wake(self) -> None:
        """Events were committed: look now."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop after the round under way (at most :attr:`stop_grace` seconds), then give back
        the leases of what was not delivered."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), self.stop_grace)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await outbox.release(self._store, self.owner)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            # Rows this instance had claimed before it last stopped (kill -9): offered again.
            await outbox.release(self._store, self.owner)
        except Exception as exc:
            log.warning("could not release this instance's event leases: %r", exc)
        next_purge = loop.time() + self.purge_every
        while not self._stopping:
            self._wake.clear()
            handled = 0
            try:
                handled = await self.round()
                if loop.time() >= next_purge:
                    next_purge = loop.time() + self.purge_every
                    await self.purge()
            except Exception as exc:  # the store is down: look again later
                log.warning("event delivery round failed: %r", exc)
            if handled or self._stopping:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)
            await asyncio.sleep(self.gap)

    async def round(self) -> int:
        """One round: claim, deliver, settle; how many rows it took."""
        seqs = await outbox.candidates(self._store, self.batch)
        claimed = await outbox.claim(self._store, seqs, self.owner, self.lease)
        if not claimed:
            return 0
        by_chat: dict[str, list[outbox.Claimed]] = {}
        for row in claimed:
            by_chat.setdefault(row.event.chat_id, []).append(row)
        delivered: list[int] = []
        again: dict[int, float] = {}
        limit = asyncio.Semaphore(self.concurrency)

        async def chat(rows: list[outbox.Claimed]) -> None:
            async with limit:
                for i, row in enumerate(rows):
                    if await self.deliver(row.event):
                        delivered.append(row.seq)
                        continue
                    if self._too_old(row.event):
                        log.error(
                            "dropping event %s (%s of chat %s): undelivered after %d attempts",
                            row.event.id,
                            row.event.type,
                            row.event.chat_id,
                            row.attempts,
                        )
                        delivered.append(row.seq)
                        continue
                    again[row.seq] = self._backoff(row.attempts)
                    # The chat's later events wait behind this one (offered again at once,
                    # claimable once it is delivered).
                    again.update((later.seq, 0.0) for later in rows[i + 1 :])
                    return

        await asyncio.gather(*(chat(rows) for rows in by_chat.values()))
        await outbox.settle(self._store, delivered, again)
        if self._delivered is not None and delivered:
            self._delivered.inc(len(delivered))
        return len(claimed)

    async def deliver(self, event: Event) -> bool:
        """Call every implementation with ``event``; whether all of them returned."""
        ok = True
        for name, fn in self._impls:
            try:
                await asyncio.wait_for(self._call(fn, event), self.call_timeout)
            except Exception as exc:
                self._plugins.failed(name, HOOK, exc)
                ok = False
        return ok

    @staticmethod
    async def _call(fn: Callable[..., Any], event: Event) -> None:
        if inspect.iscoroutinefunction(fn):
            await fn(event=event)
            return
        result = await asyncio.to_thread(fn, event=event)
        if inspect.isawaitable(result):
            await result

    def _backoff(self, attempts: int) -> float:
        wait = min(self.retry_first * 2 ** max(attempts - 1, 0), self.retry_longest)
        return wait * random.uniform(0.8, 1.2)  # instances retrying together spread out

    def _too_old(self, event: Event) -> bool:
        return (datetime.now(UTC) - event.created_at).total_seconds() > self.give_up_after

    async def purge(self) -> int:
        """Delete the rows delivered more than :attr:`keep_delivered` ago; how many."""
        before = outbox.now_ms() - int(self.keep_delivered * 1000)
        total = 0
        while (n := await outbox.purge_delivered(self._store, before, 1000)) > 0:
            total += n
            if n < 1000:
                break
        return total
