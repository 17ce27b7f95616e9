from tortoise import migrations
from tortoise.migrations import operations as ops

# PostgreSQL's full-text indexes of 0008 on a cheaper expression: regexp_replace makes ASCII
# punctuation blanks in a fraction of translate's time (translate cost more than the parser
# itself, on every insert and on every row a plan reads without the index). The same
# expression as chatproxy.store.search.pg_document, which the queries must repeat. Nothing
# changes on SQLite.

_BLANKS = "[!-/:-@[-`{-~]"  # every ASCII punctuation character and symbol, '?' included
_OLD_BLANKS = "!\"#$%&''()*+,-./:;<=>@[\\]^_`{|}~"
_INDEXES = (
    ("messages", "text", "messages_text_search"),
    ("chats", "title", "chats_title_search"),
)


def _create(table: str, column: str, name: str, old: bool) -> str:
    if old:
        blanked = f"translate({column}, '{_OLD_BLANKS}', '{' ' * (len(_OLD_BLANKS) - 1)}')"
    else:
        blanked = f"regexp_replace({column}, '{_BLANKS}', ' ', 'g')"
    index = f"CREATE INDEX {name} ON {table} USING gin (to_tsvector('simple', {blanked}))"
    # New entries wait in the index's pending list until the insert that fills it merges them
    # into the index: at the default 4 MiB, a merge the request that happens to fill it waits
    # for, up to half a second (measured beside an import); at 512 kB, a few tens of ms.
    return index if old else f"{index} WITH (gin_pending_list_limit = 512)"


async def _replace(schema_editor, old: bool) -> None:
    client = schema_editor.client
    if client.capabilities.dialect != "postgres":
        return
    # A store of millions of messages: the index is built in memory, not in many sorted runs.
    await client.execute_script("SET maintenance_work_mem = '256MB'")
    for table, column, name in _INDEXES:
        await client.execute_script(f"DROP INDEX IF EXISTS {name}")
        await client.execute_script(_create(table, column, name, old))
    await client.execute_script("RESET maintenance_work_mem")
    # The chats' metadata index of 0009 likewise (see _create).
    limit = "RESET (gin_pending_list_limit)" if old else "SET (gin_pending_list_limit = 512)"
    await client.execute_script(f"ALTER INDEX chats_metadata {limit}")
    # The planner's statistics of the new expressions, which the search's plan choice reads
    # (autovacuum would take them only after many more writes); not of an empty store, which
    # the planner would then take for one that stays empty.
    _, rows = await client.execute_query("SELECT EXISTS (SELECT 1 FROM messages)")
    if rows[0][0]:
        await client.execute_script("ANALYZE messages")
        await client.execute_script("ANALYZE chats")


async def forward(apps, schema_editor) -> None:
    await _replace(schema_editor, old=False)


async def backward(apps, schema_editor) -> None:
    await _replace(schema_editor, old=True)


class Migration(migrations.Migration):
    dependencies = [("models", "0009_chat_metadata")]

    initial = False

    operations = [
        ops.RunPython(forward, backward),
    ]
