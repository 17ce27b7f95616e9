from tortoise import migrations
from tortoise.migrations import operations as ops


async def rehash(apps, schema_editor) -> None:
    # The canonical form of threading v2 (tool-call arguments as parsed JSON, answers without
    # surrounding whitespace): stored chats keep threading after the upgrade.
    from chatproxy.store.rehash import rehash_messages

    await rehash_messages(schema_editor.client)


class Migration(migrations.Migration):
    dependencies = [('models', '0004_instances')]

    initial = False

    operations = [
        ops.RunPython(rehash, ops.RunPython.noop),
    ]
