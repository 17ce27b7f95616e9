"""The committed migrations build the schema the models describe (SPEC §8).

SQLite files are inspected with the stdlib ``sqlite3`` module after chatproxy has closed them,
as an operator (or a backup tool) would see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from tortoise.context import TortoiseContext
from tortoise.migrations.autodetector import MigrationAutodetector
from tortoise.models import Model

from chatproxy.store import migrations as migrations_package
from chatproxy.store.db import APP_LABEL, SQLITE_BUSY_TIMEOUT_MS, open_database, tortoise_config
from chatproxy.store.models import ApiKey, Chat, Instance, Message, Meta, User, Vote
from chatproxy.store.store import Store
from tests.conftest import fresh_postgres, needs_postgres

MODELS: dict[str, type[Model]] = {
    "users": User,
    "chats": Chat,
    "messages": Message,
    "api_keys": ApiKey,
    "meta": Meta,
    "votes": Vote,
    "instances": Instance,
}
MIGRATION_TABLE = "tortoise_migrations"
# Every committed migration file, in order: what a fully migrated database has applied.
ALL_MIGRATIONS = [
    (APP_LABEL, p.stem) for p in sorted(Path(migrations_package.__file__).parent.glob("[0-9]*.py"))
]


@contextlib.contextmanager
def sqlite(path: Path) -> Iterator[sqlite3.Connection]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        yield conn


def tables(path: Path) -> set[str]:
    with sqlite(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


def schema_sql(path: Path) -> list[tuple[str, str, str | None]]:
    with sqlite(path) as conn:
        return conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
            "ORDER BY type, name"
        ).fetchall()


def applied_migrations(path: Path) -> list[tuple[str, str]]:
    with sqlite(path) as conn:
        return conn.execute(f"SELECT app, name FROM {MIGRATION_TABLE} ORDER BY id").fetchall()


def model_columns(model: type[Model]) -> dict[str, bool]:
    """Column name -> NOT NULL, as the model declares them (foreign keys included)."""
    meta = model._meta
    columns = {}
    for name, column in meta.fields_db_projection.items():
        field = meta.fields_map[name]
        columns[column] = bool(field.pk or not field.null)
    return columns


async def migrated_file(tmp_path: Path, name: str = "chatproxy.db") -> Path:
    path = tmp_path / name
    ctx = await open_database(f"sqlite://{path}")
    await ctx.close_connections()
    return path


# -- the SQLite schema --------------------------------------------------------------------------


async def test_migration_creates_users_chats_and_messages_tables(tmp_path: Path) -> None:
    path = await migrated_file(tmp_path)
    assert {"users", "chats", "messages"} <= tables(path)


async def test_tables_have_exactly_the_models_columns_and_nullability(tmp_path: Path) -> None:
    path = await migrated_file(tmp_path)
    with sqlite(path) as conn:
        for table, model in MODELS.items():
            info = conn.execute(f"PRAGMA table_info({table})").fetchall()
            actual = {row[1]: bool(row[3] or row[5]) for row in info}  # notnull or pk
            assert actual == model_columns(model), table


async def test_primary_keys_are_the_models_primary_keys(tmp_path: Path) -> None:
    path = await migrated_file(tmp_path)
    with sqlite(path) as conn:
        for table, model in MODELS.items():
            info = conn.execute(f"PRAGMA table_info({table})").fetchall()
            assert [row[1] for row in info if row[5]] == [model._meta.pk_attr], table


async def test_indexes_serve_prefix_lookup_chat_listing_and_daily_counts(tmp_path: Path) -> None:
    path = await migrated_file(tmp_path)
    with sqlite(path) as conn:
        for table, model in MODELS.items():
            names = {row[1] for row in conn.execute(f"PRAGMA index_list({table})")}
            for index in model._meta.indexes:
                assert index.name in names, f"{table}: index {index.name} missing"
                cols = [row[2] for row in conn.execute(f"PRAGMA index_info({index.name})")]
                assert cols == list(index.fields), index.name
    # SPEC §8 names what the indexes are for; check those three by their columns too.
    with sqlite(path) as conn:
        by_columns = {
            tuple(row[2] for row in conn.execute(f"PRAGMA index_info({name})"))
            for table in MODELS
            for (_, name, *_rest) in conn.execute(f"PRAGMA index_list({table})")
        }
    assert ("user_id", "prefix_hash") in by_columns  # prefix-hash lookup per user
    assert ("owner_id", "updated_at") in by_columns  # chat listing by updated_at
    assert ("user_id", "role", "created_at") in by_columns  # daily counts per user


async def test_foreign_keys_cascade_from_users_to_chats_to_messages(tmp_path: Path) -> None:
    path = await migrated_file(tmp_path)
    with sqlite(path) as conn:
        fks = {
            table: {
                (row[3], row[2], row[4], row[6])  # from, to table, to column, on_delete
                for row in conn.execute(f"PRAGMA foreign_key_list({table})")
            }
            for table in MODELS
        }
    assert fks["users"] == set()
    assert fks["chats"] == {("owner_id", "users", "id", "CASCADE")}
    assert fks["messages"] == {
        ("chat_id", "chats", "id", "CASCADE"),
        ("parent_id", "messages", "id", "CASCADE"),
    }


async def test_sqlite_file_is_left_in_wal_journal_mode(tmp_path: Path) -> None:
    path = await migrated_file(tmp_path)
    with sqlite(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"


async def test_sqlite_connection_has_a_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    ctx = await open_database(f"sqlite://{tmp_path / 'chatproxy.db'}")
    try:
        with ctx:
            _, busy = await ctx.db("default").execute_query("PRAGMA busy_timeout")
            _, fk = await ctx.db("default").execute_query("PRAGMA foreign_keys")
    finally:
        await ctx.close_connections()
    assert busy[0][0] == SQLITE_BUSY_TIMEOUT_MS
    assert fk[0][0] == 1


async def test_store_open_applies_the_migrations_to_a_blank_file(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = Store(f"sqlite://{path}")
    await store.open()
    await store.close()
    assert {"users", "chats", "messages", MIGRATION_TABLE} <= tables(path)
    assert applied_migrations(path) == ALL_MIGRATIONS
    with sqlite(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    # Same schema whichever entry point created it.
    assert schema_sql(path) == schema_sql(await migrated_file(tmp_path, "direct.db"))


async def test_store_open_without_migrate_creates_no_tables(tmp_path: Path) -> None:
    path = tmp_path / "bare.db"
    store = Store(f"sqlite://{path}")
    await store.open(migrate=False)
    await store.close()
    assert not ({"users", "chats", "messages"} & tables(path))


# -- the migration history ----------------------------------------------------------------------


async def test_migration_recorder_lists_the_initial_migration(tmp_path: Path) -> None:
    path = await migrated_file(tmp_path)
    assert applied_migrations(path) == ALL_MIGRATIONS


async def test_applying_migrations_twice_is_a_no_op_and_keeps_data(tmp_path: Path) -> None:
    path = await migrated_file(tmp_path)
    before = schema_sql(path)
    with sqlite(path) as conn:
        conn.execute("INSERT INTO users (id, name, created_at) VALUES ('u1', 'Ada', '2024-01-01')")
        conn.commit()

    await migrated_file(tmp_path)  # same file again
    store = Store(f"sqlite://{path}")
    await store.open()  # and once more through the store, as `serve` does
    await store.close()

    assert schema_sql(path) == before
    assert applied_migrations(path) == ALL_MIGRATIONS
    with sqlite(path) as conn:
        assert conn.execute("SELECT id, name FROM users").fetchall() == [("u1", "Ada")]


async def test_models_and_committed_migrations_agree(tmp_path: Path) -> None:
    """What ``tortoise makemigrations`` would do: a model change without a migration fails."""
    config = tortoise_config(f"sqlite://{tmp_path / 'detect.db'}")
    ctx = TortoiseContext()
    try:
        with ctx:
            await ctx.init(config=config)
            detector = MigrationAutodetector(ctx.apps, {APP_LABEL: config["apps"][APP_LABEL]})
            writers = await detector.changes()
    finally:
        await ctx.close_connections()
    pending = {w.name: [repr(op) for op in w.operations] for w in writers}
    assert pending == {}, f"models changed without a migration: {pending}"


async def test_change_detection_sees_the_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above is not vacuous: against no migrations, every table is pending."""
    package = tmp_path / "no_migrations_yet"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tortoise_config(f"sqlite://{tmp_path / 'detect.db'}")
    app = dict(config["apps"][APP_LABEL], migrations="no_migrations_yet")
    ctx = TortoiseContext()
    try:
        with ctx:
            await ctx.init(config=config)
            writers = await MigrationAutodetector(ctx.apps, {APP_LABEL: app}).changes()
    finally:
        await ctx.close_connections()
    assert len(writers) == 1
    created = {op.name for op in writers[0].operations if type(op).__name__ == "CreateModel"}
    assert created == {model.__name__ for model in MODELS.values()}


