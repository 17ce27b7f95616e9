from tortoise import migrations
from tortoise.migrations import operations as ops

# Chats by metadata pair (chatproxy.store.metadata_index): on SQLite a table of every chat's
# text-valued pairs kept by triggers on chats (only an insert, a change of metadata or a
# delete fires them); on PostgreSQL a GIN index for @>.

_PAIRS = "SELECT {chat}.id, j.key, j.value FROM json_each({chat}.metadata) j WHERE j.type = 'text'"
_SQLITE = [
    "CREATE TABLE chat_metadata (chat_id VARCHAR(128) NOT NULL, key TEXT NOT NULL, "
    "value TEXT NOT NULL)",
    "CREATE INDEX chat_metadata_pair ON chat_metadata (key, value)",
    "CREATE INDEX chat_metadata_chat ON chat_metadata (chat_id)",
    "CREATE TRIGGER chat_metadata_insert AFTER INSERT ON chats BEGIN "
    f"INSERT INTO chat_metadata (chat_id, key, value) {_PAIRS.format(chat='new')}; END",
    "CREATE TRIGGER chat_metadata_update AFTER UPDATE OF metadata ON chats BEGIN "
    "DELETE FROM chat_metadata WHERE chat_id = old.id; "
    f"INSERT INTO chat_metadata (chat_id, key, value) {_PAIRS.format(chat='new')}; END",
    "CREATE TRIGGER chat_metadata_delete AFTER DELETE ON chats BEGIN "
    "DELETE FROM chat_metadata WHERE chat_id = old.id; END",
    # What is already stored.
    "INSERT INTO chat_metadata (chat_id, key, value) "
    "SELECT c.id, j.key, j.value FROM chats c, json_each(c.metadata) j WHERE j.type = 'text'",
]
_POSTGRES = ["CREATE INDEX chats_metadata ON chats USING gin (metadata jsonb_path_ops)"]
_SQLITE_DROP = [
    "DROP TRIGGER chat_metadata_insert",
    "DROP TRIGGER chat_metadata_update",
    "DROP TRIGGER chat_metadata_delete",
    "DROP TABLE chat_metadata",
]
_POSTGRES_DROP = ["DROP INDEX chats_metadata"]


async def _run(schema_editor, sqlite: list[str], postgres: list[str]) -> None:
    client = schema_editor.client
    for sql in postgres if client.capabilities.dialect == "postgres" else sqlite:
        await client.execute_script(sql)


async def create(apps, schema_editor) -> None:
    await _run(schema_editor, _SQLITE, _POSTGRES)


async def drop(apps, schema_editor) -> None:
    await _run(schema_editor, _SQLITE_DROP, _POSTGRES_DROP)


class Migration(migrations.Migration):
    dependencies = [('models', '0008_search')]

    initial = False

    operations = [
        ops.RunPython(create, drop),
    ]
