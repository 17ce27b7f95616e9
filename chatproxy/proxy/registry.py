"""This process's generations, by chat: at most one running per chat, and the events of
finished ones kept for the resume grace period (a client that comes back just after the end
still gets it all).

Only the finished stream's events are kept (not the generation, its request or its raw
output), and within a memory budget: under a flood of short answers the oldest replays go
first, before their grace period is over.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

from chatproxy.proxy.fanout import Fanout, Subscriber
from chatproxy.proxy.generation import Generation

__all__ = ["REPLAY_BUDGET_BYTES", "Generations", "Replay"]

REPLAY_BUDGET_BYTES = 16 * 1024 * 1024


@dataclass(slots=True)
class Replay:
    """A finished stream, as a resuming client needs it."""

    chat_id: str
    message_id: str
    events: Fanout
    size: int
    stream: bool = True

    def subscribe(self, sub: Subscriber, to: Fanout) -> None:
        to.subscribers.append(sub)

    def unsubscribe(self, sub: Subscriber, to: Fanout, *, disconnected: bool) -> None:
        to.subscribers.remove(sub)


class Generations:
    """The registry the chat handler, the resume endpoint and shutdown share."""

    def __init__(self, grace: float, *, budget: int = REPLAY_BUDGET_BYTES) -> None:
        self.grace = grace
        self.budget = budget
        # Usually one per chat; more only on different branches (X-Chat-Parent).
        self.running: dict[str, list[Generation]] = {}
        self._finished: OrderedDict[str, Replay] = OrderedDict()
        self._finished_bytes = 0

    def add(self, gen: Generation) -> None:
        """Register a started generation (the caller checked :meth:`busy` without awaiting)."""
        assert gen.task is not None
        self.running.setdefault(gen.chat_id, []).append(gen)
        gen.task.add_done_callback(lambda _: self._finish(gen))

    def busy(self, chat_id: str, branch_from: str | None = None) -> bool:
        """Whether a new answer in the chat must wait: always while one runs, unless the
        request names a branch point (``X-Chat-Parent``) no running answer hangs from."""
        running = self.running.get(chat_id)
        if not running:
            return False
        if branch_from is None:
            return True
        return any(g.turn is not None and g.turn.parent_id == branch_from for g in running)

    def find(self, chat_id: str) -> Generation | Replay | None:
        """The chat's newest running generation, or the replay of one that ended within the
        grace period."""
        running = self.running.get(chat_id)
        return running[-1] if running else self._finished.get(chat_id)

    def _finish(self, gen: Generation) -> None:
        running = self.running.get(gen.chat_id, [])
        if gen in running:
            running.remove(gen)
            if not running:
                del self.running[gen.chat_id]
        if self.grace <= 0 or not gen.stream:
            return
        size = sum(len(data) for data in gen.events.pieces) + 64 * len(gen.events.pieces)
        replay = Replay(gen.chat_id, gen.message_id, gen.events, size)
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
