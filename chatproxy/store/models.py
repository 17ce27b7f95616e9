"""Tortoise ORM models: the stored data model.

A **chat** is a tree of **messages**. Every message points to its ``parent`` (``None`` for the
first message) and carries ``prefix_hash``, a hash of the whole conversation up to and including
it (see :mod:`chatproxy.store.threading`), which is how a request that resends full history is
matched to what is already stored. ``Chat.head_id`` is the newest leaf: following ``parent``
from it gives the active branch. Nothing is overwritten: a regenerate or an edit is a sibling.

Assistant messages record how they were produced (status, usage, timings, request
parameters). ``Message.user_id`` repeats the chat's owner so that the two per-user lookups
(prefix hash, daily counts) are served by one index each, without a join.

Schema changes go through Tortoise's migrations in ``chatproxy/store/migrations``
(``tortoise makemigrations``; applied by ``chatproxy db upgrade`` and by ``serve``).
"""

from __future__ import annotations

from tortoise import fields
from tortoise.indexes import Index
from tortoise.models import Model

__all__ = ["MESSAGE_STATUSES", "ApiKey", "Chat", "Instance", "Message", "Meta", "User", "Vote"]

MESSAGE_STATUSES = ("in_progress", "completed", "incomplete", "failed", "cancelled", "interrupted")


class User(Model):
    id = fields.CharField(max_length=128, primary_key=True)
    name = fields.CharField(max_length=256)
    tier = fields.CharField(max_length=64, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "users"


# A model's docstring would become its table's SQL comment (in the migration): plain comments.


class ApiKey(Model):
    # A proxy key (mode "keys"). Only its SHA-256 is stored; the prefix identifies it.

    id = fields.CharField(max_length=32, primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="api_keys", on_delete=fields.CASCADE
    )
    hash = fields.CharField(max_length=64, unique=True)
    prefix = fields.CharField(max_length=16)
    created_at = fields.DatetimeField()
    revoked_at = fields.DatetimeField(null=True)
    last_used_at = fields.DatetimeField(null=True)

    user_id: str

    class Meta:
        table = "api_keys"


class Meta(Model):
    # Instance-wide values kept in the database (the passthrough-mode HMAC secret).

    key = fields.CharField(max_length=64, primary_key=True)
    value = fields.TextField()

    class Meta:
        table = "meta"


class Instance(Model):
    # A running chatproxy instance and its last heartbeat: the in-progress messages of one
    # that stopped heartbeating are marked interrupted by the others.

    id = fields.CharField(max_length=64, primary_key=True)
    started_at = fields.DatetimeField()
    heartbeat_at = fields.DatetimeField()

    class Meta:
        table = "instances"


class Chat(Model):
    id = fields.CharField(max_length=128, primary_key=True)
    owner: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="chats", on_delete=fields.CASCADE
    )
    title = fields.CharField(max_length=256, null=True)
    visibility = fields.CharField(max_length=16, default="private")
    metadata = fields.JSONField(default=dict)
    # A plain column, not a foreign key: Message already points at Chat, and a cycle of
    # foreign keys would make inserts and deletes order-dependent.
    head_id = fields.CharField(max_length=64, null=True)
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField()

    owner_id: str

    class Meta:
        table = "chats"
        indexes = (Index(fields=("owner_id", "updated_at"), name="chats_owner_updated"),)


class Message(Model):
    id = fields.CharField(max_length=64, primary_key=True)
    chat: fields.ForeignKeyRelation[Chat] = fields.ForeignKeyField(
        "models.Chat", related_name="messages", on_delete=fields.CASCADE
    )
    parent: fields.ForeignKeyNullableRelation[Message] = fields.ForeignKeyField(
        "models.Message", related_name="children", null=True, on_delete=fields.CASCADE
    )
    user_id = fields.CharField(max_length=128)
    role = fields.CharField(max_length=16)
    text = fields.TextField(default="")
    data = fields.JSONField()
    prefix_hash = fields.CharField(max_length=32)
    status = fields.CharField(max_length=16, default="completed")
    error = fields.JSONField(null=True)
    model = fields.CharField(max_length=256, null=True)
    finish_reason = fields.CharField(max_length=32, null=True)
    prompt_tokens = fields.IntField(null=True)
    completion_tokens = fields.IntField(null=True)
    total_tokens = fields.IntField(null=True)
    usage = fields.JSONField(null=True)
    upstream_id = fields.CharField(max_length=256, null=True)
    system_fingerprint = fields.CharField(max_length=256, null=True)
    params = fields.JSONField(null=True)
    client_disconnected = fields.BooleanField(default=False)
    ttft_ms = fields.IntField(null=True)
    duration_ms = fields.IntField(null=True)
    instance_id = fields.CharField(max_length=64, null=True)
    # The stored completion's metadata (POST /v1/chat/completions/{id}); assistant messages.
    metadata = fields.JSONField(null=True)
    created_at = fields.DatetimeField()
    completed_at = fields.DatetimeField(null=True)

    chat_id: str
    parent_id: str | None

    class Meta:
        table = "messages"
        indexes = (
            Index(fields=("user_id", "prefix_hash"), name="messages_user_prefix"),
            Index(fields=("user_id", "role", "created_at"), name="messages_user_daily"),
            Index(fields=("status", "instance_id"), name="messages_status_instance"),
        )


class Vote(Model):
    # Feedback on a message: one per user and message, replaced by a new vote.
    id = fields.IntField(primary_key=True)
    message: fields.ForeignKeyRelation[Message] = fields.ForeignKeyField(
        "models.Message", related_name="votes", on_delete=fields.CASCADE
    )
    chat: fields.ForeignKeyRelation[Chat] = fields.ForeignKeyField(
        "models.Chat", related_name="votes", on_delete=fields.CASCADE
    )
    user_id = fields.CharField(max_length=128)
    up = fields.BooleanField()
    created_at = fields.DatetimeField()

    message_id: str
    chat_id: str

    class Meta:
        table = "votes"
        unique_together = (("message", "user_id"),)
