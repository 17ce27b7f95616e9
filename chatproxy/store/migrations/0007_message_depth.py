from tortoise import fields, migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops

_SQLITE = [
    "CREATE TEMP TABLE message_depths (id TEXT PRIMARY KEY, depth INT NOT NULL)",
    "WITH RECURSIVE d(id, depth) AS (SELECT id, 1 FROM messages WHERE parent_id IS NULL "
    "UNION ALL SELECT m.id, d.depth + 1 FROM messages m JOIN d ON m.parent_id = d.id) "
    "INSERT INTO message_depths SELECT id, depth FROM d",
    "UPDATE messages SET depth = message_depths.depth FROM message_depths "
    "WHERE message_depths.id = messages.id",
    "DROP TABLE message_depths",
]
_POSTGRES = [
    "UPDATE messages m SET depth = d.depth FROM (WITH RECURSIVE d(id, depth) AS ("
    "SELECT id, 1 FROM messages WHERE parent_id IS NULL UNION ALL "
    "SELECT m.id, d.depth + 1 FROM messages m JOIN d ON m.parent_id = d.id) "
    "SELECT id, depth FROM d) d WHERE m.id = d.id",
]


async def backfill(apps, schema_editor) -> None:
    # Every stored message's place on its branch (the root is 1), walked down from the roots
    # along the parent index: a chat's message count is then its head's depth.
    client = schema_editor.client
    postgres = client.capabilities.dialect == "postgres"
    for sql in _POSTGRES if postgres else _SQLITE:
        await client.execute_script(sql)


class Migration(migrations.Migration):
    dependencies = [('models', '0006_history_indexes')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Message', name='depth', field=fields.IntField(default=0, db_default=0)
        ),
        ops.RunPython(backfill, ops.RunPython.noop),
        ops.AddIndex(
            model_name='Message',
            index=Index(fields=['role', 'created_at'], name='messages_role_created'),
        ),
        ops.AddIndex(model_name='Chat', index=Index(fields=['updated_at'], name='chats_updated')),
    ]