# -- PostgreSQL ---------------------------------------------------------------------------------

POSTGRES_URL = os.environ.get("CHATPROXY_TEST_POSTGRES_URL", "")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    if not POSTGRES_URL:
        pytest.skip("set CHATPROXY_TEST_POSTGRES_URL to run the PostgreSQL migration test")
    asyncpg = pytest.importorskip("asyncpg")
    name = f"chatproxy_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_database(POSTGRES_URL, name)
    finally:
        admin = await asyncpg.connect(POSTGRES_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def test_postgres_migration_creates_the_tables_indexes_and_history(
    postgres_url: str,
) -> None:
    import asyncpg

    for _ in range(2):  # the second run must be a no-op
        ctx = await open_database(postgres_url)
        await ctx.close_connections()

    conn = await asyncpg.connect(postgres_url)
    try:
        found = {
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        }
        columns: dict[str, set[str]] = {}
        for r in await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public'"
        ):
            columns.setdefault(r["table_name"], set()).add(r["column_name"])
        indexes = {r["indexname"] for r in await conn.fetch("SELECT indexname FROM pg_indexes")}
        history = [
            (r["app"], r["name"])
            for r in await conn.fetch(f"SELECT app, name FROM {MIGRATION_TABLE} ORDER BY id")
        ]
    finally:
        await conn.close()

    assert {"users", "chats", "messages", MIGRATION_TABLE} <= found
    for table, model in MODELS.items():
        assert columns[table] == set(model._meta.fields_db_projection.values()), table
        for index in model._meta.indexes:
            assert index.name in indexes
    assert history == ALL_MIGRATIONS


@needs_postgres
async def test_instances_starting_together_on_postgres_migrate_once() -> None:
    async with fresh_postgres() as db_url:
        stores = [Store(db_url, instance_id=f"i{n}") for n in range(3)]
        await asyncio.gather(*(s.open() for s in stores))
        try:
            history = await stores[0].read(
                lambda: stores[0].conn.execute_query(f"SELECT app, name FROM {MIGRATION_TABLE}")
            )
            assert sorted((r[0], r[1]) for r in history[1]) == ALL_MIGRATIONS
        finally:
            for s in stores:
                await s.close()
