"""The outbox: plugin events written with the change they report, read back for delivery.

When a plugin implements ``on_event`` (:meth:`Store.attach_plugins`), every change an event
reports writes an ``outbox`` row in the same transaction: a turn creating a chat
(``chat.created``), an answer's final write (``answer.<status>``, also for answers marked
``interrupted`` by start-up recovery, by the reaping of a dead instance, or when their final
write kept failing), and the batch of a delete that removes a chat row (``chat.deleted``). An
event therefore exists exactly when its change was committed, and survives any crash after.

Delivery (:mod:`chatproxy.plugins.events`) reads undelivered rows in ``seq`` order. A row is
*claimed* with a lease (``available_at`` moves past the lease, ``lease_owner`` names the
instance) in a short transaction: claims are serialised (SQLite's write lock; on PostgreSQL a
transaction-level advisory lock), and a row is claimable only when no earlier undelivered row
of its chat is leased or waiting for a retry, so events of one chat are delivered in order
while other chats go on. A delivered row gets ``delivered_at`` (deleted after a while); a
failed one is made available again later (backoff). Leases of an instance that restarts or is
reaped are released at once; any other lease expires.

Times in this table are integer milliseconds since the epoch (:func:`now_ms`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from tortoise.backends.base.client import BaseDBAsyncClient

from chatproxy.plugins.hookspecs import Event
from chatproxy.store.models import Message, storable_json

if TYPE_CHECKING:
    from chatproxy.store.batch import Dialect
    from chatproxy.store.store import Store

__all__ = [
    "INSERT_ANSWER_EVENT",
    "INSERT_EVENT",
    "Claimed",
    "answer_data",
    "answer_event_row",
    "candidates",
    "chats_deleted",
    "claim",
    "event_row",
    "interrupt",
    "interrupt_ids",
    "ms",
    "new_event_id",
    "now_ms",
    "purge_delivered",
    "release",
    "release_owners",
    "settle",
    "write_events",
]

_IN_CHUNK = 500  # ids per IN (...) list
# Claims of every instance on one PostgreSQL database, one at a time ("chatoutb").
_CLAIM_LOCK = 0x63686174_6F757462

_COLUMNS = "id, type, user_id, chat_id, message_id, data, created_at, available_at"
INSERT_EVENT = f"INSERT INTO outbox ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
# An answer's event takes its chat and user from the message row (the final write does not
# carry them), and is not written for a message that is gone.
INSERT_ANSWER_EVENT = (
    f"INSERT INTO outbox ({_COLUMNS}) SELECT CAST(? AS VARCHAR(32)), CAST(? AS VARCHAR(32)), "
    "user_id, chat_id, id, CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS BIGINT) "
    "FROM messages WHERE id = ?"
)
_CANDIDATES = (
    "SELECT o.seq FROM outbox o WHERE o.delivered_at IS NULL AND o.available_at <= ? "
    "AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.chat_id = o.chat_id AND p.seq < o.seq "
    "AND p.delivered_at IS NULL AND p.available_at > ?) ORDER BY o.seq LIMIT ?"
)
_CLAIMABLE = (
    "SELECT o.seq FROM outbox o WHERE o.seq IN ({}) AND o.delivered_at IS NULL "
    "AND o.available_at <= ? AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.chat_id = o.chat_id "
    "AND p.seq < o.seq AND p.delivered_at IS NULL AND p.available_at > ?)"
)
_TAKE = (
    "UPDATE outbox SET available_at = ?, lease_owner = ?, attempts = attempts + 1 "
    "WHERE seq IN ({}) RETURNING seq, id, type, user_id, chat_id, message_id, data, created_at, "
    "attempts"
)
_DELIVERED = "UPDATE outbox SET delivered_at = ?, lease_owner = NULL WHERE seq IN ({})"
_AGAIN = "UPDATE outbox SET available_at = ?, lease_owner = NULL WHERE seq = ?"
_RELEASE = (
    "UPDATE outbox SET available_at = ?, lease_owner = NULL "
    "WHERE lease_owner IN ({}) AND delivered_at IS NULL"
)
_PURGE = (
    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE delivered_at < ? "
    "ORDER BY delivered_at LIMIT ?)"
)
_INTERRUPT = (
    "UPDATE messages SET status = 'interrupted', completed_at = ? WHERE {} "
    "AND status = 'in_progress' RETURNING id, chat_id, user_id, model"
)


def new_event_id() -> str:
    """``evt_`` + 24 random url-safe characters."""
    return "evt_" + secrets.token_urlsafe(18)


def now_ms() -> int:
    """The current time as the outbox keeps it."""
    return time.time_ns() // 1_000_000


def ms(at: datetime) -> int:
    """``at`` as the outbox keeps times."""
    return int(at.timestamp() * 1000)


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for i in range(0, len(values), _IN_CHUNK):
        yield values[i : i + _IN_CHUNK]


def _data(data: Mapping[str, Any]) -> str:
    return storable_json(orjson.dumps(data).decode()) or "{}"


def event_row(
    type_: str,
    user_id: str,
    chat_id: str,
    message_id: str | None,
    data: Mapping[str, Any],
    at: int,
) -> list[Any]:
    """The parameters of :data:`INSERT_EVENT` for one event at ``at`` (:func:`now_ms`)."""
    return [new_event_id(), type_, user_id, chat_id, message_id, _data(data), at, at]


def answer_data(
    status: str,
    model: str | None,
    finish_reason: str | None = None,
    usage: Any = None,
    error: Any = None,
) -> dict[str, Any]:
    """An ``answer.*`` event's data."""
    return {
        "status": status,
        "model": model,
        "finish_reason": finish_reason,
        "usage": usage,
        "error": error,
    }


