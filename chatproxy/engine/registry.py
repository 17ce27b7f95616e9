"""This process's generations, by chat: at most one running per chat, and the events of
finished ones kept for the resume grace period (a client that comes back just after the end
still gets it all).

Only the finished stream's events are kept (not the generation, its request or its raw
output), and within a memory budget: under a flood of short answers the oldest replays go
first, before their grace period is over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from chatproxy.engine.eventlog import EventLog, Subscriber
from chatproxy.engine.generation import Generation
from chatproxy.engine.shared import SharedGenerations
from chatproxy.store.batch import Turn

__all__ = ["REPLAY_BUDGET_BYTES", "Generations", "Replay"]

REPLAY_BUDGET_BYTES = 16 * 1024 * 1024


@dataclass(slots=True)
class Replay:
    """A finished stream, as a resuming client needs it."""

    chat_id: str
    message_id: str
    events: EventLog
    size: int
    stream: bool = True

    def subscribe(self, sub: Subscriber, to: EventLog) -> None:
        to.subscribers.append(sub)

    def unsubscribe(self, sub: Subscriber, to: EventLog, *, disconnected: bool) -> None:
        to.subscribers.remove(sub)


class _OneAtATime:
    """The block of :meth:`Generations.one_at_a_time` (a class: it is entered per request)."""

    __slots__ = ("_done", "_key", "_serial")

    def __init__(self, serial: dict[str, asyncio.Future[None]], key: str) -> None:
        self._serial = serial
        self._key = key
        self._done: asyncio.Future[None] | None = None

    async def __aenter__(self) -> None:
        serial, key = self._serial, self._key
        while (running := serial.get(key)) is not None:
            await asyncio.shield(running)
        self._done = serial[key] = asyncio.get_running_loop().create_future()

    async def __aexit__(self, *exc: object) -> None:
        del self._serial[self._key]
        assert self._done is not None
        self._done.set_result(None)


class Generations:
    """The registry the chat handler, the resume endpoint and shutdown share."""

    def __init__(
        self,
        grace: float,
        *,
        budget: int = REPLAY_BUDGET_BYTES,
        shared: SharedGenerations | None = None,
    ) -> None:
        self.grace = grace
        self.budget = budget
        self.shared = shared
        # Usually one per chat; more only on different branches (X-Chat-Parent).
        self.running: dict[str, list[Generation]] = {}
        # The answers claimed in each chat (message id -> branch point), from the claim until
        # their generation ends.
        self._claims: dict[str, dict[str, str | None]] = {}
        self._finished: OrderedDict[str, Replay] = OrderedDict()
        self._finished_bytes = 0
        self._serial: dict[str, asyncio.Future[None]] = {}

    def one_at_a_time(self, key: str) -> _OneAtATime:
        """Run the block for one request with ``key`` at a time on this instance; others with
        the same key wait until it is over."""
        return _OneAtATime(self._serial, key)

    @contextlib.asynccontextmanager
    async def across_instances(self, key: str) -> AsyncIterator[None]:
        """With Redis, the same for every instance (a lock in Redis, two round trips: taken
        only where a duplicate would do harm); without, nothing more."""
        token = await self.shared.lock(key) if self.shared is not None else None
        try:
            yield
        finally:
            if token is not None:
                assert self.shared is not None
                await asyncio.shield(self.shared.unlock(key, token))

    async def claim(self, turn: Turn, branch_from: str | None = None) -> bool:
        """Claim the chat for ``turn``'s answer; False while another answer runs there (on any
        instance, with Redis), unless ``branch_from`` names a branch point no running answer
        hangs from. A claim lasts until the answer is stored (before its end is published), or
        until :meth:`release`."""
        chat_id = turn.chat_id
        if self.busy(chat_id, branch_from):
            return False
        # Claimed here before asking Redis: no second request on this instance gets in
        # while the claim is in flight.
        self._claims.setdefault(chat_id, {})[turn.assistant_id] = turn.parent_id
        if self.shared is None:
            return True
        try:
            claimed = await self.shared.claim(
                chat_id, turn.assistant_id, turn.parent_id, branch_from
            )
        except BaseException:  # the client left while Redis answered: the claim may be made
            self.release(turn)
            raise
        if not claimed:
            self._unclaim(chat_id, turn.assistant_id)
        return claimed

    def release(self, turn: Turn) -> None:
        """Give up a claim whose generation never started."""
        self._unclaim(turn.chat_id, turn.assistant_id)
        if self.shared is not None:
            task = asyncio.ensure_future(self.shared.release(turn.chat_id, turn.assistant_id))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def busy(self, chat_id: str, branch_from: str | None = None) -> bool:
        """Whether this instance runs an answer the chat must wait for."""
        claims = self._claims.get(chat_id)
        if not claims:
            return False
        return branch_from is None or branch_from in claims.values()

    async def busy_anywhere(self, chat_id: str) -> bool:
        """Whether an answer runs in the chat, here or (with Redis) on another instance."""
        if self.busy(chat_id):
            return True
        return self.shared is not None and await self.shared.busy(chat_id)

    async def forget(self, chat_id: str) -> None:
        """Drop what is kept of the chat's finished streams (the chat was deleted)."""
        self._drop(chat_id)
        if self.shared is not None:
            await self.shared.forget(chat_id)

    def add(self, gen: Generation) -> None:
        """Register a started generation of a claimed turn."""
        assert gen.task is not None
        self.running.setdefault(gen.chat_id, []).append(gen)
        gen.task.add_done_callback(lambda _: self._finish(gen))
        gen.before_end = self._answered
        if self.shared is not None:
            self.shared.mirror(gen)

    async def _answered(self, gen: Generation) -> None:
        """The answer is stored: free the chat before its end reaches any client."""
        self._unclaim(gen.chat_id, gen.message_id)
        if self.shared is not None:
            await self.shared.release(gen.chat_id, gen.message_id)

    def find(self, chat_id: str) -> Generation | Replay | None:
        """The chat's newest running generation, or the replay of one that ended within the
        grace period."""
        running = self.running.get(chat_id)
        return running[-1] if running else self._finished.get(chat_id)

    def _unclaim(self, chat_id: str, message_id: str) -> None:
        claims = self._claims.get(chat_id, {})
        claims.pop(message_id, None)
        if not claims:
            self._claims.pop(chat_id, None)

    def _finish(self, gen: Generation) -> None:
        self._unclaim(gen.chat_id, gen.message_id)
        running = self.running.get(gen.chat_id, [])
        if gen in running:
            running.remove(gen)
            if not running:
                del self.running[gen.chat_id]
        if self.grace <= 0 or not gen.stream:
            return
        pieces = gen.events.pieces
        size = sum(map(len, pieces)) + 64 * len(pieces)
        # The data alone: a resuming client never gets the upstream's bytes.
        replay = Replay(gen.chat_id, gen.message_id, EventLog(pieces, done=True), size)
        self._drop(gen.chat_id)
        self._finished[gen.chat_id] = replay
        self._finished_bytes += size
        while self._finished_bytes > self.budget and self._finished:
            self._drop(next(iter(self._finished)))
        asyncio.get_running_loop().call_later(self.grace, self._forget, replay)

    def _forget(self, replay: Replay) -> None:
        if self._finished.get(replay.chat_id) is replay:
            self._drop(replay.chat_id)

    def _drop(self, chat_id: str) -> None:
        replay = self._finished.pop(chat_id, None)
        if replay is not None:
            self._finished_bytes -= replay.size

    async def drain(self, grace: float) -> None:
        """Let running generations finish for up to ``grace`` s, then stop the rest (their
        answers are stored as ``interrupted``)."""
        tasks = [g.task for gens in self.running.values() for g in gens if g.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def close(self) -> None:
        """After :meth:`drain`: finish sharing the last events, close the Redis client."""
        if self.shared is not None:
            await self.shared.close()
