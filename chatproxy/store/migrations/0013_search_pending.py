from tortoise import migrations
from tortoise.migrations import operations as ops

# SQLite: the full-text indexes are brought up to date by the store's writer in batches
# (chatproxy.store.search_index); the triggers only list the rows to add. The lists start
# empty: everything stored so far is indexed. Nothing changes on PostgreSQL.


def _remove(fts: str, column: str) -> str:
    # Only a row the index holds may be taken out of it (FTS5 trusts the values it is given).
    return (
        f"INSERT INTO {fts}({fts}, rowid, {column}) SELECT 'delete', old.rowid, old.{column} "
        f"WHERE NOT EXISTS (SELECT 1 FROM {fts}_pending WHERE id = old.rowid);"
    )


def _note(fts: str) -> str:
    return f"INSERT OR IGNORE INTO {fts}_pending (id) VALUES (new.rowid);"


def _unnote(fts: str) -> str:
    return f"DELETE FROM {fts}_pending WHERE id = old.rowid;"


_M, _C = "messages_fts", "chats_fts"
_FINAL = "new.status != 'in_progress'"
_PENDING = f"""
CREATE TABLE {_M}_pending (id INTEGER PRIMARY KEY);
CREATE TABLE {_C}_pending (id INTEGER PRIMARY KEY);
CREATE TRIGGER {_M}_insert AFTER INSERT ON messages WHEN {_FINAL} BEGIN {_note(_M)} END;
CREATE TRIGGER {_M}_final AFTER UPDATE OF status ON messages
WHEN old.status = 'in_progress' AND {_FINAL} BEGIN {_note(_M)} END;
CREATE TRIGGER {_M}_update AFTER UPDATE OF text ON messages
WHEN old.status != 'in_progress' AND {_FINAL} AND old.text IS NOT new.text
BEGIN {_remove(_M, "text")} {_note(_M)} END;
CREATE TRIGGER {_M}_delete AFTER DELETE ON messages WHEN old.status != 'in_progress'
BEGIN {_remove(_M, "text")} {_unnote(_M)} END;
CREATE TRIGGER {_C}_insert AFTER INSERT ON chats BEGIN {_note(_C)} END;
CREATE TRIGGER {_C}_update AFTER UPDATE OF title ON chats WHEN old.title IS NOT new.title
BEGIN {_remove(_C, "title")} {_note(_C)} END;
CREATE TRIGGER {_C}_delete AFTER DELETE ON chats BEGIN {_remove(_C, "title")} {_unnote(_C)} END;
"""

# Going back: the triggers of 0012 (messages) and 0008 (chats), after indexing what waits.
_ADD_M = "INSERT INTO messages_fts(rowid, text) VALUES (new.rowid, new.text);"
_REMOVE_M = "INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.rowid, old.text);"
_ADD_C = "INSERT INTO chats_fts(rowid, title) VALUES (new.rowid, new.title);"
_REMOVE_C = "INSERT INTO chats_fts(chats_fts, rowid, title) VALUES ('delete', old.rowid, old.title);"
_IN_STEP = f"""
INSERT INTO {_M}(rowid, text) SELECT rowid, text FROM messages
WHERE rowid IN (SELECT id FROM {_M}_pending);
INSERT INTO {_C}(rowid, title) SELECT rowid, title FROM chats
WHERE rowid IN (SELECT id FROM {_C}_pending);
DROP TABLE {_M}_pending;
DROP TABLE {_C}_pending;
CREATE TRIGGER {_M}_insert AFTER INSERT ON messages WHEN {_FINAL} BEGIN {_ADD_M} END;
CREATE TRIGGER {_M}_final AFTER UPDATE OF status ON messages
WHEN old.status = 'in_progress' AND {_FINAL} BEGIN {_ADD_M} END;
CREATE TRIGGER {_M}_update AFTER UPDATE OF text ON messages
WHEN old.status != 'in_progress' AND {_FINAL} AND old.text IS NOT new.text
BEGIN {_REMOVE_M} {_ADD_M} END;
CREATE TRIGGER {_M}_delete AFTER DELETE ON messages WHEN old.status != 'in_progress'
BEGIN {_REMOVE_M} END;
CREATE TRIGGER {_C}_insert AFTER INSERT ON chats BEGIN {_ADD_C} END;
CREATE TRIGGER {_C}_delete AFTER DELETE ON chats BEGIN {_REMOVE_C} END;
CREATE TRIGGER {_C}_update AFTER UPDATE OF title ON chats WHEN old.title IS NOT new.title
BEGIN {_REMOVE_C} {_ADD_C} END;
"""

_TRIGGERS = [f"{_M}_{n}" for n in ("insert", "final", "update", "delete")] + [
    f"{_C}_{n}" for n in ("insert", "update", "delete")
]


async def _swap(schema_editor, script: str) -> None:
    client = schema_editor.client
    if client.capabilities.dialect == "postgres":
        return
    for name in _TRIGGERS:
        await client.execute_script(f"DROP TRIGGER IF EXISTS {name}")
    await client.execute_script(script)


async def forward(apps, schema_editor) -> None:
    await _swap(schema_editor, _PENDING)


async def backward(apps, schema_editor) -> None:
    await _swap(schema_editor, _IN_STEP)


class Migration(migrations.Migration):
    dependencies = [("models", "0012_search_final_text")]

    initial = False

    operations = [
        ops.RunPython(forward, backward),
    ]
