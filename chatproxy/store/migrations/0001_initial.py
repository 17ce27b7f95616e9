from tortoise import migrations
from tortoise.migrations import operations as ops
from orjson import loads
from tortoise.fields.base import OnDelete
from tortoise.fields.data import JSON_DUMPS
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name='User',
            fields=[
                ('id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=128)),
                ('name', fields.CharField(max_length=256)),
                ('tier', fields.CharField(null=True, max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'users', 'app': 'models', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Chat',
            fields=[
                ('id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=128)),
                ('owner', fields.ForeignKeyField('models.User', source_field='owner_id', db_constraint=True, to_field='id', related_name='chats', on_delete=OnDelete.CASCADE)),
                ('title', fields.CharField(null=True, max_length=256)),
                ('visibility', fields.CharField(default='private', max_length=16)),
                ('metadata', fields.JSONField(default=dict, encoder=JSON_DUMPS, decoder=loads)),
                ('head_id', fields.CharField(null=True, max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'chats', 'app': 'models', 'indexes': [Index(fields=['owner_id', 'updated_at'], name='chats_owner_updated')], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Message',
            fields=[
                ('id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=64)),
                ('chat', fields.ForeignKeyField('models.Chat', source_field='chat_id', db_constraint=True, to_field='id', related_name='messages', on_delete=OnDelete.CASCADE)),
                ('parent', fields.ForeignKeyField('models.Message', source_field='parent_id', null=True, db_constraint=True, to_field='id', related_name='children', on_delete=OnDelete.CASCADE)),
                ('user_id', fields.CharField(max_length=128)),
                ('role', fields.CharField(max_length=16)),
                ('text', fields.TextField(default='', unique=False)),
                ('data', fields.JSONField(encoder=JSON_DUMPS, decoder=loads)),
                ('prefix_hash', fields.CharField(max_length=32)),
                ('status', fields.CharField(default='completed', max_length=16)),
                ('error', fields.JSONField(null=True, encoder=JSON_DUMPS, decoder=loads)),
                ('model', fields.CharField(null=True, max_length=256)),
                ('finish_reason', fields.CharField(null=True, max_length=32)),
                ('prompt_tokens', fields.IntField(null=True)),
                ('completion_tokens', fields.IntField(null=True)),
                ('total_tokens', fields.IntField(null=True)),
                ('usage', fields.JSONField(null=True, encoder=JSON_DUMPS, decoder=loads)),
                ('upstream_id', fields.CharField(null=True, max_length=256)),
                ('system_fingerprint', fields.CharField(null=True, max_length=256)),
                ('params', fields.JSONField(null=True, encoder=JSON_DUMPS, decoder=loads)),
                ('client_disconnected', fields.BooleanField(default=False)),
                ('ttft_ms', fields.IntField(null=True)),
                ('duration_ms', fields.IntField(null=True)),
                ('instance_id', fields.CharField(null=True, max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('completed_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'messages', 'app': 'models', 'indexes': [Index(fields=['user_id', 'prefix_hash'], name='messages_user_prefix'), Index(fields=['user_id', 'role', 'created_at'], name='messages_user_daily'), Index(fields=['status', 'instance_id'], name='messages_status_instance')], 'pk_attr': 'id'},
            bases=['Model'],
        ),
    ]
