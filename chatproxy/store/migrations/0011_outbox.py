from tortoise import migrations
from tortoise.migrations import operations as ops

# The outbox of plugin events (chatproxy.store.outbox): rows written in the transaction of the
# change they report, delivered to the on_event hooks after commit. A table of its own, with no
# model: only the store's plain SQL reads and writes it. Times are milliseconds since the epoch
# (compared as numbers alike on both databases); ``seq`` orders the rows.

_COLUMNS = (
    "id VARCHAR(32) NOT NULL, "
    "type VARCHAR(32) NOT NULL, "
    "user_id VARCHAR(128) NOT NULL, "
    "chat_id VARCHAR(128) NOT NULL, "
    "message_id VARCHAR(64), "
    "data TEXT NOT NULL, "
    "created_at BIGINT NOT NULL, "
    "available_at BIGINT NOT NULL, "
    "lease_owner VARCHAR(64), "
    "attempts INT NOT NULL DEFAULT 0, "
    "delivered_at BIGINT"
)
_INDEXES = [
    # Undelivered rows in order (a delivery round), per chat (order within a chat), by the
    # instance holding their lease (released when it restarts or is reaped).
    "CREATE INDEX outbox_pending ON outbox (seq) WHERE delivered_at IS NULL",
    "CREATE INDEX outbox_chat_pending ON outbox (chat_id, seq) WHERE delivered_at IS NULL",
    "CREATE INDEX outbox_lease ON outbox (lease_owner) WHERE delivered_at IS NULL",
    # Delivered rows by age (deleted after a while).
    "CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE delivered_at IS NOT NULL",
]
_SQLITE = [f"CREATE TABLE outbox (seq INTEGER PRIMARY KEY, {_COLUMNS})", *_INDEXES]
_POSTGRES = [
    f"CREATE TABLE outbox (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, {_COLUMNS})",
    *_INDEXES,
]


async def create(apps, schema_editor) -> None:
    client = schema_editor.client
    for sql in _POSTGRES if client.capabilities.dialect == "postgres" else _SQLITE:
        await client.execute_script(sql)


async def drop(apps, schema_editor) -> None:
    await schema_editor.client.execute_script("DROP TABLE outbox")


class Migration(migrations.Migration):
    dependencies = [('models', '0010_search_expression')]

    initial = False

    operations = [
        ops.RunPython(create, drop),
    ]
