"""The store API: the only code that writes rows.

Reads run directly. Writes go through one writer task that drains its queue and applies
everything queued in one short transaction, so a burst of requests costs one commit, and no
transaction is ever held open across network I/O. Checkpoints of the same message coalesce:
only the newest one is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from tortoise.context import TortoiseContext
from tortoise.transactions import in_transaction

from chatproxy.store.db import open_database
from chatproxy.store.models import Chat, Message, User

__all__ = ["NewMessage", "Store", "ThreadMatch", "Turn", "utcnow"]

log = logging.getLogger("chatproxy.store")
T = TypeVar("T")


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


@dataclass(slots=True)
class NewMessage:
    """A message of the request that is not stored yet."""

    id: str
    role: str
    data: dict[str, Any]
    text: str
    prefix_hash: str


@dataclass(slots=True)
class Turn:
    """Everything one chat-completions request adds to the store at its start."""

    user_id: str
    chat_id: str
    chat_is_new: bool
    title: str | None
    parent_id: str | None
    new_messages: list[NewMessage]
    assistant_id: str
    params: dict[str, Any]
    model: str | None
    instance_id: str
    created_at: datetime = field(default_factory=utcnow)


@dataclass(slots=True, frozen=True)
class ThreadMatch:
    """The longest stored prefix of a request's messages."""

    message_id: str
    chat_id: str
    index: int  # 0-based index into the request's messages


_Op = Callable[[], Awaitable[Any]]


