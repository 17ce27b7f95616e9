"""The store API: the only code that writes rows.

Writes go through one writer task. It drains its queue and applies everything queued in one
short transaction (the hot writes as a few fixed ``executemany`` statements, see
:mod:`chatproxy.store.batch`), so a burst of requests costs one commit and no transaction is
ever held open across network I/O. Checkpoints of the same message coalesce: only the newest
is written. Reads run directly; the ones on the request path are plain SQL too.

On SQLite the hot statements run on a connection of their own, synchronously on the event
loop: a WAL-mode commit without fsync takes tens of microseconds, less than handing the work
to aiosqlite's thread and back (which, on one core, also fights the loop for the GIL). That
connection never waits for a lock: if an ORM write holds it, the batch goes the asynchronous
way instead. The ORM (management reads and writes, migrations) uses Tortoise's connection.

Plugins (:meth:`Store.attach_plugins`) change what is written through ``before_store``
(:mod:`chatproxy.store.records`) and learn of committed changes through ``on_event``, from
an outbox written in the same transactions (:mod:`chatproxy.store.outbox`); with no plugin
implementing either, nothing of this runs.

An answer's final write is retried (:meth:`Store.finish`): the upstream has answered and the
client has the answer, so a database that fails for a moment must not lose it. A write that
keeps failing leaves the answer ``interrupted`` with its last checkpoint, as start-up recovery
would, if the database takes that much.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.context import TortoiseContext, _current_context
from tortoise.exceptions import OperationalError
from tortoise.transactions import in_transaction

from chatproxy.ids import storable_message_id
from chatproxy.offload import LARGE_COUNT, offload
from chatproxy.store import outbox, search_index
from chatproxy.store.batch import Answer, Batch, Dialect, NewMessage, Turn
from chatproxy.store.db import (
    WalCheckpointer,
    is_busy,
    open_database,
    open_fast_sqlite,
    reclaim_sqlite_space,
    sqlite_path,
)
from chatproxy.store.models import ApiKey, Chat, Instance, Message, Meta, Status, User
from chatproxy.store.records import Rewriter

if TYPE_CHECKING:
    from chatproxy.metrics import Metrics
    from chatproxy.plugins.events import EventDelivery
    from chatproxy.plugins.manager import Plugins

__all__ = ["Answer", "BranchEntry", "NewMessage", "Store", "ThreadMatch", "Turn", "utcnow"]

log = logging.getLogger("chatproxy.store")
T = TypeVar("T")
_IN_CHUNK = 500  # prefix hashes looked up per query
FINISH_ATTEMPTS = 6  # an answer's final write: about 3 s of retries in all
FINISH_BACKOFF = (0.1, 2.0)  # first and longest wait between two attempts, seconds


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


@dataclass(slots=True, frozen=True)
class BranchEntry:
    """One message of a branch, as server-side history needs it."""

    id: str
    role: str
    data: dict[str, Any]
    prefix_hash: str
    status: str


@dataclass(slots=True, frozen=True)
class ThreadMatch:
    """The longest stored prefix of a request's messages."""

    message_id: str
    chat_id: str
    index: int  # 0-based index into the request's messages


@contextlib.contextmanager
def _active(ctx: TortoiseContext) -> Iterator[None]:
    # TortoiseContext's own ``with ctx:`` keeps one token on the instance, so concurrent tasks
    # entering it would reset each other's; a token per entry is safe.
    token = _current_context.set(ctx)
    try:
        yield
    finally:
        _current_context.reset(token)


_Call = Callable[[], Awaitable[Any]]
# A queued write: a turn, a checkpoint (message id), a finish, or any ORM call.
_Item = tuple[str, Any, "asyncio.Future[Any] | None"]


# First in an ORM write transaction on SQLite (which Tortoise begins DEFERRED): the write
# lock, waited for with the busy timeout. A transaction that reads first and then writes, once
# another process (the CLI beside a server, or two servers) has committed since its read,
# fails at once with "database is locked": SQLite cannot wait for a newer snapshot.
_TAKE_WRITE_LOCK = "UPDATE users SET id = id WHERE 0"


