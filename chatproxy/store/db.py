"""Opening the database: Tortoise configuration, a context of our own, migrations."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tortoise.context import TortoiseContext
from tortoise.migrations.executor import MigrationExecutor

from chatproxy.errors import StoreUnavailable

__all__ = [
    "APP_LABEL",
    "BUSY_POLL",
    "WRITER_GAP",
    "WalCheckpointer",
    "begin_immediate",
    "is_busy",
    "open_database",
    "open_fast_sqlite",
    "reclaim_sqlite_space",
    "settle_wal",
    "sqlite_path",
    "tortoise_config",
]

APP_LABEL = "models"
_APP = {"models": ["chatproxy.store.models"], "migrations": "chatproxy.store.migrations"}
SQLITE_BUSY_TIMEOUT_MS = 10_000


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite://`` URL (``None`` for other databases)."""
    if not url.startswith("sqlite://"):
        return None
    return url[len("sqlite://") :].split("?", 1)[0]


def _connection(url: str) -> dict[str, Any] | str:
    path = sqlite_path(url)
    if path is None:
        return url.replace("postgresql://", "postgres://", 1)
    parts = urlsplit(url)
    credentials: dict[str, Any] = {
        "file_path": path,
        "journal_mode": "WAL",
        "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
        "synchronous": "NORMAL",
        "foreign_keys": "ON",
        # Checkpoints run on their own connection (WalCheckpointer), never inside a commit
        # that a request is waiting for.
        "wal_autocheckpoint": 0,
    }
    credentials.update(dict(parse_qsl(parts.query)))
    return {"engine": "tortoise.backends.sqlite", "credentials": credentials}


