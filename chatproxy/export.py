"""Export formats.

- ``json``: lossless: the chat and every message of every branch with its status, usage,
  timings and parameters; the format ``chatproxy import`` reads.
- ``jsonl``: the same document on one line (one chat a line: the backup format).
- ``markdown``: the active branch, for reading.
- ``openai``: ``{"messages": [...]}``, the active branch in chat-completions format, for
  replay or fine-tuning.

Every format is rendered from the lossless document, so an exported ``json`` file can be
turned into the others without a database.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any, BinaryIO

import orjson

from chatproxy.errors import NotFoundError
from chatproxy.store.models import Chat, Message, User
from chatproxy.store.store import Store
from chatproxy.store.threading import message_text, replayable

__all__ = [
    "FORMATS",
    "active_branch",
    "chat_document",
    "export_all",
    "export_chat",
    "import_documents",
    "read_documents",
    "render",
]

FORMATS = ("json", "jsonl", "markdown", "openai")
DOCUMENT_FORMAT = "chatproxy.chat"
DOCUMENT_VERSION = 1

_MESSAGE_FIELDS = (
    "status",
    "error",
    "model",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "usage",
    "upstream_id",
    "system_fingerprint",
    "params",
    "client_disconnected",
    "ttft_ms",
    "duration_ms",
    "instance_id",
    "prefix_hash",
    "metadata",
)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def chat_document(chat: Chat, messages: list[Message]) -> dict[str, Any]:
    """The lossless export of one chat."""
    return {
        "format": DOCUMENT_FORMAT,
        "version": DOCUMENT_VERSION,
        "chat": {
            "id": chat.id,
            "owner": chat.owner_id,
            "title": chat.title,
            "visibility": chat.visibility,
            "metadata": chat.metadata,
            "head_id": chat.head_id,
            "created_at": _iso(chat.created_at),
            "updated_at": _iso(chat.updated_at),
        },
        "messages": [
            {
                "id": m.id,
                "parent_id": m.parent_id,
                "role": m.role,
                "message": m.data,
                **{name: getattr(m, name) for name in _MESSAGE_FIELDS},
                "created_at": _iso(m.created_at),
                "completed_at": _iso(m.completed_at),
            }
            for m in messages
        ],
    }


def active_branch(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages from the first one to the chat's head, following ``parent_id``."""
    by_id = {m["id"]: m for m in doc["messages"]}
    branch = []
    current = by_id.get(doc["chat"]["head_id"] or "")
    while current is not None:
        branch.append(current)
        current = by_id.get(current["parent_id"] or "")
    branch.reverse()
    return branch


def _replayable(entry: dict[str, Any]) -> bool:
    return replayable(entry["role"], entry["status"], entry["message"])


def _openai(doc: dict[str, Any]) -> dict[str, Any]:
    messages = []
    for entry in active_branch(doc):
        if _replayable(entry):
            message = {k: v for k, v in entry["message"].items() if k != "reasoning_content"}
            messages.append(message)
    return {"messages": messages}


def _markdown(doc: dict[str, Any]) -> str:
    chat = doc["chat"]
    branch = active_branch(doc)
    lines = [f"# {chat['title'] or chat['id']}", ""]
    lines += [f"*Chat `{chat['id']}` · {chat['created_at']} · {len(branch)} messages*", ""]
    for entry in branch:
        message = entry["message"]
        heading = entry["role"].capitalize()
        if entry["role"] == "assistant":
            heading += f" · {entry['model']}" if entry.get("model") else ""
            if entry["status"] != "completed":
                heading += f" · *{entry['status']}*"
        if entry["role"] == "tool" and message.get("tool_call_id"):
            heading += f" · `{message['tool_call_id']}`"
        lines += [f"## {heading}", ""]
        reasoning = message.get("reasoning_content")
        if reasoning:
            lines += ["<details><summary>Reasoning</summary>", "", reasoning, "", "</details>", ""]
        text = message_text(message.get("content"))
        if text:
            lines += [text, ""]
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            lines += [f"**Tool call** `{fn.get('name')}` (`{call.get('id')}`)", ""]
            lines += ["```json", str(fn.get("arguments") or ""), "```", ""]
        if entry.get("error"):
            lines += [f"> Error: {entry['error'].get('message')}", ""]
    return "\n".join(lines)


