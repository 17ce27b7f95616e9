"""This process's generations, by chat: at most one running per chat, and finished ones kept
for the resume grace period (a client that comes back just after the end still gets it all)."""

from __future__ import annotations

import asyncio

from chatproxy.proxy.generation import Generation

__all__ = ["Generations"]


class Generations:
    """The registry the chat handler, the resume endpoint and shutdown share."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.running: dict[str, Generation] = {}
        self._finished: dict[str, Generation] = {}

    def add(self, gen: Generation) -> None:
        """Register a started generation (the caller checked :meth:`busy` without awaiting)."""
        assert gen.task is not None
        self.running[gen.chat_id] = gen
        gen.task.add_done_callback(lambda _: self._finish(gen))

    def busy(self, chat_id: str) -> bool:
        return chat_id in self.running

    def find(self, chat_id: str) -> Generation | None:
        """The chat's running generation, or the one that ended within the grace period."""
        return self.running.get(chat_id) or self._finished.get(chat_id)

    def _finish(self, gen: Generation) -> None:
        if self.running.get(gen.chat_id) is gen:
            del self.running[gen.chat_id]
        if self.grace > 0:
            self._finished[gen.chat_id] = gen
            asyncio.get_running_loop().call_later(self.grace, self._forget, gen)

    def _forget(self, gen: Generation) -> None:
        if self._finished.get(gen.chat_id) is gen:
            del self._finished[gen.chat_id]

    async def drain(self, grace: float) -> None:
        """Let running generations finish for up to ``grace`` s, then stop the rest (their
        answers are stored as ``interrupted``)."""
        tasks = [g.task for g in self.running.values() if g.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