class Store:
    """Owns the database connection (a Tortoise context of its own) and the writer task."""

    def __init__(self, url: str, *, instance_id: str = "local") -> None:
        self.url = url
        self.instance_id = instance_id
        self._ctx: TortoiseContext | None = None
        self._queue: asyncio.Queue[tuple[_Op, asyncio.Future[Any] | None]] = asyncio.Queue()
        self._checkpoints: dict[str, dict[str, Any]] = {}
        self._writer: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> None:
        """Connect, apply migrations, start the writer."""
        self._ctx = await open_database(self.url, migrate=migrate)
        with self._ctx:
            self._writer = asyncio.create_task(self._write_loop(), name="chatproxy-store-writer")

    async def close(self) -> None:
        """Flush pending writes, stop the writer, close the connection."""
        if self._writer is not None:
            await self._call(_noop)  # everything queued before this is written
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._ctx is not None:
            await self._ctx.close_connections()
            self._ctx = None

    @property
    def ctx(self) -> TortoiseContext:
        if self._ctx is None:
            raise RuntimeError("store is not open")
        return self._ctx

    async def ping(self) -> bool:
        """True when the database answers."""
        try:
            with self.ctx:
                await self.ctx.db("default").execute_query("SELECT 1")
        except Exception:
            log.exception("store ping failed")
            return False
        return True

    # -- the writer --------------------------------------------------------------------------

    async def _call(self, op: _Op) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((op, fut))
        return await fut

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                async with in_transaction():
                    results = [await op() for op, _ in batch]
            except Exception:
                # One bad write must not take the others down: replay them one by one.
                for op, fut in batch:
                    await self._run_alone(op, fut)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if fut is not None and not fut.done():
                    fut.set_result(result)

    async def _run_alone(self, op: _Op, fut: asyncio.Future[Any] | None) -> None:
        try:
            async with in_transaction():
                result = await op()
        except Exception as exc:
            if fut is None:
                log.exception("store write failed")
            elif not fut.done():
                fut.set_exception(exc)
        else:
            if fut is not None and not fut.done():
                fut.set_result(result)

    # -- writes ------------------------------------------------------------------------------

    async def ensure_user(self, user_id: str, name: str, tier: str | None = None) -> None:
        """Create the user if it does not exist yet."""

        async def op() -> None:
            await User.bulk_create([User(id=user_id, name=name, tier=tier)], ignore_conflicts=True)

        await self._call(op)

    async def begin_turn(self, turn: Turn) -> None:
        """Store the request's new messages and the assistant placeholder, together."""
        await self._call(lambda: _write_turn(turn))

    def checkpoint(self, message_id: str, fields: dict[str, Any]) -> None:
        """Queue a checkpoint of a running message; does not wait (hot path)."""
        pending = self._checkpoints.get(message_id)
        self._checkpoints[message_id] = fields
        if pending is None:
            self._queue.put_nowait((lambda: self._write_checkpoint(message_id), None))

    async def _write_checkpoint(self, message_id: str) -> None:
        fields = self._checkpoints.pop(message_id, None)
        if fields:
            await Message.filter(id=message_id, status="in_progress").update(**fields)

    async def finish(self, message_id: str, chat_id: str, fields: dict[str, Any]) -> None:
        """Store the final state of a message (after any checkpoint still queued)."""

        async def op() -> None:
            self._checkpoints.pop(message_id, None)
            now = fields.setdefault("completed_at", utcnow())
            await Message.filter(id=message_id).update(**fields)
            await Chat.filter(id=chat_id).update(updated_at=now)

        await self._call(op)

    async def recover_interrupted(self) -> int:
        """Mark this instance's ``in_progress`` messages ``interrupted`` (start-up)."""

        async def op() -> int:
            return await Message.filter(status="in_progress", instance_id=self.instance_id).update(
                status="interrupted", completed_at=utcnow()
            )

        return int(await self._call(op))

    # -- reads -------------------------------------------------------------------------------

    async def read(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run a read in this store's ORM context."""
        with self.ctx:
            return await fn()

    async def find_thread(
        self, user_id: str, hashes: list[str], chat_id: str | None = None
    ) -> ThreadMatch | None:
        """The stored message matching the longest prefix of ``hashes``, newest first."""
        if not hashes:
            return None
        with self.ctx:
            # The usual case is a resend of the whole history plus one new message: look at the
            # last two first, and only then at everything.
            for candidates in (hashes[-2:], hashes[:-2]):
                if not candidates:
                    continue
                query = Message.filter(user_id=user_id, prefix_hash__in=candidates)
                if chat_id is not None:
                    query = query.filter(chat_id=chat_id)
                rows = await query.values_list("id", "chat_id", "prefix_hash", "created_at")
                if rows:
                    position = {h: i for i, h in enumerate(hashes)}
                    best = max(rows, key=lambda r: (position[r[2]], r[3]))
                    return ThreadMatch(best[0], best[1], position[best[2]])
        return None

    async def get_chat(self, chat_id: str) -> Chat | None:
        with self.ctx:
            return await Chat.get_or_none(id=chat_id)

    async def chat_messages(self, chat_id: str) -> list[Message]:
        """Every message of a chat, every branch, oldest first."""
        with self.ctx:
            return await Message.filter(chat_id=chat_id).order_by("created_at", "id")

    async def get_message(self, message_id: str) -> Message | None:
        with self.ctx:
            return await Message.get_or_none(id=message_id)


async def _noop() -> None:
    return None


async def _write_turn(turn: Turn) -> None:
    now = turn.created_at
    if turn.chat_is_new:
        await Chat.bulk_create(
            [
                Chat(
                    id=turn.chat_id,
                    owner_id=turn.user_id,
                    title=turn.title,
                    metadata={},
                    created_at=now,
                    updated_at=now,
                )
            ],
            ignore_conflicts=True,
        )
    rows = []
    parent = turn.parent_id
    # One microsecond apart, so that "oldest first" keeps the request's order.
    for i, m in enumerate(turn.new_messages):
        rows.append(
            Message(
                id=m.id,
                chat_id=turn.chat_id,
                parent_id=parent,
                user_id=turn.user_id,
                role=m.role,
                text=m.text,
                data=m.data,
                prefix_hash=m.prefix_hash,
                status="completed",
                created_at=now + timedelta(microseconds=i),
                completed_at=now,
            )
        )
        parent = m.id
    rows.append(
        Message(
            id=turn.assistant_id,
            chat_id=turn.chat_id,
            parent_id=parent,
            user_id=turn.user_id,
            role="assistant",
            text="",
            data={"role": "assistant", "content": ""},
            prefix_hash="",
            status="in_progress",
            model=turn.model,
            params=turn.params,
            instance_id=turn.instance_id,
            created_at=now + timedelta(microseconds=len(turn.new_messages)),
        )
    )
    await Message.bulk_create(rows)
    await Chat.filter(id=turn.chat_id).update(head_id=turn.assistant_id, updated_at=now)