async def _take_write_lock(tx: BaseDBAsyncClient) -> None:
    try:
        await tx.execute_query(_TAKE_WRITE_LOCK)
    except OperationalError as exc:
        # A store opened without its tables (migrate=False on a new file): nothing there to
        # write, and whatever the write needs fails on its own.
        if "no such table" not in str(exc):
            raise


class Store:
    """Owns the database connection (a Tortoise context of its own) and the writer task."""

    def __init__(self, url: str, *, instance_id: str = "local") -> None:
        self.url = url
        self.instance_id = instance_id
        self._ctx: TortoiseContext | None = None
        self._conn: BaseDBAsyncClient | None = None
        self._dialect: Dialect | None = None
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._checkpoints: dict[str, tuple[str, dict[str, Any]]] = {}
        self._writer: asyncio.Task[None] | None = None
        self._checkpointer: WalCheckpointer | None = None
        self._fast: sqlite3.Connection | None = None
        # SQLite with migration 0013: the full-text indexes are this writer's to update.
        self._indexer: asyncio.Task[None] | None = None
        # Told how long each write batch took (the metrics' store write latency).
        self.observe_write: Callable[[float], object] | None = None
        # The wait between two attempts of an answer's final write (replaced in tests).
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        # Plugins (attach_plugins): before_store's rewriter, the running answers' (chat, user)
        # it needs, whether changes write outbox events, and their delivery.
        self.rewriter: Rewriter | None = None
        self._owners: dict[str, tuple[str, str]] = {}
        self.events = False
        self._delivery: EventDelivery | None = None
        self._outbox_written = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> None:
        """Connect, apply migrations, start the writer."""
        self._ctx = await open_database(self.url, migrate=migrate)
        self._conn = self._ctx.db("default")
        self._dialect = Dialect(self._conn)
        path = sqlite_path(self.url)
        if path is not None and path != ":memory:":
            self._fast = open_fast_sqlite(path)
            self._checkpointer = WalCheckpointer(path)
            self._checkpointer.start()
        with self.active():
            self._writer = asyncio.create_task(self._write_loop(), name="chatproxy-store-writer")
            if await self._has_search_lists():
                self._indexer = asyncio.create_task(self._index_loop(), name="chatproxy-indexer")
            if self._delivery is not None:
                self._delivery.start()

    def attach_plugins(
        self, plugins: Plugins, metrics: Metrics | None = None, *, deliver: bool = True
    ) -> None:
        """Let ``plugins`` change what is written (``before_store``) and learn what was
        committed (``on_event``, delivered by a task of this store unless ``deliver`` is false:
        the CLI writes its events for the serving instances to deliver). Call it before the
        first write (before :meth:`open`, or right after it)."""
        self.rewriter = Rewriter(plugins) if plugins.implements("before_store") else None
        self.events = plugins.implements("on_event")
        if self.events and deliver and self._delivery is None:
            from chatproxy.plugins.events import EventDelivery

            self._delivery = EventDelivery(self, plugins, metrics)
            if self._writer is not None:
                with self.active():
                    self._delivery.start()

    @property
    def delivery(self) -> EventDelivery | None:
        """The task delivering this store's events, when it has one."""
        return self._delivery

    def events_written(self) -> None:
        """Called by a :meth:`write` operation that wrote outbox rows: delivery is woken once
        its transaction commits."""
        self._outbox_written = True

    async def close(self) -> None:
        """Stop event delivery, flush pending writes, stop the writer, close the
        connection."""
        if self._delivery is not None:
            await self._delivery.stop()
        if self._indexer is not None:
            self._indexer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._indexer
            self._indexer = None
        if self._writer is not None:
            await self._call(_noop)  # everything queued before this is written
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._fast is not None:
            self._fast.close()
            self._fast = None
        if self._checkpointer is not None:
            await self._checkpointer.stop()
            self._checkpointer = None
        if self._ctx is not None:
            await self._ctx.close_connections()
            self._ctx = self._conn = None

    def active(self) -> contextlib.AbstractContextManager[None]:
        """Make this store's ORM context the current one (for ORM calls in this task)."""
        if self._ctx is None:
            raise RuntimeError("store is not open")
        return _active(self._ctx)

    @property
    def conn(self) -> BaseDBAsyncClient:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    async def ping(self) -> bool:
        """True when the database answers."""
        try:
            await self.conn.execute_query("SELECT 1")
        except Exception:
            log.exception("store ping failed")
            return False
        return True

    # -- the writer --------------------------------------------------------------------------

    def _put(self, kind: str, payload: Any, wait: bool) -> asyncio.Future[Any] | None:
        fut = asyncio.get_running_loop().create_future() if wait else None
        self._queue.put_nowait((kind, payload, fut))
        return fut

    async def _call(self, op: _Call) -> Any:
        fut = self._put("call", op, True)
        assert fut is not None
        return await fut

    async def _write_loop(self) -> None:
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            try:
                results = await self._apply(items)
            except Exception:
                # One bad write must not take the others down: apply them one by one.
                for item in items:
                    await self._apply_alone(item)
                continue
            for (_, _, fut), result in zip(items, results, strict=True):
                if fut is not None and not fut.done():
                    fut.set_result(result)

    async def _apply(self, items: list[_Item]) -> list[Any]:
        batch = Batch()
        for kind, payload, _ in items:
            if kind == "turn":
                batch.turns.append(payload)
                if self.events and payload.chat_is_new:
                    batch.events.append(_chat_created(payload))
            elif kind == "checkpoint":
                fields = self._checkpoints.pop(payload, None)
                if fields is not None:
                    if self.rewriter is not None:
                        owner = self._owners.get(payload, ("", ""))
                        fields = self.rewriter.checkpoint(payload, owner, *fields)
                    batch.checkpoints[payload] = fields
            elif kind == "index":
                batch.index = True
            elif kind == "finish":
                batch.checkpoints.pop(payload[0], None)
                batch.finishes.append(payload)
                if self.events:
                    batch.answer_events.append(_answer_event(payload[0], payload[2]))
        if batch:
            started = time.perf_counter()
            await self._apply_batch(batch)
            if self.observe_write is not None:
                self.observe_write(time.perf_counter() - started)
            if batch.events or batch.answer_events:
                self._wake_delivery()
        results = []
        for kind, payload, _ in items:
            if kind == "call":
                self._outbox_written = False
                async with in_transaction() as tx:
                    if self._dialect is not None and not self._dialect.postgres:
                        await _take_write_lock(tx)
                    results.append(await payload())
                if self._outbox_written:
                    self._wake_delivery()
            else:
                results.append(None)
        return results

    def _wake_delivery(self) -> None:
        self._outbox_written = False
        if self._delivery is not None:
            self._delivery.wake()

    async def _apply_batch(self, batch: Batch) -> None:
        assert self._dialect is not None
        if self._fast is not None:
            try:
                # A batch carrying a very large request would hold the loop for as long as it
                # takes to write it (a second for 50,000 messages): that one runs in a thread.
                await offload(
                    sum(len(t.new_messages) for t in batch.turns) > LARGE_COUNT,
                    batch.apply_sqlite,
                    self._fast,
                    self._dialect,
                )
                return
            except sqlite3.OperationalError as exc:
                # Another connection holds the write lock (an ORM write of this process, or
                # another process's): never wait for it on the event loop.
                if not is_busy(exc):
                    raise
            await asyncio.to_thread(batch.apply_sqlite, self._fast, self._dialect, True)
            return
        async with in_transaction() as tx:
            await batch.apply(tx, self._dialect)

    async def _apply_alone(self, item: _Item) -> None:
        fut = item[2]
        try:
            result = (await self._apply([item]))[0]
        except Exception as exc:
            if fut is None:
                log.exception("store write failed")
            elif not fut.done():
                fut.set_exception(exc)
        else:
            if fut is not None and not fut.done():
                fut.set_result(result)

    # -- the full-text indexes (SQLite) ------------------------------------------------------

    async def _has_search_lists(self) -> bool:
        assert self._dialect is not None
        if self._dialect.postgres:
            return False
        rows = await self._query(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)",
            list(search_index.PENDING),
        )
        return bool(rows and rows[0][0] == len(search_index.PENDING))

    async def _waiting(self) -> int:
        """How many rows the longer list holds, counted up to :data:`search_index.STEP`."""
        rows = await self._query(search_index.WAITING, [])
        return int(rows[0][0]) if rows else 0

    async def index_search(self) -> None:
        """Add every row still waiting to SQLite's full-text indexes (a search does it first,
        so it finds everything committed before it). Nothing to do elsewhere."""
        if self._indexer is None:
            return
        while await self._waiting():
            await self._index_step()

    async def _index_step(self) -> None:
        fut = self._put("index", None, True)
        assert fut is not None
        await fut

    async def _index_loop(self) -> None:
        while True:
            await asyncio.sleep(search_index.EVERY)
            try:
                if await self._waiting():
                    await self._index_step()
                    # Faster than a step per round: keep up in whole steps.
                    while await self._waiting() >= search_index.STEP:
                        await self._index_step()
            except Exception as exc:  # what waits stays listed: the next round tries again
                log.warning("updating the full-text indexes failed: %s", exc)

    # -- writes ------------------------------------------------------------------------------

    async def ensure_user(self, user_id: str, name: str, tier: str | None = None) -> None:
        """Create the user if it does not exist yet."""
        await self.ensure_users([(user_id, name, tier)])

    async def write(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run an ORM write (or several: one transaction) in the writer task, after every
        write queued before it."""
        return await self._call(fn)  # type: ignore[no-any-return]

    async def begin_turn(self, turn: Turn) -> None:
        """Store the request's new messages and the assistant placeholder, together."""
        if self.rewriter is not None:
            self._owners[turn.assistant_id] = (turn.chat_id, turn.user_id)
            large = len(turn.new_messages) > LARGE_COUNT
            turn = await offload(large, self.rewriter.turn, turn)
        fut = self._put("turn", turn, True)
        assert fut is not None
        await fut

    def checkpoint(self, message_id: str, text: str, data: dict[str, Any]) -> None:
        """Queue a checkpoint of a running message; does not wait (hot path)."""
        pending = message_id in self._checkpoints
        self._checkpoints[message_id] = (text, data)
        if not pending:
            self._put("checkpoint", message_id, False)

    async def finish(self, message_id: str, chat_id: str, answer: Answer) -> None:
        """Store the final state of a message (after any checkpoint still queued).

        A failed write is tried again, :data:`FINISH_ATTEMPTS` times in all with a growing
        wait (the write is idempotent). When every attempt fails, the message is marked
        ``interrupted`` (its last checkpoint stays) if the database takes that, and the last
        error is raised for the caller to log."""
        self._checkpoints.pop(message_id, None)
        if self.rewriter is not None:
            owner = self._owners.pop(message_id, None) or (chat_id, "")
            answer = self.rewriter.answer(message_id, owner, answer)
        try:
            # Directly: nearly every write succeeds, and a retrying controller per answer
            # would cost more than the write.
            await self._finish_once(message_id, chat_id, answer)
        except Exception as exc:
            log.debug("storing answer %s failed (%r), retrying", message_id, exc)
            try:
                await self._finish_again(message_id, chat_id, answer)
            except Exception:
                with contextlib.suppress(Exception):
                    await self._give_up(message_id, answer.completed_at)
                raise

    async def _finish_once(self, message_id: str, chat_id: str, answer: Answer) -> None:
        fut = self._put("finish", (message_id, chat_id, answer), True)
        assert fut is not None
        await fut

    async def _finish_again(self, message_id: str, chat_id: str, answer: Answer) -> None:
        first, longest = FINISH_BACKOFF
        await self.sleep(first)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(FINISH_ATTEMPTS - 1),
            wait=wait_exponential(multiplier=first * 2, max=longest) + wait_random(0, first),
            retry=retry_if_exception_type(Exception),
            sleep=self.sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._finish_once(message_id, chat_id, answer)

    async def _give_up(self, message_id: str, at: datetime) -> None:
        # What start-up recovery would do later: the placeholder keeps its last checkpoint.
        async def op() -> None:
            if await outbox.interrupt("id = ?", [message_id], at, self.events) and self.events:
                self.events_written()

        await self._call(op)

    async def ensure_users(self, users: list[tuple[str, str, str | None]]) -> None:
        """Create the users ``(id, name, tier)`` that do not exist yet."""

        async def op() -> None:
            rows = [User(id=uid, name=name, tier=tier) for uid, name, tier in users]
            await User.bulk_create(rows, ignore_conflicts=True)

        await self._call(op)

    async def add_api_key(
        self, key_id: str, user: tuple[str, str, str | None], key_hash: str, prefix: str
    ) -> None:
        """Store a new key's hash for ``user`` ``(id, name, tier)``; a given tier is set."""
        user_id, name, tier = user

        async def op() -> None:
            await User.bulk_create([User(id=user_id, name=name, tier=tier)], ignore_conflicts=True)
            if tier is not None:
                await User.filter(id=user_id).update(tier=tier)
            await ApiKey.create(
                id=key_id, user_id=user_id, hash=key_hash, prefix=prefix, created_at=utcnow()
            )

        await self._call(op)

    async def revoke_api_key(self, key_id: str) -> bool:
        """Revoke a key; ``False`` when there is no such key (or it was revoked already)."""

        async def op() -> int:
            return await ApiKey.filter(id=key_id, revoked_at=None).update(revoked_at=utcnow())

        return bool(await self._call(op))

    def touch_api_key(self, key_id: str) -> None:
        """Record that a key was used (queued; does not wait)."""

        async def op() -> None:
            await ApiKey.filter(id=key_id).update(last_used_at=utcnow())

        self._put("call", op, False)

    async def meta_value(self, key: str, default: str) -> str:
        """The stored value of ``key``; ``default`` is stored first if there is none."""

        async def op() -> str:
            await Meta.bulk_create([Meta(key=key, value=default)], ignore_conflicts=True)
            return (await Meta.get(key=key)).value

        return str(await self._call(op))

    async def reclaim_space(self) -> None:
        """Give freed pages back to the file system (SQLite: in short steps, see
        :func:`reclaim_sqlite_space`; PostgreSQL's autovacuum does this on its own)."""
        path = sqlite_path(self.url)
        if path is not None:
            await self._call(_noop)  # every queued write first
            await reclaim_sqlite_space(path)

    async def recover_interrupted(self) -> int:
        """Mark this instance's ``in_progress`` messages ``interrupted`` (start-up)."""

        async def op() -> int:
            mine = [self.instance_id]
            count = await outbox.interrupt("instance_id = ?", mine, utcnow(), self.events)
            if count and self.events:
                self.events_written()
            return count

        return int(await self._call(op))

    async def heartbeat(self, started_at: datetime) -> None:
        """Record that this instance is alive now."""

        async def op() -> None:
            now = utcnow()
            if not await Instance.filter(id=self.instance_id).update(heartbeat_at=now):
                await Instance.bulk_create(
                    [Instance(id=self.instance_id, started_at=started_at, heartbeat_at=now)],
                    ignore_conflicts=True,
                )

        await self._call(op)

    async def reap_instances(self, silent_for: float) -> dict[str, int]:
        """Mark ``interrupted`` the in-progress messages of instances silent for ``silent_for``
        seconds (and forget those instances); returns how many messages, by instance.

        Messages of an instance with no record at all (it never heartbeated, or its record is
        gone) are taken once they are older than ``silent_for``.
        """

        async def op() -> dict[str, int]:
            now = utcnow()
            cutoff = now - timedelta(seconds=silent_for)
            beats = await Instance.all().values_list("id", "heartbeat_at")
            live_ids = {i for i, at in beats if at >= cutoff} | {self.instance_id}
            dead = {i for i, at in beats if at < cutoff} - {self.instance_id}
            stuck = (
                await Message.filter(status=Status.IN_PROGRESS)
                .exclude(instance_id__in=live_ids)
                .values_list("id", "instance_id", "created_at")
            )
            taken: dict[str, list[str]] = {}
            for message_id, owner, created_at in stuck:
                if owner in dead or created_at < cutoff:
                    taken.setdefault(str(owner), []).append(message_id)
            reaped: dict[str, int] = {}
            for owner, ids in taken.items():
                # Counted by what this update changed: instances reaping in the same round
                # do not count the same message twice.
                count = await outbox.interrupt_ids(ids, now, self.events)
                if count:
                    reaped[owner] = count
            if dead:
                await Instance.filter(id__in=dead, heartbeat_at__lt=cutoff).delete()
                if self.events:  # the events they had claimed: for another to deliver
                    await outbox.release_owners(sorted(dead))
            if self.events and (reaped or dead):
                self.events_written()
            return reaped

        return dict(await self._call(op))

    async def leave(self) -> None:
        """Forget this instance's heartbeat record (a clean stop)."""

        async def op() -> None:
            await Instance.filter(id=self.instance_id).delete()

        await self._call(op)

    # -- reads -------------------------------------------------------------------------------

    async def read(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run an ORM read in this store's context."""
        with self.active():
            return await fn()

    async def find_thread(
        self, user_id: str, hashes: list[str], chat_id: str | None = None
    ) -> ThreadMatch | None:
        """The caller's stored message matching the longest prefix of ``hashes``; of equal
        matches, the newest."""
        assert self._dialect is not None
        # The usual request resends the whole history plus one new message: look at the last
        # two first, then further back, in chunks.
        end = len(hashes)
        first = max(0, end - 2)
        while end > 0:
            candidates = hashes[first:end]
            query = (
                "SELECT id, chat_id, prefix_hash FROM messages WHERE user_id = ? AND prefix_hash "
                f"IN ({', '.join('?' * len(candidates))})"
            )
            params: list[Any] = [user_id, *candidates]
            if chat_id is not None:
                query += " AND chat_id = ?"
                params.append(chat_id)
            query += " ORDER BY created_at DESC"
            rows = await self._query(query, params)
            if rows:
                position = {h: i for i, h in enumerate(candidates, start=first)}
                best = rows[0]
                for row in rows:
                    if position[row[2]] > position[best[2]]:
                        best = row
                return ThreadMatch(best[0], best[1], position[best[2]])
            end, first = first, max(0, first - _IN_CHUNK)
            await asyncio.sleep(0)  # a long history is many reads: let other clients in between
        return None

    async def last_activity(self, message_id: str) -> datetime | None:
        """When ``message_id`` was last answered (its newest child), else when it was stored;
        ``None`` when it does not exist."""
        rows = await self._query(
            "SELECT MAX(created_at) FROM messages WHERE parent_id = ? OR id = ?",
            [message_id, message_id],
        )
        value = rows[0][0] if rows else None
        if isinstance(value, str):  # SQLite keeps timestamps as ISO text
            value = datetime.fromisoformat(value)
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    async def chat_access(self, chat_id: str) -> tuple[str, str, str | None] | None:
        """``(owner, visibility, head message id)`` of a chat, or ``None`` when it does not
        exist."""
        rows = await self._query(
            "SELECT owner_id, visibility, head_id FROM chats WHERE id = ?", [chat_id]
        )
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

    async def branch(self, chat_id: str, leaf_id: str) -> list[BranchEntry]:
        """The messages from the chat's first one down to ``leaf_id``, oldest first (empty when
        ``leaf_id`` is not a message of the chat)."""
        rows = await self._query(
            "WITH RECURSIVE branch(id, parent_id, role, data, prefix_hash, status, depth) AS ("
            " SELECT id, parent_id, role, data, prefix_hash, status, 0 FROM messages"
            " WHERE id = ? AND chat_id = ?"
            " UNION ALL SELECT m.id, m.parent_id, m.role, m.data, m.prefix_hash, m.status,"
            " b.depth + 1 FROM messages m JOIN branch b ON m.id = b.parent_id)"
            " SELECT id, role, data, prefix_hash, status FROM branch ORDER BY depth DESC",
            [leaf_id, chat_id],
        )
        return [
            BranchEntry(
                r[0], r[1], orjson.loads(r[2]) if isinstance(r[2], str) else r[2], r[3], r[4]
            )
            for r in rows
        ]

    async def _query(self, query: str, params: list[Any]) -> Sequence[Any]:
        """Rows of a small indexed read: on SQLite straight from the event loop (WAL readers
        never wait for the writer), elsewhere through the pool."""
        if self._fast is not None:
            return self._fast.execute(query, params).fetchall()
        assert self._dialect is not None
        _, rows = await self.conn.execute_query(self._dialect.sql(query), params)
        return rows

    async def api_key_by_hash(self, key_hash: str) -> tuple[str, str, str, str | None, bool] | None:
        """``(key id, user id, user name, tier, revoked)`` of the key with this hash."""
        rows = await self._query(
            "SELECT k.id, k.user_id, u.name, u.tier, k.revoked_at IS NOT NULL, k.hash "
            "FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.hash = ?",
            [key_hash],
        )
        if not rows or not hmac.compare_digest(rows[0][5], key_hash):
            return None
        key_id, user_id, name, tier, revoked, _ = rows[0]
        return key_id, user_id, name, tier, bool(revoked)

    async def api_keys(self, user_id: str | None = None) -> list[tuple[ApiKey, str | None]]:
        """Every key (of one user), oldest first, with its user's tier."""
        with self.active():
            query = ApiKey.all().prefetch_related("user").order_by("created_at")
            if user_id is not None:
                query = query.filter(user_id=user_id)
            keys = await query
        return [(k, k.user.tier) for k in keys]

    async def daily_usage(
        self, user_id: str, since: datetime, *, at_most: int, tokens: bool
    ) -> tuple[int, int, datetime | None]:
        """A user's answers since ``since`` (counted up to ``at_most``: the index range scanned
        stays as small as the quota), tokens used (summed only when asked), and the oldest
        answer's time. Every answer counts, failed ones too."""
        assert self._dialect is not None
        window = "FROM messages WHERE user_id = ? AND role = 'assistant' AND created_at > ?"
        params: list[Any] = [user_id, self._dialect.ts(since)]
        rows = await self._query(
            f"SELECT COUNT(*) FROM (SELECT 1 {window} LIMIT ?) AS recent", [*params, at_most]
        )
        count = int(rows[0][0])
        used = 0
        if tokens:
            rows = await self._query(f"SELECT COALESCE(SUM(total_tokens), 0) {window}", params)
            used = int(rows[0][0])
        oldest = None
        if count:
            rows = await self._query(
                f"SELECT created_at {window} ORDER BY created_at LIMIT 1", params
            )
            oldest = rows[0][0]
            if isinstance(oldest, str):
                oldest = datetime.fromisoformat(oldest)
        return count, used, oldest

    async def get_chat(self, chat_id: str) -> Chat | None:
        with self.active():
            return await Chat.get_or_none(id=chat_id)

    async def chat_messages(self, chat_id: str) -> list[Message]:
        """Every message of a chat, every branch, oldest first."""
        with self.active():
            return await Message.filter(chat_id=chat_id).order_by("created_at", "id")

    async def get_message(self, message_id: str) -> Message | None:
        """The message, or ``None`` (also for an id too long to be one)."""
        if not storable_message_id(message_id):
            return None
        with self.active():
            return await Message.get_or_none(id=message_id)


async def _noop() -> None:
    return None


def _chat_created(turn: Turn) -> list[Any]:
    data = {"title": turn.title}
    at = outbox.ms(turn.created_at)
    return outbox.event_row("chat.created", turn.user_id, turn.chat_id, None, data, at)


def _answer_event(message_id: str, a: Answer) -> list[Any]:
    data = outbox.answer_data(a.status, a.model, a.finish_reason, a.usage, a.error)
    return outbox.answer_event_row(message_id, a.status, data, outbox.ms(a.completed_at))


def _json_value(value: Any) -> Any:
    # SQLite (and asyncpg without a codec) hands JSON columns back as text.
    return orjson.loads(value) if isinstance(value, str | bytes) else value