def render(doc: dict[str, Any], fmt: str) -> bytes:
    """One chat document in format ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "json":
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
    if fmt == "jsonl":
        return orjson.dumps(doc) + b"\n"
    if fmt == "markdown":
        return _markdown(doc).encode()
    if fmt == "openai":
        return orjson.dumps(_openai(doc), option=orjson.OPT_INDENT_2) + b"\n"
    raise ValueError(f"unknown export format {fmt!r}")


async def export_chat(store: Store, chat_id: str, fmt: str) -> bytes:
    """Export one chat from ``store``; an unknown chat raises :class:`NotFoundError`."""
    chat = await store.get_chat(chat_id)
    if chat is None:
        raise NotFoundError(f"no chat with id {chat_id!r}")
    return render(chat_document(chat, await store.chat_messages(chat_id)), fmt)


async def export_all(
    store: Store,
    out: BinaryIO,
    *,
    user_id: str | None = None,
    since: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write every chat (of one user; updated since ``since``) to ``out`` as JSON lines, the
    backup format; returns how many. ``progress(done, total)`` is called after each chat."""

    async def ids() -> list[str]:
        query = Chat.all().order_by("created_at", "id")
        if user_id is not None:
            query = query.filter(owner_id=user_id)
        if since is not None:
            query = query.filter(updated_at__gte=since)
        return [str(i) for i in await query.values_list("id", flat=True)]

    chat_ids = await store.read(ids)
    for done, chat_id in enumerate(chat_ids, start=1):
        out.write(await export_chat(store, chat_id, "jsonl"))
        if progress is not None:
            progress(done, len(chat_ids))
    return len(chat_ids)


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def read_documents(data: bytes) -> list[dict[str, Any]]:
    """The chat documents of a ``json`` or ``jsonl`` export; malformed input raises
    :class:`ValueError` saying where."""
    text = data.strip()
    if not text:
        return []
    try:
        docs = (
            [orjson.loads(text)]
            if text.startswith(b"{") and b"\n{" not in text
            else [orjson.loads(line) for line in text.splitlines() if line.strip()]
        )
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not a json or jsonl export ({exc})") from None
    for n, doc in enumerate(docs, start=1):
        if not isinstance(doc, dict) or doc.get("format") != DOCUMENT_FORMAT:
            raise ValueError(f"document {n} is not a chatproxy chat export")
        if doc.get("version") != DOCUMENT_VERSION:
            raise ValueError(f"document {n} has an unknown version {doc.get('version')!r}")
    return docs


async def _restore(doc: dict[str, Any]) -> tuple[int, int]:
    chat = doc["chat"]
    owner = chat["owner"]
    await User.bulk_create([User(id=owner, name=owner)], ignore_conflicts=True)
    new_chat = not await Chat.exists(id=chat["id"])
    if new_chat:
        await Chat.create(
            id=chat["id"],
            owner_id=owner,
            title=chat["title"],
            visibility=chat["visibility"],
            metadata=chat["metadata"] or {},
            head_id=chat["head_id"],
            created_at=_when(chat["created_at"]),
            updated_at=_when(chat["updated_at"]),
        )
    ids = [m["id"] for m in doc["messages"]]
    present = set(await Message.filter(id__in=ids).values_list("id", flat=True))
    rows = [
        Message(
            id=m["id"],
            chat_id=chat["id"],
            parent_id=m["parent_id"],
            user_id=owner,
            role=m["role"],
            text=message_text(m["message"].get("content")),
            data=m["message"],
            **{name: m.get(name) for name in _MESSAGE_FIELDS},
            created_at=_when(m["created_at"]),
            completed_at=_when(m["completed_at"]),
        )
        for m in doc["messages"]
        if m["id"] not in present
    ]
    if rows:  # parents come before children in an export
        await Message.bulk_create(rows)
    return int(new_chat), len(rows)


async def import_documents(store: Store, docs: list[dict[str, Any]]) -> tuple[int, int]:
    """Restore exported chats with every branch, status and timestamp. Idempotent: what is
    already stored (by id) is left as it is. Returns (chats added, messages added)."""
    added_chats = added_messages = 0
    for doc in docs:
        chats, messages = await store.write(functools.partial(_restore, doc))
        added_chats += chats
        added_messages += messages
    return added_chats, added_messages
