from tortoise import migrations
from tortoise.migrations import operations as ops

# SQLite: messages reach the full-text index once they are final (not "in_progress"), with
# their final text. The triggers of 0008 also indexed every answer's empty placeholder, and
# took it out and put it back at each checkpoint and at the end: four FTS5 writes per answer
# on the hot path instead of one. Search finds an answer once it is complete; a running one's
# checkpoints are not searched. Nothing changes on PostgreSQL (its index is an expression index,
# kept by the database).

_ADD = "INSERT INTO messages_fts(rowid, text) VALUES (new.rowid, new.text);"
_REMOVE = (
    "INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.rowid, old.text);"
)
_FINAL = f"""
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
WHEN new.status != 'in_progress' BEGIN {_ADD} END;
CREATE TRIGGER messages_fts_final AFTER UPDATE OF status ON messages
WHEN old.status = 'in_progress' AND new.status != 'in_progress' BEGIN {_ADD} END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF text ON messages
WHEN old.status != 'in_progress' AND new.status != 'in_progress' AND old.text IS NOT new.text
BEGIN {_REMOVE} {_ADD} END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
WHEN old.status != 'in_progress' BEGIN {_REMOVE} END;
"""
_EVERY = f"""
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN {_ADD} END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN {_REMOVE} END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF text ON messages
WHEN old.text IS NOT new.text BEGIN {_REMOVE} {_ADD} END;
"""
_RUNNING = "SELECT rowid, text FROM messages WHERE status = 'in_progress'"


async def _swap(schema_editor, final: bool) -> None:
    client = schema_editor.client
    if client.capabilities.dialect == "postgres":
        return
    for name in ("insert", "update", "delete", "final"):
        await client.execute_script(f"DROP TRIGGER IF EXISTS messages_fts_{name}")
    # Running answers: indexed with their checkpoint text until now, and not any more (or the
    # other way round, going back).
    _, rows = await client.execute_query(_RUNNING)
    for rowid, text in rows:
        if final:
            await client.execute_query(
                "INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', ?, ?)",
                [rowid, text],
            )
        else:
            await client.execute_query(
                "INSERT INTO messages_fts(rowid, text) VALUES (?, ?)", [rowid, text]
            )
    await client.execute_script(_FINAL if final else _EVERY)


async def forward(apps, schema_editor) -> None:
    await _swap(schema_editor, final=True)


async def backward(apps, schema_editor) -> None:
    await _swap(schema_editor, final=False)


class Migration(migrations.Migration):
    dependencies = [("models", "0011_outbox")]

    initial = False

    operations = [
        ops.RunPython(forward, backward),
    ]