def answer_event_row(message_id: str, status: str, data: Mapping[str, Any], at: int) -> list[Any]:
    """The parameters of :data:`INSERT_ANSWER_EVENT`."""
    return [new_event_id(), f"answer.{status}", _data(data), at, at, message_id]


def _returning(d: Dialect, sql: str) -> str:
    # Tortoise runs a PostgreSQL statement starting with UPDATE without fetching its rows:
    # the RETURNING rows come back through a data-modifying WITH (which SQLite lacks).
    return f"WITH changed AS ({d.sql(sql)}) SELECT * FROM changed" if d.postgres else sql


def _tx() -> BaseDBAsyncClient:
    # Inside a Store.write operation: the connection of its transaction.
    return Message._meta.db


def _dialect(conn: BaseDBAsyncClient) -> Dialect:
    from chatproxy.store.batch import Dialect

    return Dialect(conn)


# -- writes that report themselves (inside a Store.write operation) -------------------------


async def interrupt(where: str, params: Sequence[Any], at: datetime, events: bool) -> int:
    """Mark ``interrupted`` the ``in_progress`` messages matching ``where`` (SQL on
    ``messages`` with ``?`` placeholders), with an ``answer.interrupted`` event for each when
    ``events``; how many there were (counted from the rows changed: on SQLite a statement's
    change count also takes in what its triggers changed, the search index)."""
    conn = _tx()
    d = _dialect(conn)
    query = _returning(d, _INTERRUPT.format(where))
    _, rows = await conn.execute_query(query, [d.ts(at), *params])
    when = ms(at)
    found = [
        event_row("answer.interrupted", r[2], r[1], r[0], answer_data("interrupted", r[3]), when)
        for r in rows
    ]
    if events and found:
        await conn.execute_many(d.sql(INSERT_EVENT), found)
    return len(rows)


async def interrupt_ids(ids: Sequence[str], at: datetime, events: bool) -> int:
    """:func:`interrupt` for the messages ``ids``."""
    count = 0
    for chunk in _chunks(ids):
        count += await interrupt(f"id IN ({_marks(len(chunk))})", chunk, at, events)
    return count


async def chats_deleted(chat_ids: Sequence[str]) -> None:
    """Write a ``chat.deleted`` event for each of these chats that exists (before the
    statement deleting them, in its transaction)."""
    conn = _tx()
    d = _dialect(conn)
    at = now_ms()
    for chunk in _chunks(chat_ids):
        query = f"SELECT id, owner_id FROM chats WHERE id IN ({_marks(len(chunk))})"
        _, rows = await conn.execute_query(d.sql(query), list(chunk))
        events = [event_row("chat.deleted", r[1], r[0], None, {}, at) for r in rows]
        if events:
            await conn.execute_many(d.sql(INSERT_EVENT), events)


