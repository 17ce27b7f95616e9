"""Whole-store reads and writes for ``export --all`` and ``import``, as plain SQL.

The ORM builds a model object per row (tens of microseconds each); a backup of a million
messages is read and written here as rows instead: pages of chats in key order with one
query for their messages (the ``messages(chat_id, created_at)`` index), and imports staged
per table and batch (SQLite: ``executemany`` into a temporary table; PostgreSQL: ``COPY``),
then moved with one ``INSERT ... SELECT``, in transactions short enough that a proxy serving the
same store waits a few tens of milliseconds at most for its next write.

SQLite is used through a ``sqlite3`` connection of our own, every call in a worker thread (a
transaction never waits on the event loop); PostgreSQL through a connection of the store's
pool. On SQLite the import moves the write-ahead log into the database between batches, so
the log stays within the database's size.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from chatproxy.store.db import SQLITE_BUSY_TIMEOUT_MS, WRITER_GAP, settle_wal, sqlite_path
from chatproxy.store.store import Store

__all__ = [
    "CHAT_COLUMNS",
    "MESSAGE_COLUMNS",
    "VOTE_COLUMNS",
    "BulkDB",
    "ImportBatch",
    "Written",
    "bulk_db",
    "sqlite_ts",
]

CHAT_COLUMNS = ("id", "owner_id", "title", "visibility", "metadata", "head_id")
CHAT_COLUMNS += ("created_at", "updated_at")
MESSAGE_COLUMNS = (
    "id",
    "chat_id",
    "parent_id",
    "user_id",
    "role",
    "text",
    "depth",
    "data",
    "prefix_hash",
    "status",
    "error",
    "model",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "usage",
    "upstream_id",
    "system_fingerprint",
    "params",
    "client_disconnected",
    "ttft_ms",
    "duration_ms",
    "instance_id",
    "metadata",
    "created_at",
    "completed_at",
)
VOTE_COLUMNS = ("message_id", "chat_id", "user_id", "up", "created_at")
_ID_CHUNK = 500  # ids per IN (...) list on SQLite

_STAGED = (
    ("users", ("id", "name", "created_at")),
    ("chats", CHAT_COLUMNS),
    ("messages", MESSAGE_COLUMNS),
    ("votes", VOTE_COLUMNS),
)


@dataclass(slots=True)
class ImportBatch:
    """Rows of whole documents (or of one part of a very large one), parents before children.

    ``docs`` holds, per document (or part of one): its line, its chat row and how many of
    ``messages`` and ``votes`` are its (in order), so that a document whose ids are taken by
    another chat or user is cut off with what follows it."""

    users: dict[str, Any] = field(default_factory=dict)  # id -> created_at
    messages: list[Sequence[Any]] = field(default_factory=list)
    votes: list[Sequence[Any]] = field(default_factory=list)
    docs: list[tuple[int, Sequence[Any], int, int]] = field(default_factory=list)

    @property
    def chats(self) -> list[Sequence[Any]]:
        return [d[1] for d in self.docs]

    def __len__(self) -> int:
        return len(self.messages)


@dataclass(slots=True)
class Written:
    """What a batch added, and the first document it could not take (its line and why)."""

    chats: int = 0
    messages: int = 0
    conflict: tuple[int, str] | None = None
    kept_docs: int = 0  # of the batch's documents, how many (before the conflict) go in


def _plan(
    batch: ImportBatch, chat_owners: dict[str, str], message_chats: dict[str, str]
) -> tuple[ImportBatch, Written]:
    """The rows of ``batch`` that are not stored yet (``chat_owners`` and ``message_chats``:
    the stored ones of its ids), up to the first document whose chat is another user's or
    whose message ids are another chat's. A chat already stored is left as it is; its new
    messages are added."""
    out = ImportBatch(users=batch.users)
    written = Written()
    m = v = 0
    for kept, (line, chat, n_messages, n_votes) in enumerate(batch.docs):
        written.kept_docs = kept
        chat_id, owner = chat[0], chat[1]
        messages = batch.messages[m : m + n_messages]
        votes = batch.votes[v : v + n_votes]
        m += n_messages
        v += n_votes
        stored_owner = chat_owners.get(chat_id)
        if stored_owner is not None and stored_owner != owner:
            why = f"chat {chat_id!r} is already stored for another user ({stored_owner!r})"
            written.conflict = (line, why)
            break
        taken = next((r[0] for r in messages if message_chats.get(r[0], chat_id) != chat_id), None)
        if taken is not None:
            other = message_chats[taken]
            why = f"message {taken!r} of chat {chat_id!r} is already in chat {other!r}"
            written.conflict = (line, why)
            break
        new = [r for r in messages if r[0] not in message_chats] if message_chats else messages
        if stored_owner is None:
            chat_owners[chat_id] = owner
            written.chats += 1
            out.docs.append((line, chat, len(new), len(votes)))
        message_chats.update((r[0], chat_id) for r in new)
        out.messages.extend(new)
        out.votes.extend(votes)
        written.messages += len(new)
    else:
        written.kept_docs = len(batch.docs)
    return out, written


class BulkDB(ABC):
    """One database connection for bulk reads and short bulk write transactions."""

    postgres: bool
    # The aim for one write transaction, which an import sizes its batches on: while a proxy
    # serves the store, and while none does (longer: fewer, larger transactions write each
    # index page once for more rows).
    transaction_seconds: float
    alone_seconds: float

    @abstractmethod
    async def fetch(self, query: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        """The rows of a read (``?`` placeholders; a list parameter written ``IN ?list``)."""

    @abstractmethod
    async def write(self, batch: ImportBatch) -> Written:
        """Store ``batch`` in one transaction (see :func:`_plan` for what is left out)."""

    @abstractmethod
    async def delete_rows(self, chat_id: str | None, message_ids: list[str]) -> None:
        """Remove what a failed import of a large document had written of it."""

    async def finish(self) -> None:
        """After the last write (SQLite: the log truncated); nothing to do by default."""
        return None

    async def served(self, within: float) -> bool:
        """Whether a proxy serves the store: one of its instances heartbeated in the last
        ``within`` seconds (a proxy that stops cleanly removes its record)."""
        rows = await self.fetch("SELECT heartbeat_at FROM instances", [])
        since = datetime.now(UTC) - timedelta(seconds=within)
        for (value,) in rows:
            at = self.when(value)
            if at is not None and (at if at.tzinfo else at.replace(tzinfo=UTC)) >= since:
                return True
        return False

    @abstractmethod
    def ts(self, value: datetime | None) -> Any:
        """A datetime as this database takes it as a parameter."""

    @abstractmethod
    def when(self, value: Any) -> datetime | None:
        """A datetime column as read."""

    # Called with every (seconds, WAL bytes, database bytes) after a write (measurements).
    observe: Callable[[float, int, int], object] | None = None


def _in_list(query: str, n: int) -> str:
    return query.replace("IN ?list", f"IN ({', '.join('?' * n)})")


# The full-text indexes' insert triggers (migration 0008_search): table, indexed column.
# Each full-text index: its table, column, and the rows it holds (migration 0012: messages
# once final).
_FTS_TRIGGERS = (("messages", "text", "status != 'in_progress'"), ("chats", "title", "1"))


def sqlite_ts(value: datetime | None) -> str | None:
    """A datetime as SQLite stores it (Tortoise's ISO text)."""
    return None if value is None else str(value)


@contextlib.contextmanager
def _fts_in_bulk(db: sqlite3.Connection) -> Iterator[None]:
    """Inside a write transaction: rows inserted in the block reach the full-text indexes in
    one statement per index instead of through the per-row insert triggers, which are dropped
    for the block and made again after it (in the same transaction: no other writer ever
    sees the store without them, and a rollback restores them).

    Per row, FTS5 writes its pending terms out at the trigger's statement boundary; in one
    statement it writes them once, several times faster. The rows added are those past the
    table's largest rowid before the block (SQLite numbers new rows upwards)."""
    tables = []
    for table, column, held in _FTS_TRIGGERS:
        name = f"{table}_fts_insert"
        row = db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?", [name]
        ).fetchone()
        if row is None:  # a store before the full-text indexes: nothing to keep in step
            continue
        last = db.execute(f"SELECT coalesce(max(rowid), 0) FROM {table}").fetchone()[0]
        db.execute(f"DROP TRIGGER {name}")
        tables.append((table, column, held, row[0], last))
    yield
    for table, column, held, create, last in tables:
        db.execute(
            f"INSERT INTO {table}_fts(rowid, {column}) "
            f"SELECT rowid, {column} FROM {table} WHERE rowid > ? AND {held}",
            [last],
        )
        db.execute(create)


