"""The hot writes as plain SQL, grouped per statement so one batch is a few ``executemany``.

The ORM builds each query anew (about a millisecond of CPU for a request's writes); these
statements are fixed, so a burst of requests costs one transaction of a handful of statements.
They are written for both SQLite and PostgreSQL: ``?`` placeholders are rewritten to ``$n``
for PostgreSQL, datetimes go to SQLite in the text form Tortoise itself stores, and every text
and JSON value is made storable alike on both (a NUL becomes U+FFFD, a value wider than its
column is cut: :mod:`chatproxy.store.models`): an answer the client has received is never
refused by the database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from tortoise.backends.base.client import BaseDBAsyncClient

from chatproxy.store import search_index
from chatproxy.store.db import begin_immediate
from chatproxy.store.models import (
    FINISH_REASON_LENGTH,
    MODEL_LENGTH,
    TITLE_LENGTH_MAX,
    UPSTREAM_ID_LENGTH,
    Status,
    storable_int,
    storable_json,
    storable_text,
)
from chatproxy.store.outbox import INSERT_ANSWER_EVENT, INSERT_EVENT

__all__ = ["Answer", "Batch", "Dialect", "NewMessage", "Turn"]


@dataclass(slots=True)
class NewMessage:
    """A message of the request that is not stored yet."""

    id: str
    role: str
    data: dict[str, Any]
    text: str
    prefix_hash: str
    # Kept in ``Message.metadata`` (the id an AI SDK client gave the message, say).
    metadata: dict[str, Any] | None = None


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
    created_at: datetime


@dataclass(slots=True)
class Answer:
    """The final state of an assistant message."""

    status: str
    text: str
    data: dict[str, Any]
    prefix_hash: str
    error: dict[str, Any] | None
    model: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    usage: dict[str, Any] | None
    upstream_id: str | None
    system_fingerprint: str | None
    client_disconnected: bool
    ttft_ms: int | None
    duration_ms: int
    completed_at: datetime


class Dialect:
    """What differs between SQLite and PostgreSQL for these statements."""

    def __init__(self, conn: BaseDBAsyncClient) -> None:
        self.postgres = conn.capabilities.dialect == "postgres"

    def sql(self, query: str) -> str:
        if not self.postgres:
            return query
        parts = query.split("?")
        return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))

    def ts(self, value: datetime | None) -> Any:
        if value is None or self.postgres:
            return value
        return str(value)


def _json(value: Any) -> str | None:
    return None if value is None else storable_json(orjson.dumps(value).decode())


INSERT_CHAT = (
    "INSERT INTO chats (id, owner_id, title, visibility, metadata, head_id, created_at, "
    "updated_at) VALUES (?, ?, ?, 'private', '{}', ?, ?, ?) ON CONFLICT (id) DO NOTHING"
)
UPDATE_CHAT_HEAD = "UPDATE chats SET head_id = ?, updated_at = ? WHERE id = ?"
UPDATE_CHAT_TIME = "UPDATE chats SET updated_at = ? WHERE id = ?"
# The depth is the parent's plus one, read in the statement: the rows of one request run in
# order, so each finds the one before it.
INSERT_MESSAGE = (
    "INSERT INTO messages (id, chat_id, parent_id, user_id, role, text, data, prefix_hash, "
    "status, model, params, client_disconnected, instance_id, metadata, created_at, "
    "completed_at, depth) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "COALESCE((SELECT p.depth FROM messages p WHERE p.id = ?), 0) + 1)"
)
CHECKPOINT = "UPDATE messages SET text = ?, data = ? WHERE id = ? AND status = 'in_progress'"
FINISH = (
    "UPDATE messages SET status = ?, text = ?, data = ?, prefix_hash = ?, error = ?, "
    "model = COALESCE(?, model), finish_reason = ?, prompt_tokens = ?, completion_tokens = ?, "
    "total_tokens = ?, usage = ?, upstream_id = ?, system_fingerprint = ?, "
    "client_disconnected = ?, ttft_ms = ?, duration_ms = ?, completed_at = ? WHERE id = ?"
)


@dataclass(slots=True)
class Batch:
    """Writes collected from the queue, applied together in one transaction."""

    turns: list[Turn] = field(default_factory=list)
    checkpoints: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    finishes: list[tuple[str, str, Answer]] = field(default_factory=list)
    # Outbox rows (chatproxy.store.outbox) of what the batch reports, when plugins take
    # events: event_row()s and answer_event_row()s.
    events: list[list[Any]] = field(default_factory=list)
    answer_events: list[list[Any]] = field(default_factory=list)
    # Add waiting rows to SQLite's full-text indexes (chatproxy.store.search_index).
    index: bool = False

    def __bool__(self) -> bool:
        return bool(self.turns or self.checkpoints or self.finishes or self.index)

    def statements(self, d: Dialect) -> list[tuple[str, list[Sequence[Any]]]]:
        """The batch as ``(statement, rows)`` pairs, in the order they must run."""
        out = self._turns(d) if self.turns else []
        if self.checkpoints:
            rows = [
                [storable_text(text), _json(data), mid]
                for mid, (text, data) in self.checkpoints.items()
            ]
            out.append((d.sql(CHECKPOINT), rows))
        if self.finishes:
            out.append((d.sql(FINISH), [_finish_row(a, mid, d) for mid, _, a in self.finishes]))
            times = [[d.ts(a.completed_at), chat_id] for _, chat_id, a in self.finishes]
            out.append((d.sql(UPDATE_CHAT_TIME), times))
        if self.events:
            out.append((d.sql(INSERT_EVENT), self.events))
        if self.answer_events:
            out.append((d.sql(INSERT_ANSWER_EVENT), self.answer_events))
        if self.index:
            out += search_index.FLUSH
        return out

    async def apply(self, conn: BaseDBAsyncClient, d: Dialect) -> None:
        """Run the batch on ``conn`` (inside the caller's transaction)."""
        for sql, rows in self.statements(d):
            await conn.execute_many(sql, rows)

    def apply_sqlite(self, db: sqlite3.Connection, d: Dialect, wait: bool = False) -> None:
        """Run the batch in one transaction on a plain ``sqlite3`` connection (in autocommit
        mode, no busy timeout), in the database's own thread: one hop from the event loop for
        the whole batch. ``wait``: for the write lock, if another connection holds it (off the
        event loop); else that raises ``sqlite3.OperationalError`` at once."""
        if wait:
            begin_immediate(db)
        else:
            db.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in self.statements(d):
                db.executemany(sql, rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _turns(self, d: Dialect) -> list[tuple[str, list[Sequence[Any]]]]:
        chats: list[Sequence[Any]] = []
        messages: list[Sequence[Any]] = []
        heads: list[Sequence[Any]] = []
        for t in self.turns:
            now = d.ts(t.created_at)
            if t.chat_is_new:
                title = storable_text(t.title, TITLE_LENGTH_MAX)
                chats.append([t.chat_id, t.user_id, title, t.assistant_id, now, now])
            parent = t.parent_id
            # One microsecond apart, so that "oldest first" keeps the request's order.
            for i, m in enumerate(t.new_messages):
                created = d.ts(t.created_at + timedelta(microseconds=i))
                messages.append(
                    [
                        m.id,
                        t.chat_id,
                        parent,
                        t.user_id,
                        m.role,
                        storable_text(m.text),
                        _json(m.data),
                        m.prefix_hash,
                        Status.COMPLETED,
                        None,
                        None,
                        False,
                        None,
                        _json(m.metadata),
                        created,
                        now,
                        parent,
                    ]
                )
                parent = m.id
            created = d.ts(t.created_at + timedelta(microseconds=len(t.new_messages)))
            messages.append(
                [
                    t.assistant_id,
                    t.chat_id,
                    parent,
                    t.user_id,
                    "assistant",
                    "",
                    '{"role":"assistant","content":""}',
                    "",
                    Status.IN_PROGRESS,
                    storable_text(t.model, MODEL_LENGTH),
                    _json(t.params),
                    False,
                    t.instance_id,
                    None,
                    created,
                    None,
                    parent,
                ]
            )
            heads.append([t.assistant_id, now, t.chat_id])
        out = [(d.sql(INSERT_CHAT), chats)] if chats else []
        out.append((d.sql(INSERT_MESSAGE), messages))
        out.append((d.sql(UPDATE_CHAT_HEAD), heads))
        return out


def _finish_row(a: Answer, message_id: str, d: Dialect) -> list[Any]:
    # Everything here came from the upstream (and is with the client already): stored as it
    # can be, never refused.
    return [
        a.status,
        storable_text(a.text),
        _json(a.data),
        a.prefix_hash,
        _json(a.error),
        storable_text(a.model, MODEL_LENGTH),
        storable_text(a.finish_reason, FINISH_REASON_LENGTH),
        storable_int(a.prompt_tokens),
        storable_int(a.completion_tokens),
        storable_int(a.total_tokens),
        _json(a.usage),
        storable_text(a.upstream_id, UPSTREAM_ID_LENGTH),
        storable_text(a.system_fingerprint, UPSTREAM_ID_LENGTH),
        a.client_disconnected,
        a.ttft_ms,
        a.duration_ms,
        d.ts(a.completed_at),
        message_id,
    ]
