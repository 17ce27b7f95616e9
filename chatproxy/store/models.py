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

**What both stores hold.** PostgreSQL refuses two things SQLite stores: a NUL character
(U+0000) in a text or JSON column, and a value wider than its ``VARCHAR``. So that every value
is stored alike on both, what a client sends is checked before anything is done with it
(:func:`refuse_nul`, and the widths below), and what the upstream sends, which the client has
already received, is made storable instead: a NUL becomes U+FFFD (:func:`storable_text`,
:func:`storable_json`), an over-wide value is cut to its column and a
token count is held to the range of an integer column (:func:`storable_int`).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from tortoise import fields
from tortoise.indexes import Index
from tortoise.models import Model

from chatproxy.errors import InvalidRequest
from chatproxy.ids import CHAT_ID_LENGTH, MESSAGE_ID_LENGTH

__all__ = [
    "FINISH_REASON_LENGTH",
    "MESSAGE_STATUSES",
    "MODEL_LENGTH",
    "TITLE_LENGTH_MAX",
    "UPSTREAM_ID_LENGTH",
    "ApiKey",
    "Chat",
    "Instance",
    "Message",
    "Meta",
    "Status",
    "User",
    "Vote",
    "refuse_nul",
    "storable_int",
    "storable_json",
    "storable_text",
]


class Status(StrEnum):
    """A message's status (SPEC §4): users' messages are always ``completed``."""

    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


MESSAGE_STATUSES = tuple(Status)
MODEL_LENGTH = 256  # Message.model
TITLE_LENGTH_MAX = 256  # Chat.title
UPSTREAM_ID_LENGTH = 256  # Message.upstream_id and system_fingerprint
FINISH_REASON_LENGTH = 32  # Message.finish_reason
INT_RANGE = (-(2**31), 2**31 - 1)  # an IntField (PostgreSQL's integer)

# -- what both stores hold ---------------------------------------------------------------------

_NUL = "\x00"
_REPLACEMENT = "\ufffd"
# A NUL as JSON text has it: ``\u0000`` after an even number of backslashes (after an odd
# number, the backslash is escaped and ``u0000`` is plain text).
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")
_KEY_IN_PARAM = 64  # longer object keys are not spelled out in an error's ``param``


def storable_text(value: str | None, width: int | None = None) -> str | None:
    """``value`` with every NUL replaced by U+FFFD, cut to ``width`` characters."""
    if value is None:
        return None
    if _NUL in value:
        value = value.replace(_NUL, _REPLACEMENT)
    return value if width is None or len(value) <= width else value[:width]


def storable_int(value: int | None) -> int | None:
    """``value`` held to the range of an integer column."""
    if value is None:
        return None
    return min(max(value, INT_RANGE[0]), INT_RANGE[1])


def storable_json(text: str | None) -> str | None:
    """JSON text (as orjson writes it) with every NUL in its strings replaced by U+FFFD."""
    if text is None or "\\u0000" not in text:
        return text
    return _JSON_NUL.sub(lambda m: m.group(1) + _REPLACEMENT, text)


def _nul_path(value: Any, path: str) -> tuple[str, bool] | None:
    """Where the first NUL of ``value`` is: the path of the string holding it and whether
    it is in an object key (then the path is the object's); ``None`` when there is none."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        current, where = stack.pop()
        if isinstance(current, str):
            if _NUL in current:
                return where, False
        elif isinstance(current, dict):
            children = []
            for key, child in current.items():
                if _NUL in key:
                    return where, True
                name = key if len(key) <= _KEY_IN_PARAM else "…"
                children.append((child, f"{where}.{name}" if where else name))
            stack.extend(reversed(children))
        elif isinstance(current, list):
            stack.extend(
                (child, f"{where}[{i}]") for i, child in reversed(list(enumerate(current)))
            )
    return None


def refuse_nul(value: Any, raw: bytes | None = None, *, path: str = "") -> None:
    """Refuse (400 ``invalid_value``, naming the field, not echoing it) a value a client sent
    with a NUL character in any of its strings or object keys. ``raw``, the JSON text it was
    parsed from, makes the usual case free: without ``\\u0000`` in it there is no NUL (a JSON
    parser refuses a raw NUL byte)."""
    if raw is not None and b"\\u0000" not in raw:
        return
    found = _nul_path(value, path)
    if found is None:
        return
    where, in_key = found
    if in_key:
        what = f"a key of '{where}'" if where else "a parameter name"
    else:
        what = f"'{where}'" if where else "the value"
    raise InvalidRequest(
        f"{what} contains a NUL character (U+0000), which cannot be stored",
        code="invalid_value",
        param=where or None,
    )


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
    id = fields.CharField(max_length=CHAT_ID_LENGTH, primary_key=True)
    owner: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="chats", on_delete=fields.CASCADE
    )
    title = fields.CharField(max_length=TITLE_LENGTH_MAX, null=True)
    visibility = fields.CharField(max_length=16, default="private")
    metadata = fields.JSONField(default=dict)
    # A plain column, not a foreign key: Message already points at Chat, and a cycle of
    # foreign keys would make inserts and deletes order-dependent.
    head_id = fields.CharField(max_length=MESSAGE_ID_LENGTH, null=True)
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField()

    owner_id: str

    class Meta:
        table = "chats"
        indexes = (
            Index(fields=("owner_id", "updated_at"), name="chats_owner_updated"),
            # Every user's chats by age: db prune's batches, the operator's listing.
            Index(fields=("updated_at",), name="chats_updated"),
        )


class Message(Model):
    id = fields.CharField(max_length=MESSAGE_ID_LENGTH, primary_key=True)
    chat: fields.ForeignKeyRelation[Chat] = fields.ForeignKeyField(
        "models.Chat", related_name="messages", on_delete=fields.CASCADE
    )
    parent: fields.ForeignKeyNullableRelation[Message] = fields.ForeignKeyField(
        "models.Message", related_name="children", null=True, on_delete=fields.CASCADE
    )
    user_id = fields.CharField(max_length=128)
    role = fields.CharField(max_length=16)
    text = fields.TextField(default="")
    # The message's place on its branch (a root is 1): a chat's message count is its head's.
    depth = fields.IntField(default=0, db_default=0)
    data = fields.JSONField()
    prefix_hash = fields.CharField(max_length=32)
    status = fields.CharField(max_length=16, default=Status.COMPLETED)
    error = fields.JSONField(null=True)
    model = fields.CharField(max_length=MODEL_LENGTH, null=True)
    finish_reason = fields.CharField(max_length=FINISH_REASON_LENGTH, null=True)
    prompt_tokens = fields.IntField(null=True)
    completion_tokens = fields.IntField(null=True)
    total_tokens = fields.IntField(null=True)
    usage = fields.JSONField(null=True)
    upstream_id = fields.CharField(max_length=UPSTREAM_ID_LENGTH, null=True)
    system_fingerprint = fields.CharField(max_length=UPSTREAM_ID_LENGTH, null=True)
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
            # Per-chat reads, counts and the cascade of a chat's delete; a message's children
            # (its replies, and the cascade of a message's delete).
            Index(fields=("chat_id", "created_at"), name="messages_chat_created"),
            Index(fields=("parent_id",), name="messages_parent"),
            # Every user's answers since a time (chatproxy stats).
            Index(fields=("role", "created_at"), name="messages_role_created"),
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
        indexes = (Index(fields=("chat_id",), name="votes_chat"),)