class _Sqlite(BulkDB):
    postgres = False
    transaction_seconds = 0.025  # a proxy's next write waits for it (one writer at a time)
    alone_seconds = 0.5

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in (
            f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",  # a proxy's write: short, waited for
            "synchronous=NORMAL",
            "foreign_keys=ON",
            "wal_autocheckpoint=0",  # checkpointed here, between transactions
            "journal_size_limit=4194304",  # the log's file cut back to 4 MiB once moved
            "temp_store=MEMORY",  # the staging tables
        ):
            self._db.execute(f"PRAGMA {pragma}")
        self._writing = False
        # Checkpoints run on a connection and thread of their own, alongside the import's
        # next batches (see _checkpoint_if_large).
        self._checkpointer = concurrent.futures.ThreadPoolExecutor(1, "chatproxy-checkpoint")
        self._checkpoint: concurrent.futures.Future[None] | None = None
        self._checkpoint_db: sqlite3.Connection | None = None

    def close(self) -> None:
        self._wait_checkpoint()
        self._checkpointer.shutdown()
        if self._checkpoint_db is not None:
            self._checkpoint_db.close()
        self._db.close()

    def ts(self, value: datetime | None) -> Any:
        return sqlite_ts(value)

    def when(self, value: Any) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value)

    def _fetch(self, query: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        listed = [p for p in params if isinstance(p, list)]
        if not listed:
            return self._db.execute(query, params).fetchall()
        (ids,) = listed
        rows: list[Sequence[Any]] = []
        for i in range(0, max(len(ids), 1), _ID_CHUNK):
            chunk = ids[i : i + _ID_CHUNK]
            flat: list[Any] = []
            for p in params:
                flat.extend(chunk if isinstance(p, list) else [p])
            rows.extend(self._db.execute(_in_list(query, len(chunk)), flat).fetchall())
        return rows

    async def fetch(self, query: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        return await asyncio.to_thread(self._fetch, query, params)

    def _stage(self, batch: ImportBatch) -> None:
        # Rows go to temporary tables first (this connection's own, outside the database and
        # its lock), then into the store with one INSERT ... SELECT per table: row by row,
        # the full-text triggers cost several times the insert itself.
        db = self._db
        db.execute("BEGIN")
        try:
            for table, columns in _STAGED:
                columns_sql = ", ".join(columns)
                db.execute(f"CREATE TEMP TABLE IF NOT EXISTS import_{table} ({columns_sql})")
                db.execute(f"DELETE FROM temp.import_{table}")
            users = [(u, u, self.ts(at)) for u, at in batch.users.items()]
            for (table, columns), rows in zip(
                _STAGED, (users, batch.chats, batch.messages, batch.votes), strict=True
            ):
                if rows:
                    marks = ", ".join("?" * len(columns))
                    db.executemany(f"INSERT INTO temp.import_{table} VALUES ({marks})", rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _write(self, batch: ImportBatch) -> Written:
        import time

        self._stage(batch)
        self._before_write()
        started = time.perf_counter()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            owners = dict(
                db.execute(
                    "SELECT c.id, c.owner_id FROM chats c JOIN temp.import_chats s ON s.id = c.id"
                ).fetchall()
            )
            taken = dict(
                db.execute(
                    "SELECT m.id, m.chat_id FROM messages m "
                    "JOIN temp.import_messages s ON s.id = m.id"
                ).fetchall()
            )
            _, written = _plan(batch, owners, taken)
            if written.kept_docs < len(batch.docs):  # cut off at the refused document
                docs = batch.docs[: written.kept_docs]
                for table, keep in (
                    ("chats", len(docs)),
                    ("messages", sum(d[2] for d in docs)),
                    ("votes", sum(d[3] for d in docs)),
                ):
                    db.execute(f"DELETE FROM temp.import_{table} WHERE rowid > ?", [keep])
            with _fts_in_bulk(db):
                for table, columns in _STAGED:
                    conflict = "message_id, user_id" if table == "votes" else "id"
                    columns_sql = ", ".join(columns)
                    db.execute(
                        f"INSERT INTO {table} ({columns_sql}) SELECT {columns_sql} FROM "
                        f"temp.import_{table} WHERE true ORDER BY rowid "
                        f"ON CONFLICT ({conflict}) DO NOTHING"
                    )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        seconds = time.perf_counter() - started
        time.sleep(WRITER_GAP)  # a server waiting for the write lock takes it now
        self._checkpoint_if_large()
        if self.observe is not None:
            self.observe(seconds, self._size("-wal"), self._size(""))
        return written

    def _size(self, suffix: str) -> int:
        try:
            return os.stat(self.path + suffix).st_size
        except OSError:
            return 0

    def _log_bound(self) -> int:
        # Half the database (4 to 64 MiB): the log is moved into it past this size.
        return min(max(self._size("") // 2, 4 << 20), 64 << 20)

    def _checkpoint_if_large(self) -> None:
        # After a transaction: once the log holds the bound, a PASSIVE checkpoint (it never
        # waits for a proxy's readers) moves it into the database on its own connection while
        # the import goes on; the log is then written from its start again, and cut back to
        # journal_size_limit. Imports wait for one only past twice the bound (_before_write),
        # so the log stays within the database's size.
        running = self._checkpoint is not None and not self._checkpoint.done()
        if not running and self._size("-wal") >= self._log_bound():
            self._checkpoint = self._checkpointer.submit(self._run_checkpoint)

    def _before_write(self) -> None:
        if self._size("-wal") >= 2 * self._log_bound():
            self._wait_checkpoint()
            if self._size("-wal") >= 2 * self._log_bound():
                # The log did not start again: a proxy on the store reads and writes without a
                # pause. Settle it, between two of the import's transactions.
                settle_wal(self._checkpoint_connection())

    def _checkpoint_connection(self) -> sqlite3.Connection:
        if self._checkpoint_db is None:
            self._checkpoint_db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None
            )
            self._checkpoint_db.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        return self._checkpoint_db

    def _run_checkpoint(self) -> None:
        self._checkpoint_connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _wait_checkpoint(self) -> None:
        if self._checkpoint is not None:
            checkpoint, self._checkpoint = self._checkpoint, None
            with contextlib.suppress(sqlite3.Error):
                checkpoint.result()

    async def write(self, batch: ImportBatch) -> Written:
        if not self._writing:  # 64 MiB of pages for the indexes of a large store (an
            self._db.execute("PRAGMA cache_size=-65536")  # export reads with the default)
            self._writing = True
        return await asyncio.to_thread(self._write, batch)

    def _delete(self, chat_id: str | None, message_ids: list[str]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            # Children first, the chat last: a cascade from the chat (or a root) down a long
            # branch would pass SQLite's trigger depth.
            for i in range(len(message_ids), 0, -_ID_CHUNK):
                chunk = message_ids[max(0, i - _ID_CHUNK) : i]
                db.execute(_in_list("DELETE FROM messages WHERE id IN ?list", len(chunk)), chunk)
            if chat_id is not None:
                db.execute("DELETE FROM chats WHERE id = ?", [chat_id])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def delete_rows(self, chat_id: str | None, message_ids: list[str]) -> None:
        await asyncio.to_thread(self._delete, chat_id, message_ids)

    async def finish(self) -> None:
        def truncate() -> None:
            self._wait_checkpoint()
            settle_wal(self._db)

        with contextlib.suppress(sqlite3.Error):
            await asyncio.to_thread(truncate)


ANALYZE_AT_LEAST = 5_000  # messages an import adds before it first analyzes (PostgreSQL)
_ANALYZE = (
    "ANALYZE users, chats (id, owner_id, updated_at), messages (id, chat_id, parent_id, "
    "user_id, role, prefix_hash, status, instance_id, created_at), votes"
)


def _numbered(query: str) -> str:
    parts = query.replace("IN ?list", "= ANY(?)").split("?")
    return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))


class _Postgres(BulkDB):
    postgres = True
    # Writers do not wait for each other here (a proxy's inserts never touch the rows an
    # import adds): longer transactions cost it nothing, and fewer statements per message.
    transaction_seconds = 0.25
    alone_seconds = 0.25

    def __init__(self, conn: Any) -> None:
        self._conn = conn  # an asyncpg connection
        self._staged: set[str] = set()  # the temporary tables made on it
        # Messages written since the tables' statistics were last brought up to date, and
        # how many more make them stale (None: not read yet).
        self._unanalyzed = 0
        self._stale_at: int | None = None

    def ts(self, value: datetime | None) -> Any:
        return value

    def when(self, value: Any) -> datetime | None:
        return value  # type: ignore[no-any-return]

    async def fetch(self, query: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        return list(await self._conn.fetch(_numbered(query), *params))

    async def write(self, batch: ImportBatch) -> Written:
        import time

        started = time.perf_counter()
        conn = self._conn
        async with conn.transaction():
            # Not waiting for the log's flush at each commit: a crash loses at most the last
            # batches, never a part of one, and importing the file again adds them.
            await conn.execute("SET LOCAL synchronous_commit = off")
            chat_ids = [d[1][0] for d in batch.docs]
            owners = dict(
                await conn.fetch("SELECT id, owner_id FROM chats WHERE id = ANY($1)", chat_ids)
            )
            ids = [r[0] for r in batch.messages]
            chats = dict(
                await conn.fetch("SELECT id, chat_id FROM messages WHERE id = ANY($1)", ids)
            )
            rows, written = _plan(batch, owners, chats)
            users = [(u, u, at) for u, at in rows.users.items()]
            # COPY into this connection's temporary tables (emptied at each commit), then one
            # INSERT ... SELECT per table: a statement per row costs several times more.
            for (table, columns), values in zip(
                _STAGED, (users, rows.chats, rows.messages, rows.votes), strict=True
            ):
                if not values:
                    continue
                if table not in self._staged:
                    await conn.execute(
                        f"CREATE TEMP TABLE IF NOT EXISTS import_{table} "
                        f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                    )
                    self._staged.add(table)
                await conn.copy_records_to_table(f"import_{table}", records=values, columns=columns)
                conflict = "message_id, user_id" if table == "votes" else "id"
                columns_sql = ", ".join(columns)
                await conn.execute(
                    f"INSERT INTO {table} ({columns_sql}) SELECT {columns_sql} "
                    f"FROM import_{table} ON CONFLICT ({conflict}) DO NOTHING"
                )
        if self.observe is not None:
            self.observe(time.perf_counter() - started, 0, 0)
        await self._keep_statistics(written.messages)
        return written

    async def _keep_statistics(self, added: int) -> None:
        """``ANALYZE`` the tables an import grows, each time it has added as many messages as
        they held at the last analysis (and at the end: :meth:`finish`).

        A store restored into an empty database is planned on the statistics of an empty
        one: with them, a serving proxy's prefix lookup took the user's other index and
        walked all their messages (30 ms per request at 100,000 and growing, beside an
        import). Autovacuum would analyze the tables in time, if it runs and keeps up; the
        import does not count on it. An analysis samples a fixed number of rows (a fraction
        of a second), blocks no writer, and makes every cached plan on these tables be made
        again."""
        if self._stale_at is None:
            self._stale_at = await self._stale_after()
        self._unanalyzed += added
        if self._unanalyzed >= self._stale_at:
            await self._analyze()

    async def _analyze(self, *, whole: bool = False) -> None:
        # While importing: the columns the proxy's lookups filter on (an expression index's
        # statistics, search's, cost a full-text parse per sampled row); at the end, all.
        await self._conn.execute("ANALYZE users, chats, messages, votes" if whole else _ANALYZE)
        self._stale_at = await self._stale_after()
        self._unanalyzed = 0

    async def _stale_after(self) -> int:
        """Messages to add before the statistics are stale: as many as the last analysis
        counted (:data:`ANALYZE_AT_LEAST` at the least)."""
        rows = await self._conn.fetch(
            "SELECT GREATEST(reltuples, 0)::bigint FROM pg_class WHERE relname = 'messages'"
        )
        return max(int(rows[0][0]) if rows else 0, ANALYZE_AT_LEAST)

    async def finish(self) -> None:
        if self._unanalyzed:
            await self._analyze(whole=True)

    async def delete_rows(self, chat_id: str | None, message_ids: list[str]) -> None:
        async with self._conn.transaction():
            await self._conn.execute("DELETE FROM messages WHERE id = ANY($1)", message_ids)
            if chat_id is not None:
                await self._conn.execute("DELETE FROM chats WHERE id = $1", chat_id)


@contextlib.asynccontextmanager
async def bulk_db(store: Store) -> AsyncIterator[BulkDB]:
    """A :class:`BulkDB` on the (open) store's database."""
    path = sqlite_path(store.url)
    if path is not None:
        db = _Sqlite(path)
        try:
            yield db
        finally:
            await asyncio.to_thread(db.close)
        return
    async with store.conn.acquire_connection() as conn:
        yield _Postgres(conn)
