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

from datetime import datetime
from typing import Any

import orjson

from chatproxy.errors import NotFoundError
from chatproxy.store.models import Chat, Message
from chatproxy.store.store import Store
from chatproxy.store.threading import message_text

__all__ = ["FORMATS", "active_branch", "chat_document", "export_chat", "render"]

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
    message = entry["message"]
    if entry["role"] != "assistant" or entry["status"] == "completed":
        return True
    return bool(message.get("content") or message.get("tool_calls"))


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
