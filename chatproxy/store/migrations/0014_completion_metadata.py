from tortoise import migrations
from tortoise.migrations import operations as ops

# Stored completions by metadata pair (chatproxy.store.completions): a table of each
# completion's text-valued pairs with its owner and creation time, kept by triggers on
# messages, walked in the listing's order along one index. A completion's metadata is the one
# set through the API, else the one sent with its request (kept in its params).

_TABLE = [
    "CREATE TABLE completion_metadata (message_id VARCHAR(64) NOT NULL, "
    "user_id VARCHAR(128) NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, "
    "created_at TIMESTAMP{tz} NOT NULL)",
    "CREATE INDEX completion_metadata_pair ON completion_metadata "
    "(user_id, key, value, created_at, message_id)",
    "CREATE INDEX completion_metadata_message ON completion_metadata (message_id)",
]
_COMPLETION = "{m}.role = 'assistant' AND {m}.instance_id IS NOT NULL"
_VALUE = (
    "COALESCE({m}.metadata, CASE WHEN json_type({m}.params, '$.metadata') = 'object' "
    "THEN json_extract({m}.params, '$.metadata') END)"
)
_HAS_VALUE = "({m}.metadata IS NOT NULL OR json_type({m}.params, '$.metadata') = 'object')"


def _pairs(m: str, rows: str = "") -> str:
    """The pairs of message ``m`` (of each message of ``rows``, a FROM item, when given)."""
    return (
        "INSERT INTO completion_metadata (message_id, user_id, key, value, created_at) "
        f"SELECT {m}.id, {m}.user_id, j.key, j.value, {m}.created_at "
        f"FROM {rows}json_each({_VALUE.format(m=m)}) j WHERE j.type = 'text'"
    )


_SQLITE = [
    *(sql.format(tz="") for sql in _TABLE),
    "CREATE TRIGGER completion_metadata_insert AFTER INSERT ON messages "
    f"WHEN {_COMPLETION.format(m='new')} AND {_HAS_VALUE.format(m='new')} "
    f"BEGIN {_pairs('new')}; END",
    "CREATE TRIGGER completion_metadata_update AFTER UPDATE OF metadata ON messages "
    f"WHEN {_COMPLETION.format(m='new')} BEGIN "
    "DELETE FROM completion_metadata WHERE message_id = old.id; "
    f"{_pairs('new')}; END",
    "CREATE TRIGGER completion_metadata_delete AFTER DELETE ON messages "
    f"WHEN {_COMPLETION.format(m='old')} AND {_HAS_VALUE.format(m='old')} BEGIN "
    "DELETE FROM completion_metadata WHERE message_id = old.id; END",
    # What is already stored.
    f"{_pairs('m', 'messages m, ')} AND {_COMPLETION.format(m='m')}",
]
_PG_VALUE = (
    "CASE WHEN jsonb_typeof(COALESCE({m}.metadata, {m}.params -> 'metadata')) = 'object' "
    "THEN COALESCE({m}.metadata, {m}.params -> 'metadata') END"
)


def _pg_pairs(m: str, rows: str = "") -> str:
    return (
        "INSERT INTO completion_metadata (message_id, user_id, key, value, created_at) "
        f"SELECT {m}.id, {m}.user_id, j.key, j.value #>> '{{}}', {m}.created_at "
        f"FROM {rows}jsonb_each({_PG_VALUE.format(m=m)}) j "
        "WHERE jsonb_typeof(j.value) = 'string'"
    )


_PG_HAS_VALUE = "({m}.metadata IS NOT NULL OR {m}.params ? 'metadata')"
_POSTGRES = [
    *(sql.format(tz=" WITH TIME ZONE") for sql in _TABLE),
    "CREATE FUNCTION completion_metadata_keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF TG_OP <> 'INSERT' THEN DELETE FROM completion_metadata WHERE message_id = OLD.id; "
    "END IF; "
    f"IF TG_OP <> 'DELETE' THEN {_pg_pairs('NEW')}; END IF; "
    "RETURN NULL; END $$",
    "CREATE TRIGGER completion_metadata_insert AFTER INSERT ON messages FOR EACH ROW "
    f"WHEN ({_COMPLETION.format(m='NEW')} AND {_PG_HAS_VALUE.format(m='NEW')}) "
    "EXECUTE FUNCTION completion_metadata_keep()",
    "CREATE TRIGGER completion_metadata_update AFTER UPDATE OF metadata ON messages FOR EACH ROW "
    f"WHEN ({_COMPLETION.format(m='NEW')}) EXECUTE FUNCTION completion_metadata_keep()",
    "CREATE TRIGGER completion_metadata_delete AFTER DELETE ON messages FOR EACH ROW "
    f"WHEN ({_COMPLETION.format(m='OLD')} AND {_PG_HAS_VALUE.format(m='OLD')}) "
    "EXECUTE FUNCTION completion_metadata_keep()",
    # What is already stored.
    f"{_pg_pairs('m', 'messages m, ')} AND {_COMPLETION.format(m='m')}",
]
_SQLITE_DROP = [
    "DROP TRIGGER completion_metadata_insert",
    "DROP TRIGGER completion_metadata_update",
    "DROP TRIGGER completion_metadata_delete",
    "DROP TABLE completion_metadata",
]
_POSTGRES_DROP = [
    "DROP TRIGGER completion_metadata_insert ON messages",
    "DROP TRIGGER completion_metadata_update ON messages",
    "DROP TRIGGER completion_metadata_delete ON messages",
    "DROP FUNCTION completion_metadata_keep()",
    "DROP TABLE completion_metadata",
]


async def _run(schema_editor, sqlite: list[str], postgres: list[str]) -> None:
    client = schema_editor.client
    for sql in postgres if client.capabilities.dialect == "postgres" else sqlite:
        await client.execute_script(sql)


async def create(apps, schema_editor) -> None:
    await _run(schema_editor, _SQLITE, _POSTGRES)


async def drop(apps, schema_editor) -> None:
    await _run(schema_editor, _SQLITE_DROP, _POSTGRES_DROP)


class Migration(migrations.Migration):
    dependencies = [("models", "0013_search_pending")]

    initial = False

    operations = [
        ops.RunPython(create, drop),
    ]
