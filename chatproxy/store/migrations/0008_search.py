from tortoise import migrations
from tortoise.migrations import operations as ops

# Full-text indexes over messages.text and chats.title (chatproxy.store.search), kept in step
# by the database on every insert, update and delete (cascades included), whoever writes.

_FTS = "content='{table}', tokenize='unicode61 remove_diacritics 0'"


def _sqlite(table: str, column: str) -> list[str]:
    fts = f"{table}_fts"
    add = f"INSERT INTO {fts}(rowid, {column}) VALUES (new.rowid, new.{column});"
    remove = (
        f"INSERT INTO {fts}({fts}, rowid, {column}) VALUES ('delete', old.rowid, old.{column});"
    )
    return [
        f"CREATE VIRTUAL TABLE {fts} USING fts5({column}, {_FTS.format(table=table)})",
        f"CREATE TRIGGER {fts}_insert AFTER INSERT ON {table} BEGIN {add} END",
        f"CREATE TRIGGER {fts}_delete AFTER DELETE ON {table} BEGIN {remove} END",
        f"CREATE TRIGGER {fts}_update AFTER UPDATE OF {column} ON {table} "
        f"WHEN old.{column} IS NOT new.{column} BEGIN {remove} {add} END",
        # What is already stored.
        f"INSERT INTO {fts}({fts}) VALUES ('rebuild')",
    ]


# ASCII punctuation and symbols (but '?') are blanks to PostgreSQL's parser, as to FTS5: the
# same expression as chatproxy.store.search.pg_document, which the queries must repeat.
_BLANKS = "!\"#$%&''()*+,-./:;<=>@[\\]^_`{|}~"
_SPACES = " " * (len(_BLANKS) - 1)


def _postgres(table: str, column: str, name: str) -> str:
    document = f"to_tsvector('simple', translate({column}, '{_BLANKS}', '{_SPACES}'))"
    return f"CREATE INDEX {name} ON {table} USING gin ({document})"


_SQLITE = [*_sqlite("messages", "text"), *_sqlite("chats", "title")]
_POSTGRES = [
    _postgres("messages", "text", "messages_text_search"),
    _postgres("chats", "title", "chats_title_search"),
]
_SQLITE_DROP = [
    f"DROP TRIGGER {fts}_{event}"
    for fts in ("messages_fts", "chats_fts")
    for event in ("insert", "delete", "update")
] + ["DROP TABLE messages_fts", "DROP TABLE chats_fts"]
_POSTGRES_DROP = ["DROP INDEX messages_text_search", "DROP INDEX chats_title_search"]


async def _run(schema_editor, sqlite: list[str], postgres: list[str]) -> None:
    client = schema_editor.client
    for sql in postgres if client.capabilities.dialect == "postgres" else sqlite:
        await client.execute_script(sql)


async def create(apps, schema_editor) -> None:
    await _run(schema_editor, _SQLITE, _POSTGRES)


async def drop(apps, schema_editor) -> None:
    await _run(schema_editor, _SQLITE_DROP, _POSTGRES_DROP)


class Migration(migrations.Migration):
    dependencies = [('models', '0007_message_depth')]

    initial = False

    operations = [
        ops.RunPython(create, drop),
    ]
