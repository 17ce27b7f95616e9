from tortoise import migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [('models', '0005_canonical_v2')]

    initial = False

    operations = [
        ops.AddIndex(
            model_name='Message',
            index=Index(fields=['chat_id', 'created_at'], name='messages_chat_created'),
        ),
        ops.AddIndex(model_name='Message', index=Index(fields=['parent_id'], name='messages_parent')),
        ops.AddIndex(model_name='Vote', index=Index(fields=['chat_id'], name='votes_chat')),
    ]
