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
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, NoReturn

import orjson
from tortoise.exceptions import BaseORMException

from chatproxy.auth import USER_ID_RE
from chatproxy.errors import NotFoundError
from chatproxy.ids import CHAT_ID_RE
from chatproxy.store.models import (
    MESSAGE_STATUSES,
    Chat,
    Message,
    User,
    storable_json,
    storable_text,
)
from chatproxy.store.store import Store
from chatproxy.store.threading import message_text, prefix_hashes, replayable

__all__ = [
    "FORMATS",
    "BadExport",
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


# -- import -----------------------------------------------------------------------------------


class BadExport(ValueError):
    """An export ``chatproxy import`` cannot restore; the message says where (the line, the
    field) and why."""


_MISSING = object()
_MESSAGE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HASH_RE = re.compile(r"(?:[0-9a-f]{32})?")
_INT_MAX = 2**31 - 1  # the token and timing columns are 32-bit on PostgreSQL
_UNHASHED = ("in_progress", "interrupted")  # answers the proxy has not finished hashing
_TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _text(limit: int) -> tuple[Callable[[Any], bool], str]:
    return (
        lambda v: isinstance(v, str) and len(v) <= limit,
        f"a string of at most {limit} characters, or null",
    )


def _count() -> tuple[Callable[[Any], bool], str]:
    return (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _INT_MAX,
        f"an integer from 0 to {_INT_MAX}, or null",
    )


_OBJECT = (lambda v: isinstance(v, dict), "an object, or null")
# The optional fields of a message: (valid?, what is expected); missing or null: the default.
_OPTIONAL: dict[str, tuple[Callable[[Any], bool], str]] = {
    "error": _OBJECT,
    "model": _text(256),
    "finish_reason": _text(32),
    **{name: _count() for name in _TOKEN_FIELDS},
    "usage": _OBJECT,
    "upstream_id": _text(256),
    "system_fingerprint": _text(256),
    "params": _OBJECT,
    "ttft_ms": _count(),
    "duration_ms": _count(),
    "instance_id": _text(64),
    "metadata": _OBJECT,
}


def _brief(value: Any) -> str:
    shown = repr(value) if isinstance(value, str | int | float | bool) else type(value).__name__
    if isinstance(value, list | dict):
        shown = "an array" if isinstance(value, list) else "an object"
    elif value is None:
        shown = "null"
    return shown if len(shown) <= 40 else shown[:37] + "..."


class _Reader:
    """Validates one document and fills in what it leaves out; ``where`` starts every error."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, expected: str, value: Any = _MISSING) -> NoReturn:
        got = "it is missing" if value is _MISSING else f"got {_brief(value)}"
        raise BadExport(f"{self.where}{path}: expected {expected}, {got}")

    def when(self, path: str, value: Any, default: datetime | None) -> datetime | None:
        if value is None or value is _MISSING:
            return default
        try:
            parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            parsed = None
        if parsed is None:
            self.fail(path, "an ISO 8601 date and time, or null", value)
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)

    def document(self, doc: Any) -> dict[str, Any]:
        if not isinstance(doc, dict) or doc.get("format") != DOCUMENT_FORMAT:
            raise BadExport(
                f'{self.where}not a chatproxy chat export (no "format": "{DOCUMENT_FORMAT}")'
            )
        version = doc.get("version", _MISSING)
        if type(version) is not int or version != DOCUMENT_VERSION:
            self.fail("version", f"{DOCUMENT_VERSION} (the version this chatproxy reads)", version)
        chat = doc.get("chat", _MISSING)
        if not isinstance(chat, dict):
            self.fail("chat", "an object", chat)
        entries = doc.get("messages")
        if entries is not None and not isinstance(entries, list):
            self.fail("messages", "an array", entries)
        chat_out = self.chat(chat)
        messages = self.messages(entries or [], chat_out)
        ids = {m["id"] for m in messages}
        head = chat.get("head_id", _MISSING)
        if head is _MISSING:  # the newest leaf, as the proxy keeps it
            parents = {m["parent_id"] for m in messages}
            head = next((m["id"] for m in reversed(messages) if m["id"] not in parents), None)
        elif head is not None and head not in ids:
            self.fail("chat.head_id", "null or the id of one of the document's messages", head)
        chat_out["head_id"] = head
        if chat_out["updated_at"] is None:
            times = [m["completed_at"] or m["created_at"] for m in messages]
            chat_out["updated_at"] = max([chat_out["created_at"], *times])
        return {
            "format": DOCUMENT_FORMAT,
            "version": DOCUMENT_VERSION,
            "chat": {k: _iso(v) if isinstance(v, datetime) else v for k, v in chat_out.items()},
            "messages": [
                {k: _iso(v) if isinstance(v, datetime) else v for k, v in m.items()}
                for m in messages
            ],
        }

    def chat(self, chat: dict[str, Any]) -> dict[str, Any]:
        chat_id, owner = chat.get("id", _MISSING), chat.get("owner", _MISSING)
        if not isinstance(chat_id, str) or not CHAT_ID_RE.fullmatch(chat_id):
            self.fail("chat.id", "a chat id (1 to 128 of A-Z a-z 0-9 _ -)", chat_id)
        if not isinstance(owner, str) or not USER_ID_RE.fullmatch(owner):
            self.fail("chat.owner", "a user id (1 to 128 of A-Z a-z 0-9 _ . @ : -)", owner)
        title = chat.get("title")
        if title is not None and not _text(256)[0](title):
            self.fail("chat.title", _text(256)[1], title)
        visibility = chat.get("visibility") or "private"
        if visibility not in ("private", "public"):
            self.fail("chat.visibility", '"private" or "public"', visibility)
        metadata = chat.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            self.fail("chat.metadata", "an object, or null", metadata)
        return {
            "id": chat_id,
            "owner": owner,
            "title": title,
            "visibility": visibility,
            "metadata": metadata or {},
            "head_id": None,
            "created_at": self.when("chat.created_at", chat.get("created_at"), None),
            "updated_at": self.when("chat.updated_at", chat.get("updated_at"), None),
        }

    def messages(self, entries: list[Any], chat: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            path = f"messages[{i}]"
            if not isinstance(entry, dict):
                self.fail(path, "an object", entry)
            m = self.message(path, entry)
            if m["id"] in seen:
                self.fail(f"{path}.id", "an id used once in the document", m["id"])
            seen.add(m["id"])
            out.append(m)
        for i, m in enumerate(out):
            if m["parent_id"] is not None and m["parent_id"] not in seen:
                self.fail(
                    f"messages[{i}].parent_id",
                    "null or the id of another message of the document",
                    m["parent_id"],
                )
        ordered = self.parents_first(out)
        # Times left out: the chat's start, then one microsecond after the message before.
        known = [m["created_at"] for m in out if m["created_at"] is not None]
        if chat["created_at"] is None:
            chat["created_at"] = min(known) if known else datetime.now(UTC)
        previous = chat["created_at"] - timedelta(microseconds=1)
        for m in out:
            if m["created_at"] is None:
                m["created_at"] = previous + timedelta(microseconds=1)
            previous = m["created_at"]
        # Prefix hashes left out: computed from the parent's, as the proxy does.
        by_id = {m["id"]: m for m in out}
        for m in ordered:
            if m["prefix_hash"] is None:
                parent = by_id[m["parent_id"]]["prefix_hash"] if m["parent_id"] else ""
                unhashed = m["role"] == "assistant" and m["status"] in _UNHASHED
                m["prefix_hash"] = "" if unhashed else prefix_hashes([m["message"]], parent)[0]
        return out

    def parents_first(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages with every parent before its children (document order otherwise)."""
        index = {m["id"]: i for i, m in enumerate(messages)}
        placed: set[str] = set()
        ordered: list[dict[str, Any]] = []
        for m in messages:
            chain: list[dict[str, Any]] = []
            in_chain: set[str] = set()
            current: dict[str, Any] | None = m
            while current is not None and current["id"] not in placed:
                if current["id"] in in_chain:
                    self.fail(
                        f"messages[{index[current['id']]}].parent_id",
                        "a parent that is not its own descendant",
                        current["parent_id"],
                    )
                chain.append(current)
                in_chain.add(current["id"])
                parent_id = current["parent_id"]
                current = messages[index[parent_id]] if parent_id is not None else None
            for entry in reversed(chain):
                placed.add(entry["id"])
                ordered.append(entry)
        return ordered

    def message(self, path: str, entry: dict[str, Any]) -> dict[str, Any]:
        message_id = entry.get("id", _MISSING)
        if not isinstance(message_id, str) or not _MESSAGE_ID_RE.fullmatch(message_id):
            self.fail(f"{path}.id", "a message id (1 to 64 of A-Z a-z 0-9 _ -)", message_id)
        parent_id = entry.get("parent_id")
        if parent_id is not None and not (
            isinstance(parent_id, str) and _MESSAGE_ID_RE.fullmatch(parent_id)
        ):
            self.fail(f"{path}.parent_id", "null or a message id", parent_id)
        data = entry.get("message", _MISSING)
        if not isinstance(data, dict):
            self.fail(f"{path}.message", "an object (the message in chat-completions form)", data)
        role = entry.get("role") or data.get("role", _MISSING)
        if not isinstance(role, str) or not 0 < len(role) <= 16:
            self.fail(f"{path}.role", "a role such as user or assistant", role)
        status = entry.get("status") or "completed"
        if status not in MESSAGE_STATUSES:
            self.fail(f"{path}.status", f"one of {', '.join(MESSAGE_STATUSES)}", status)
        out: dict[str, Any] = {
            "id": message_id,
            "parent_id": parent_id,
            "role": role,
            "message": data,
            "status": status,
        }
        for name, (valid, expected) in _OPTIONAL.items():
            value = entry.get(name)
            if value is not None and not valid(value):
                self.fail(f"{path}.{name}", expected, value)
            out[name] = value
        usage = out["usage"] or {}
        for name in _TOKEN_FIELDS:  # left out: as the usage says
            if out[name] is None and _count()[0](usage.get(name)):
                out[name] = usage[name]
        disconnected = entry.get("client_disconnected")
        if disconnected is not None and not isinstance(disconnected, bool):
            self.fail(f"{path}.client_disconnected", "true, false or null", disconnected)
        out["client_disconnected"] = bool(disconnected)
        prefix_hash = entry.get("prefix_hash")
        if prefix_hash is not None and not (
            isinstance(prefix_hash, str) and _HASH_RE.fullmatch(prefix_hash)
        ):
            self.fail(f"{path}.prefix_hash", "32 hexadecimal digits, empty, or null", prefix_hash)
        out["prefix_hash"] = prefix_hash
        out["created_at"] = self.when(f"{path}.created_at", entry.get("created_at"), None)
        out["completed_at"] = self.when(f"{path}.completed_at", entry.get("completed_at"), None)
        return out


def read_documents(data: bytes) -> list[dict[str, Any]]:
    """The chat documents of a ``json`` or ``jsonl`` export, validated, with what they leave
    out filled in (defaults; prefix hashes, head and times derived). Raises
    :class:`BadExport` naming the line (of a ``jsonl`` file) and the field."""
    text = data.removeprefix(b"\xef\xbb\xbf").strip()  # a UTF-8 byte-order mark
    if not text:
        return []
    if text.startswith(b"{") and b"\n{" not in text:  # one json document
        where = "" if b"\n" in text else "line 1: "  # (on one line: a jsonl file as well)
        try:
            return [_Reader(where).document(orjson.loads(text))]
        except orjson.JSONDecodeError as exc:
            raise BadExport(f"{where}not a json or jsonl export ({exc})") from None
    docs = []
    for n, line in enumerate(data.removeprefix(b"\xef\xbb\xbf").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise BadExport(f"line {n}: not a json or jsonl export ({exc})") from None
        docs.append(_Reader(f"line {n}: ").document(doc))
    return docs


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


async def _conflict(doc: dict[str, Any]) -> str | None:
    """Why ``doc`` cannot go into this store (a chat or message id taken by another), or
    ``None``."""
    chat = doc["chat"]
    owners = await Chat.filter(id=chat["id"]).values_list("owner_id", flat=True)
    if owners and owners[0] != chat["owner"]:
        return f"chat {chat['id']!r} is already stored for another user ({owners[0]!r})"
    ids = [m["id"] for m in doc["messages"]]
    for i in range(0, len(ids), 500):
        taken = await (
            Message.filter(id__in=ids[i : i + 500])
            .exclude(chat_id=chat["id"])
            .values_list("id", "chat_id")
        )
        if taken:
            message_id, other = taken[0]
            return f"message {message_id!r} of chat {chat['id']!r} is already in chat {other!r}"
    return None


def _storable(value: Any) -> Any:
    """``value`` as both stores hold it: every NUL in its text replaced by U+FFFD (PostgreSQL
    refuses NUL in text and JSON), as the proxy stores what it is sent."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return storable_text(value)
    text = orjson.dumps(value).decode()
    cleaned = storable_json(text)
    return value if cleaned is text else orjson.loads(cleaned)


async def _restore(doc: dict[str, Any]) -> tuple[int, int]:
    conflict = await _conflict(doc)
    if conflict is not None:
        raise BadExport(conflict)
    chat = doc["chat"]
    owner = chat["owner"]
    await User.bulk_create([User(id=owner, name=owner)], ignore_conflicts=True)
    new_chat = not await Chat.exists(id=chat["id"])
    if new_chat:
        await Chat.create(
            id=chat["id"],
            owner_id=owner,
            title=_storable(chat["title"]),
            visibility=chat["visibility"],
            metadata=_storable(chat["metadata"] or {}),
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
            text=_storable(message_text(m["message"].get("content"))),
            data=_storable(m["message"]),
            **{name: _storable(m.get(name)) for name in _MESSAGE_FIELDS},
            created_at=_when(m["created_at"]),
            completed_at=_when(m["completed_at"]),
        )
        for m in _Reader("").parents_first(doc["messages"])
        if m["id"] not in present
    ]
    if rows:
        await Message.bulk_create(rows)
    return int(new_chat), len(rows)


async def import_documents(store: Store, docs: list[dict[str, Any]]) -> tuple[int, int]:
    """Restore chat documents (as :func:`read_documents` gives them) with every branch,
    status and timestamp; returns (chats added, messages added). Idempotent: what is already
    stored (by id) is left as it is. A document whose ids another chat or user holds, or that
    the database refuses, raises :class:`BadExport`: nothing of it is stored, and nothing at
    all when the conflict is found before any write."""
    for doc in docs:
        conflict = await store.read(functools.partial(_conflict, doc))
        if conflict is not None:
            raise BadExport(conflict)
    added_chats = added_messages = 0
    for doc in docs:
        try:
            chats, messages = await store.write(functools.partial(_restore, doc))
        except BaseORMException as exc:
            raise BadExport(
                f"chat {doc['chat']['id']!r}: the database refused it ({exc})"
            ) from None
        added_chats += chats
        added_messages += messages
    return added_chats, added_messages