async def write_events(rows: Sequence[Sequence[Any]]) -> None:
    """Insert :func:`event_row` rows (inside a Store.write operation)."""
    if rows:
        conn = _tx()
        await conn.execute_many(_dialect(conn).sql(INSERT_EVENT), list(rows))


async def release_owners(owners: Sequence[str]) -> None:
    """Make the rows leased by these instances available now (they stopped)."""
    if owners:
        conn = _tx()
        d = _dialect(conn)
        await conn.execute_query(d.sql(_RELEASE.format(_marks(len(owners)))), [now_ms(), *owners])


# -- delivery --------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Claimed:
    """A row claimed for delivery: its event and how many times it was claimed."""

    seq: int
    event: Event
    attempts: int


def _event(row: Sequence[Any]) -> Event:
    _, event_id, type_, user_id, chat_id, message_id, data, created_at, _ = row
    return Event(
        id=event_id,
        type=type_,
        created_at=datetime.fromtimestamp(created_at / 1000, UTC),
        user_id=user_id,
        chat_id=chat_id,
        message_id=message_id,
        data=orjson.loads(data) if isinstance(data, str | bytes) else dict(data),
    )


async def candidates(store: Store, limit: int) -> list[int]:
    """The ``seq`` of up to ``limit`` rows that may be claimed now, oldest first (a read: a
    backlog is walked off the writer)."""
    d = _dialect(store.conn)
    now = now_ms()

    async def read() -> list[int]:
        _, rows = await store.conn.execute_query(d.sql(_CANDIDATES), [now, now, limit])
        return [int(r[0]) for r in rows]

    return await store.read(read)


async def claim(store: Store, seqs: Sequence[int], owner: str, lease: float) -> list[Claimed]:
    """Lease those of ``seqs`` that are still claimable to ``owner`` for ``lease`` seconds;
    the claimed rows in order."""

    async def op() -> list[Claimed]:
        conn = _tx()
        d = _dialect(conn)
        if d.postgres:
            await conn.execute_query("SELECT pg_advisory_xact_lock($1)", [_CLAIM_LOCK])
        now = now_ms()
        query = d.sql(_CLAIMABLE.format(_marks(len(seqs))))
        _, rows = await conn.execute_query(query, [*seqs, now, now])
        free = [int(r[0]) for r in rows]
        if not free:
            return []
        take = _returning(d, _TAKE.format(_marks(len(free))))
        _, rows = await conn.execute_query(take, [now + int(lease * 1000), owner, *free])
        claimed = [Claimed(int(r[0]), _event(r), int(r[8])) for r in rows]
        return sorted(claimed, key=lambda c: c.seq)

    if not seqs:
        return []
    return list(await store.write(op))


async def settle(store: Store, delivered: Sequence[int], again: Mapping[int, float]) -> None:
    """Mark ``delivered`` rows delivered, and make each row of ``again`` available once its
    delay (seconds) has passed."""

    async def op() -> None:
        conn = _tx()
        d = _dialect(conn)
        now = now_ms()
        for chunk in _chunks(delivered):
            await conn.execute_query(d.sql(_DELIVERED.format(_marks(len(chunk)))), [now, *chunk])
        if again:
            rows = [[now + int(delay * 1000), seq] for seq, delay in again.items()]
            await conn.execute_many(d.sql(_AGAIN), rows)

    if delivered or again:
        await store.write(op)


async def release(store: Store, owner: str) -> None:
    """Make every row leased by ``owner`` available now (its earlier run stopped)."""
    await store.write(lambda: release_owners([owner]))


async def purge_delivered(store: Store, before: int, limit: int) -> int:
    """Delete up to ``limit`` rows delivered before ``before`` (:func:`now_ms`); how many."""

    async def op() -> int:
        conn = _tx()
        count, _ = await conn.execute_query(_dialect(conn).sql(_PURGE), [before, limit])
        return int(count)

    return int(await store.write(op))