def _redact(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


def tortoise_config(url: str) -> dict[str, Any]:
    """The Tortoise configuration for a ``storage.url``."""
    return {
        "connections": {"default": _connection(url)},
        "apps": {APP_LABEL: dict(_APP, default_connection="default")},
        "use_tz": True,
        "timezone": "UTC",
    }


def _create_sqlite(path: str) -> None:
    """Open (or create) the file. A new one gets ``auto_vacuum = INCREMENTAL`` (space freed by
    a prune goes back in short steps: :func:`reclaim_sqlite_space`), which only a file without
    a header yet takes; an older one switches at its first ``VACUUM``."""
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA journal_mode=WAL").fetchall()
    finally:
        db.close()


async def open_database(url: str, *, migrate: bool = True) -> TortoiseContext:
    """A Tortoise context connected to ``url``, with every migration applied when asked.

    The context is ours alone (several stores can live in one process, as tests do); callers
    activate it with ``with ctx:`` around ORM calls.
    """
    config = tortoise_config(url)
    path = sqlite_path(url)
    if path is not None and path != ":memory:":
        # Fail here, not in aiosqlite's thread: after a failed connect that thread reports to
        # the event loop later, and a CLI that exits at once meets a closed loop.
        try:
            _create_sqlite(path)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the database {_redact(url)}: {exc}") from None
    ctx = TortoiseContext()
    with ctx:
        await ctx.init(config=config)
        try:
            # Connect before migrating: Tortoise's migration loader swallows connection errors
            # (and then waits forever on the lock the failed connect left taken).
            await ctx.db("default").execute_query("SELECT 1")
        except Exception as exc:
            await ctx.close_connections()
            raise StoreUnavailable(f"cannot open the database {_redact(url)}: {exc}") from None
        if migrate:
            executor = MigrationExecutor(ctx.db("default"), {APP_LABEL: config["apps"][APP_LABEL]})
            try:
                async with _migration_lock(url):
                    await executor.migrate()
            except Exception as exc:  # not chatproxy's database, or one it cannot upgrade
                await ctx.close_connections()
                raise StoreUnavailable(
                    f"cannot upgrade the database {_redact(url)}: {type(exc).__name__}: {exc}"
                ) from None
    return ctx


MIGRATION_LOCK_KEY = 0x63686174  # "chat": any constant shared by every instance


@contextlib.asynccontextmanager
async def _migration_lock(url: str) -> AsyncIterator[None]:
    """On PostgreSQL, instances starting together migrate one at a time (a session advisory
    lock held on a connection of its own while the migrations run on the pool)."""
    if sqlite_path(url) is not None:
        yield
        return
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgres://", "postgresql://", 1))
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            yield
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()


def open_fast_sqlite(path: str) -> sqlite3.Connection:
    """A connection for the store's hot statements, used on the event loop (or, for a very
    large batch, by the writer from a worker thread: one user at a time): autocommit (the
    batch opens its own transaction), and no busy wait, ever."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in (
        "busy_timeout=0",
        "synchronous=NORMAL",
        "foreign_keys=ON",
        "wal_autocheckpoint=0",
        # A large store's index pages that writes touch stay in the cache (the default holds
        # 2 MiB) and are read without a system call each.
        "cache_size=-65536",
        "mmap_size=268435456",
        "journal_size_limit=4194304",  # the log's file cut back to 4 MiB when it starts again
    ):
        db.execute(f"PRAGMA {pragma}")
    return db


BUSY_POLL = 0.001  # seconds between two tries for the write lock (begin_immediate)
# Seconds a bulk writer (a prune, a long delete, an import) leaves the write lock free between
# two of its transactions: a server waiting in begin_immediate takes it within one poll.
WRITER_GAP = 0.002


def begin_immediate(db: sqlite3.Connection, timeout: float = SQLITE_BUSY_TIMEOUT_MS / 1000) -> None:
    """``BEGIN IMMEDIATE`` on a connection without a busy timeout, tried again every
    :data:`BUSY_POLL` until ``timeout`` (blocking: call it off the event loop).

    SQLite's own busy wait sleeps longer and longer between tries (up to 100 ms): beside
    another process that writes batch after batch, such a waiter kept finding the lock taken
    and waited seconds (measured beside ``db prune``); one that tries every millisecond gets
    it in the other writer's first gap."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(BUSY_POLL)


def is_busy(exc: BaseException) -> bool:
    """Whether an SQLite error says another connection holds the lock."""
    text = str(exc)
    return "locked" in text or "busy" in text


VACUUM_STEP = 256  # pages given back per step (1 MiB of a 4 KiB-page file)
_INCREMENTAL = 2  # PRAGMA auto_vacuum


async def reclaim_sqlite_space(path: str) -> None:
    """Give the file's free pages back to the file system. In ``auto_vacuum = INCREMENTAL``
    mode it goes in short steps, each its own transaction, so a server writing to the same file
    waits behind one step at most; otherwise (a file created before that mode) one ``VACUUM``,
    which also switches the file to it. Runs on a connection of its own, off the event loop."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] != _INCREMENTAL:
            await asyncio.to_thread(db.execute, "PRAGMA auto_vacuum=INCREMENTAL")
            await asyncio.to_thread(db.execute, "VACUUM")
        else:
            step = f"PRAGMA incremental_vacuum({VACUUM_STEP})"
            while db.execute("PRAGMA freelist_count").fetchone()[0]:
                # executescript: execute() would free a single page (one VDBE step).
                await asyncio.to_thread(db.executescript, step)
                await asyncio.sleep(0.005)  # another connection's turn
        await asyncio.to_thread(settle_wal, db)
    finally:
        db.close()


def settle_wal(db: sqlite3.Connection, timeout: float = SQLITE_BUSY_TIMEOUT_MS / 1000) -> None:
    """Move the write-ahead log into the database and truncate it (blocking: call it off the
    event loop), holding up other connections' writes only for a moment.

    A PASSIVE checkpoint copies the log alongside them first. It never starts the log again
    while others read and write without a pause: then the log only grows, and every read of
    a page looks through it. The TRUNCATE checkpoint after it does, with only what was written
    meanwhile left to copy; it is tried without a busy wait every :data:`BUSY_POLL` (a busy
    wait would keep every writer out for as long as it lasts), until ``timeout``."""
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    db.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + timeout
        while db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
            if time.monotonic() >= deadline:
                return
            time.sleep(BUSY_POLL)
    finally:
        db.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


class WalCheckpointer:
    """Moves SQLite's write-ahead log into the database from a connection of its own.

    SQLite's automatic checkpoint runs inside the commit that crosses the threshold, and with
    its fsync it made about one request in fifty wait ~10 ms for its first byte. A PASSIVE
    checkpoint on a second connection runs alongside the writer instead of in its way.
    """

    def __init__(
        self, path: str, *, every: float = 10.0, wal_bytes: int = 16 * 1024 * 1024
    ) -> None:
        self.path = path
        self.every = every
        self.wal_bytes = wal_bytes
        self.restart_bytes = 4 * wal_bytes  # a log this large after a checkpoint is settled
        self._task: asyncio.Task[None] | None = None
        self._db: sqlite3.Connection | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="chatproxy-wal-checkpointer")

    async def stop(self) -> None:
        """Stop, after a last checkpoint that also truncates the log."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(sqlite3.Error):
            await asyncio.to_thread(self._settle)
        if self._db is not None:
            self._db.close()
            self._db = None

    def _wal_size(self) -> int:
        try:
            return os.stat(self.path + "-wal").st_size
        except OSError:
            return 0

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        return self._db

    def _checkpoint(self, mode: str) -> None:
        self._connection().execute(f"PRAGMA wal_checkpoint({mode})").fetchall()

    def _settle(self) -> None:
        settle_wal(self._connection())

    async def _loop(self) -> None:
        idle_rounds = 0
        while True:
            await asyncio.sleep(self.every / 4)
            idle_rounds += 1
            if self._wal_size() < self.wal_bytes and idle_rounds < 4:
                continue
            idle_rounds = 0
            if not self._wal_size():
                continue
            try:
                await asyncio.to_thread(self._checkpoint, "PASSIVE")
                if self._wal_size() >= self.restart_bytes:
                    # It never started again: others read and write without a pause.
                    await asyncio.to_thread(self._settle)
            except sqlite3.Error as exc:
                logging.getLogger("chatproxy.store").warning("WAL checkpoint failed: %s", exc)
