"""Export formats.

- ``json``: lossless: the chat and every message of every branch with its status, usage,
  timings and parameters; the format ``chatproxy import`` reads.
- ``jsonl``: the same document on one line (one chat a line: the backup format).
- ``markdown``: the active branch, for reading.
- ``openai``: ``{"messages": [...]}``, the active branch in chat-completions format, for
  replay or fine-tuning.

Every format is rendered from the lossless document, so an exported ``json`` file can be
turned into the others without a database. Plugins add formats (``register_exporters``,
:func:`plugin_formats`): each renders one chat's lossless document into bytes, for one chat and
for ``--all`` (every chat's rendering, one after the other).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, NoReturn

import orjson

from chatproxy.auth import USER_ID_RE
from chatproxy.bulk import BulkDB, bulk_db
from chatproxy.errors import ChatProxyError, NotFoundError
from chatproxy.ids import CHAT_ID_RE
from chatproxy.plugins.hookspecs import Exporter
from chatproxy.plugins.manager import PluginLoadError, Plugins, describe
from chatproxy.store.models import (
    MESSAGE_STATUSES,
    Chat,
    Message,
    Status,
    Vote,
)
from chatproxy.store.store import Store
from chatproxy.store.threading import default_title, message_text, prefix_hashes, replayable

__all__ = [
    "FORMATS",
    "BadExport",
    "DocumentReader",
    "PluginFormat",
    "active_branch",
    "chat_document",
    "export_all",
    "export_chat",
    "parse_line",
    "plugin_formats",
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


def _vote_entry(message_id: str, user_id: str, up: bool, created_at: str | None) -> dict[str, Any]:
    return {"message_id": message_id, "user_id": user_id, "up": up, "created_at": created_at}


def chat_document(
    chat: Chat, messages: list[Message], votes: list[Vote] | None = None
) -> dict[str, Any]:
    """The lossless export of one chat (with its votes, when given)."""
    doc = {
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
    if votes is not None:
        doc["votes"] = [
            _vote_entry(v.message_id, v.user_id, v.up, _iso(v.created_at)) for v in votes
        ]
    return doc


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
            if entry["status"] != Status.COMPLETED:
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


FORMAT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")


@dataclass(slots=True, frozen=True)
class PluginFormat:
    """An export format a plugin adds, and the plugin's name (for errors)."""

    plugin: str
    exporter: Exporter

    def render(self, doc: dict[str, Any]) -> bytes:
        """The exporter's bytes for one chat document; a failure is a ``ChatProxyError``
        naming the plugin and the format."""
        name = self.exporter.name
        try:
            data = self.exporter.render(doc)
        except Exception as exc:
            raise ChatProxyError(
                f"plugin {self.plugin!r} failed to render format {name!r}: {describe(exc)}"
            ) from None
        if not isinstance(data, bytes | bytearray):
            raise ChatProxyError(
                f"plugin {self.plugin!r}: format {name!r} rendered {type(data).__name__}, not bytes"
            )
        return bytes(data)


def plugin_formats(plugins: Plugins) -> dict[str, PluginFormat]:
    """The formats the plugins add (``register_exporters``), by name. A plugin that fails, or
    adds a format whose name is taken or malformed, raises :class:`PluginLoadError`."""
    formats: dict[str, PluginFormat] = {}
    for plugin, register in plugins.implementations("register_exporters"):
        try:
            answer = register()
        except Exception as exc:
            raise PluginLoadError(plugin, "failed in register_exporters", exc) from None
        answers = answer if isinstance(answer, list | tuple) else [answer]
        for exporter in answers:
            if exporter is None:
                continue
            if not isinstance(exporter, Exporter) or not callable(exporter.render):
                shown = type(exporter).__name__
                raise PluginLoadError(plugin, f"register_exporters answered {shown}, no Exporter")
            name = exporter.name
            if not isinstance(name, str) or not FORMAT_NAME_RE.fullmatch(name):
                raise PluginLoadError(
                    plugin,
                    f"adds an export format named {name!r} (expected 1 to 32 of a-z 0-9 _ . -)",
                )
            if name in FORMATS:
                raise PluginLoadError(plugin, f"adds the export format {name!r}, which is built in")
            if name in formats:
                other = formats[name].plugin
                raise PluginLoadError(plugin, f"adds the export format {name!r}, as {other!r} does")
            formats[name] = PluginFormat(plugin, exporter)
    return formats


async def export_chat(
    store: Store, chat_id: str, fmt: str, formats: dict[str, PluginFormat] | None = None
) -> bytes:
    """Export one chat from ``store`` in ``fmt`` (built in, or one of ``formats``); an unknown
    chat raises :class:`NotFoundError`."""
    chat = await store.get_chat(chat_id)
    if chat is None:
        raise NotFoundError(f"no chat with id {chat_id!r}")
    messages = await store.chat_messages(chat_id)
    votes = await store.read(
        lambda: Vote.filter(chat_id=chat_id).order_by("created_at", "id").all()
    )
    doc = chat_document(chat, messages, votes)
    if formats and fmt in formats:
        return formats[fmt].render(doc)
    return render(doc, fmt)


_PAGE_MESSAGES = 2000  # message rows one read returns, at most
# Chats per page, at most: one IN list (BulkDB.fetch on SQLite runs a longer list in parts,
# each with a LIMIT of its own, which would break the page's cut).
_PAGE_CHATS = 500
_CHAT_SELECT = (
    "SELECT id, owner_id, title, visibility, metadata, head_id, created_at, updated_at "
    "FROM chats WHERE id > ?"
)
_MESSAGE_COLUMNS = (
    "chat_id, id, parent_id, role, data, "
    + ", ".join(_MESSAGE_FIELDS)
    + ", created_at, completed_at"
)
_AFTER = " AND created_at >= ? AND (created_at > ? OR id > ?)"  # after (created_at, id)
_PAGE_MESSAGES_SELECT = (
    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE chat_id IN ?list"
    " ORDER BY chat_id, created_at, id LIMIT ?"
)
_CHAT_MESSAGES_SELECT = (
    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?{_AFTER}"
    " ORDER BY created_at, id LIMIT ?"
)
_VOTE_COLUMNS = "chat_id, message_id, user_id, up, created_at, id"
_PAGE_VOTES_SELECT = (
    f"SELECT {_VOTE_COLUMNS} FROM votes WHERE chat_id IN ?list ORDER BY chat_id, created_at, id"
)
_CHAT_VOTES_SELECT = f"SELECT {_VOTE_COLUMNS} FROM votes WHERE chat_id = ?"
_JSON_FIELDS = frozenset({"error", "usage", "params", "metadata"})


def _iso_column(value: Any) -> str | None:
    """A datetime column (SQLite: Tortoise's text form) as the ORM's export writes it."""
    if value is None:
        return None
    if isinstance(value, str):
        if value[10:11] == " " and value.endswith("+00:00"):
            return value[:10] + "T" + value[11:]
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return str(value.astimezone(UTC).isoformat())


def _json_column(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _message_entry(row: Sequence[Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": row[1],
        "parent_id": row[2],
        "role": row[3],
        "message": _json_column(row[4]),
    }
    for i, name in enumerate(_MESSAGE_FIELDS, start=5):
        value = row[i]
        if name in _JSON_FIELDS and value is not None:
            value = _json_column(value)
        elif name == "client_disconnected":
            value = bool(value)
        entry[name] = value
    entry["created_at"] = _iso_column(row[-2])
    entry["completed_at"] = _iso_column(row[-1])
    return entry


def _vote_row_entry(row: Sequence[Any]) -> dict[str, Any]:
    _, message_id, voter, up, at, _ = row
    return _vote_entry(message_id, voter, bool(up), _iso_column(at))


@dataclass(slots=True)
class ExportStats:
    """What ``export --all`` read: chats, messages, and how (reads of messages; the most
    message rows one returned)."""

    chats: int = 0
    messages: int = 0
    pages: int = 0
    largest_page: int = 0


@dataclass(slots=True)
class _Part:
    """What one read gives the writer: whole chats with their messages and votes, or (``chat``
    set) a part of one chat too large for a page: its messages, then its votes, in order;
    ``first`` and ``last`` mark its first and last part."""

    chats: list[Sequence[Any]] = field(default_factory=list)
    messages: list[Sequence[Any]] = field(default_factory=list)
    votes: list[Sequence[Any]] = field(default_factory=list)
    chat: Sequence[Any] | None = None
    first: bool = False
    last: bool = False


async def _parts(db: BulkDB, filters: str, params: list[Any], limit: int) -> AsyncIterator[_Part]:
    """The chats in id order (keyset pagination), read so that no read returns more than
    ``limit`` + 1 message rows: pages of whole chats, sized to about ``limit`` messages at the
    last page's average (their votes in one read: one a user and message at most); a chat
    with more messages than that is read alone, in parts, along the messages-by-chat index
    (keyset on ``created_at, id``), its votes too."""
    after = ""
    chats_per_page = max(1, min(_PAGE_CHATS, limit // 10))
    chat_query = _CHAT_SELECT + filters + " ORDER BY id LIMIT ?"
    while True:
        chats = await db.fetch(chat_query, [after, *params, chats_per_page])
        if not chats:
            return
        ids = [c[0] for c in chats]
        messages = await db.fetch(_PAGE_MESSAGES_SELECT, [ids, limit + 1])
        whole = len(chats)
        if len(messages) > limit:
            # The last row's chat goes on past this read: the page ends before it (read again
            # next), unless it is the page's first chat (read alone, in parts).
            whole = ids.index(messages[-1][0])
            if whole == 0:
                async for part in _large_chat(db, chats[0], messages, limit):
                    yield part
                after = ids[0]
                continue
            cut = next(i for i, m in enumerate(messages) if m[0] == ids[whole])
            del messages[cut:]
        page = chats[:whole]
        votes = await db.fetch(_PAGE_VOTES_SELECT, [ids[:whole]])
        per_chat = max(1.0, len(messages) / whole)
        chats_per_page = max(1, min(_PAGE_CHATS, int(limit / per_chat)))
        after = ids[whole - 1]
        yield _Part(chats=page, messages=messages, votes=votes)


async def _large_chat(
    db: BulkDB, chat: Sequence[Any], messages: list[Sequence[Any]], limit: int
) -> AsyncIterator[_Part]:
    """One chat in parts of at most ``limit`` + 1 rows, its first ``messages`` already read."""
    chat_id = chat[0]
    yield _Part(messages=messages, chat=chat, first=True)
    while len(messages) > limit:
        at, last_id = messages[-1][-2], messages[-1][1]
        messages = await db.fetch(_CHAT_MESSAGES_SELECT, [chat_id, at, at, last_id, limit + 1])
        yield _Part(messages=messages, chat=chat)
    query = _CHAT_VOTES_SELECT + " ORDER BY created_at, id LIMIT ?"
    votes = await db.fetch(query, [chat_id, limit + 1])
    while len(votes) > limit:
        yield _Part(votes=votes, chat=chat)
        at, last_id = votes[-1][4], votes[-1][5]
        query = _CHAT_VOTES_SELECT + _AFTER + " ORDER BY created_at, id LIMIT ?"
        votes = await db.fetch(query, [chat_id, at, at, last_id, limit + 1])
    yield _Part(votes=votes, chat=chat, last=True)


def _chat_object(row: Sequence[Any]) -> dict[str, Any]:
    chat_id, owner, title, visibility, metadata, head_id, created, updated = row
    return {
        "id": chat_id,
        "owner": owner,
        "title": title,
        "visibility": visibility,
        "metadata": _json_column(metadata),
        "head_id": head_id,
        "created_at": _iso_column(created),
        "updated_at": _iso_column(updated),
    }


def _head(chat: dict[str, Any]) -> dict[str, Any]:
    return {"format": DOCUMENT_FORMAT, "version": DOCUMENT_VERSION, "chat": chat}


class _Writer:
    """Writes the parts as JSON lines, the bytes ``orjson.dumps`` gives each whole document
    (a large chat's line is written a part at a time)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.separator = b""  # before the next message or vote of a large chat
        self.in_votes = False

    def write(self, part: _Part) -> None:
        if part.chat is None:
            self._whole(part)
            return
        out = self.out
        if part.first:
            # '{"format":...,"chat":{...},"messages":[' : the document, its end cut off.
            out.write(orjson.dumps({**_head(_chat_object(part.chat)), "messages": []})[:-2])
            self.separator, self.in_votes = b"", False
        if part.messages:
            entries = [_message_entry(row) for row in part.messages]
            out.write(self.separator + orjson.dumps(entries)[1:-1])
            self.separator = b","
        if part.votes or part.last:
            if not self.in_votes:
                out.write(b'],"votes":[')
                self.separator, self.in_votes = b"", True
            if part.votes:
                votes = [_vote_row_entry(row) for row in part.votes]
                out.write(self.separator + orjson.dumps(votes)[1:-1])
                self.separator = b","
        if part.last:
            out.write(b"]}\n")

    def _whole(self, part: _Part) -> None:
        lines = [orjson.dumps(doc) for doc in _documents(part)]
        lines.append(b"")
        self.out.write(b"\n".join(lines))


def _documents(part: _Part) -> Iterator[dict[str, Any]]:
    """The whole chats of a part, as documents."""
    messages, votes = part.messages, part.votes
    m = v = 0
    for row in part.chats:
        chat_id = row[0]
        start = m
        while m < len(messages) and messages[m][0] == chat_id:
            m += 1
        first_vote = v
        while v < len(votes) and votes[v][0] == chat_id:
            v += 1
        doc = _head(_chat_object(row))
        doc["messages"] = [_message_entry(r) for r in messages[start:m]]
        doc["votes"] = [_vote_row_entry(r) for r in votes[first_vote:v]]
        yield doc


class _FormatWriter:
    """Writes each chat in a plugin's format: its whole document rendered (a large chat's
    parts are gathered first: the one chat is held in memory)."""

    def __init__(self, out: BinaryIO, fmt: PluginFormat) -> None:
        self.out = out
        self.fmt = fmt
        self.doc: dict[str, Any] | None = None

    def write(self, part: _Part) -> None:
        if part.chat is None:
            for doc in _documents(part):
                self.out.write(self.fmt.render(doc))
            return
        if part.first:
            self.doc = {**_head(_chat_object(part.chat)), "messages": [], "votes": []}
        assert self.doc is not None
        self.doc["messages"] += [_message_entry(row) for row in part.messages]
        self.doc["votes"] += [_vote_row_entry(row) for row in part.votes]
        if part.last:
            self.out.write(self.fmt.render(self.doc))
            self.doc = None


async def export_all(
    store: Store,
    out: BinaryIO,
    *,
    user_id: str | None = None,
    since: datetime | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    page_messages: int = _PAGE_MESSAGES,
    fmt: PluginFormat | None = None,
) -> ExportStats:
    """Write every chat (of one user; updated since ``since``) to ``out`` as JSON lines, the
    backup format, in chat id order (or each in a plugin's format ``fmt``).

    The store is read in pages (keyset pagination on the chat id, the page's messages in one
    query along the messages-by-chat index, the next read while this one is written), none
    holding more than ``page_messages`` messages: a chat with more is read in parts. Memory
    holds two reads, whatever the size of the store or of its chats.
    ``progress(chats, total, messages)`` is called after each read."""
    async with bulk_db(store) as db:
        filters, params = "", []
        if user_id is not None:
            filters += " AND owner_id = ?"
            params.append(user_id)
        if since is not None:
            filters += " AND updated_at >= ?"
            params.append(db.ts(since))
        total = 0
        if progress is not None:
            count = "SELECT COUNT(*) FROM chats WHERE id > ?" + filters
            total = int((await db.fetch(count, ["", *params]))[0][0])
        stats = ExportStats()
        writer = _Writer(out) if fmt is None else _FormatWriter(out, fmt)
        parts = _parts(db, filters, params, max(1, page_messages))
        pending = asyncio.ensure_future(anext(parts, None))
        try:
            while (part := await pending) is not None:
                pending = asyncio.ensure_future(anext(parts, None))
                if part.chat is None or part.messages:
                    stats.pages += 1
                stats.largest_page = max(stats.largest_page, len(part.messages))
                stats.messages += len(part.messages)
                stats.chats += len(part.chats) + (1 if part.last else 0)
                writer.write(part)
                if progress is not None:
                    progress(stats.chats, max(total, stats.chats), stats.messages)
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending
            await parts.aclose()
        return stats


# -- import -----------------------------------------------------------------------------------


class BadExport(ValueError):
    """An export ``chatproxy import`` cannot restore; the message says where (the line, the
    field) and why."""


_MISSING = object()
_MESSAGE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HASH_RE = re.compile(r"(?:[0-9a-f]{32})?")
_INT_MAX = 2**31 - 1  # the token and timing columns are 32-bit on PostgreSQL
_UNHASHED = (Status.IN_PROGRESS, Status.INTERRUPTED)  # answers the proxy has not finished hashing
_TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _text(limit: int) -> tuple[Callable[[Any], bool], str]:
    return (
        lambda v: isinstance(v, str) and len(v) <= limit,
        f"a string of at most {limit} characters, or null",
    )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _INT_MAX


def _count() -> tuple[Callable[[Any], bool], str]:
    return _is_count, f"an integer from 0 to {_INT_MAX}, or null"


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


class DocumentReader:
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
        """The document, complete: what it leaves out filled in, times as ISO text."""
        chat, messages, votes = self.parse(doc)
        iso = [
            {k: _iso(v) if isinstance(v, datetime) else v for k, v in m.items()} for m in messages
        ]
        for m in iso:
            del m["depth"]
        return {
            "format": DOCUMENT_FORMAT,
            "version": DOCUMENT_VERSION,
            "chat": {k: _iso(v) if isinstance(v, datetime) else v for k, v in chat.items()},
            "messages": iso,
            "votes": [dict(v, created_at=_iso(v["created_at"])) for v in votes],
        }

    def parse(self, doc: Any) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        """The chat, its messages (in document order, each with its ``depth``) and votes,
        validated, with what the document leaves out derived; times as datetimes."""
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
        by_id = {m["id"]: m for m in messages}
        head = chat.get("head_id", _MISSING)
        if head is _MISSING:  # the newest leaf, as the proxy keeps it
            parents = {m["parent_id"] for m in messages}
            leaves = [
                (m["created_at"], i) for i, m in enumerate(messages) if m["id"] not in parents
            ]
            head = messages[max(leaves)[1]]["id"] if leaves else None
        elif head is not None and head not in by_id:
            self.fail("chat.head_id", "null or the id of one of the document's messages", head)
        chat_out["head_id"] = head
        if "title" not in chat:  # as the proxy names a chat: from its first user message
            branch = []
            current = by_id.get(head) if head is not None else None
            while current is not None:
                branch.append(current["message"])
                current = by_id.get(current["parent_id"] or "")
            branch.reverse()
            chat_out["title"] = default_title(branch or [m["message"] for m in messages])
        if chat_out["updated_at"] is None:
            times = [m["completed_at"] or m["created_at"] for m in messages]
            chat_out["updated_at"] = max([chat_out["created_at"], *times])
        return chat_out, messages, self.votes(doc.get("votes"), by_id, chat_out)

    def votes(
        self, entries: Any, messages: dict[str, dict[str, Any]], chat: dict[str, Any]
    ) -> list[dict[str, Any]]:
        if entries is None:
            return []
        if not isinstance(entries, list):
            self.fail("votes", "an array, or null", entries)
        out = []
        seen: set[tuple[str, str]] = set()
        for i, entry in enumerate(entries):
            path = f"votes[{i}]"
            if not isinstance(entry, dict):
                self.fail(path, "an object", entry)
            message_id = entry.get("message_id", _MISSING)
            if not isinstance(message_id, str) or message_id not in messages:
                self.fail(
                    f"{path}.message_id", "the id of one of the document's messages", message_id
                )
            user = entry.get("user_id", _MISSING)
            if not isinstance(user, str) or not USER_ID_RE.fullmatch(user):
                self.fail(f"{path}.user_id", "a user id (1 to 128 of A-Z a-z 0-9 _ . @ : -)", user)
            if (message_id, user) in seen:
                self.fail(f"{path}.user_id", "one vote per user and message", user)
            seen.add((message_id, user))
            up = entry.get("up", _MISSING)
            if not isinstance(up, bool):
                self.fail(f"{path}.up", "true or false", up)
            at = self.when(f"{path}.created_at", entry.get("created_at"), chat["updated_at"])
            out.append({"message_id": message_id, "user_id": user, "up": up, "created_at": at})
        return out

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
        in_order = True  # every parent before its children, as an export writes them
        message = self.message
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                self.fail(f"messages[{i}]", "an object", entry)
            m = message(i, entry)
            message_id, parent_id = m["id"], m["parent_id"]
            if message_id in seen:
                self.fail(f"messages[{i}].id", "an id used once in the document", message_id)
            if parent_id is not None and parent_id not in seen:
                in_order = False
            seen.add(message_id)
            out.append(m)
        ordered = out
        if not in_order:
            for i, m in enumerate(out):
                if m["parent_id"] is not None and m["parent_id"] not in seen:
                    self.fail(
                        f"messages[{i}].parent_id",
                        "null or the id of another message of the document",
                        m["parent_id"],
                    )
            ordered = self.parents_first(out)
        # Times left out: the chat's start, then one microsecond after the message before.
        if chat["created_at"] is None:
            known = [m["created_at"] for m in out if m["created_at"] is not None]
            chat["created_at"] = min(known) if known else datetime.now(UTC)
        previous = chat["created_at"] - timedelta(microseconds=1)
        for m in out:
            if m["created_at"] is None:
                m["created_at"] = previous + timedelta(microseconds=1)
            previous = m["created_at"]
        # Prefix hashes left out: computed from the parent's, as the proxy does; the depth
        # (the place on the branch: a root is 1) always.
        by_id = {m["id"]: m for m in out}
        for m in ordered:
            m["depth"] = by_id[m["parent_id"]]["depth"] + 1 if m["parent_id"] else 1
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

    def message(self, i: int, entry: dict[str, Any]) -> dict[str, Any]:
        get = entry.get
        message_id = get("id", _MISSING)
        if not isinstance(message_id, str) or not _MESSAGE_ID_RE.fullmatch(message_id):
            self.fail(f"messages[{i}].id", "a message id (1 to 64 of A-Z a-z 0-9 _ -)", message_id)
        parent_id = get("parent_id")
        if parent_id is not None and not (
            isinstance(parent_id, str) and _MESSAGE_ID_RE.fullmatch(parent_id)
        ):
            self.fail(f"messages[{i}].parent_id", "null or a message id", parent_id)
        data = get("message", _MISSING)
        if not isinstance(data, dict):
            expected = "an object (the message in chat-completions form)"
            self.fail(f"messages[{i}].message", expected, data)
        role = get("role") or data.get("role", _MISSING)
        if not isinstance(role, str) or not 0 < len(role) <= 16:
            self.fail(f"messages[{i}].role", "a role such as user or assistant", role)
        status = get("status") or Status.COMPLETED
        if status not in MESSAGE_STATUSES:
            self.fail(f"messages[{i}].status", f"one of {', '.join(MESSAGE_STATUSES)}", status)
        (
            error,
            model,
            finish_reason,
            prompt_tokens,
            completion_tokens,
            total_tokens,
            usage,
            upstream_id,
            system_fingerprint,
            params,
            ttft_ms,
            duration_ms,
            instance_id,
            metadata,
        ) = map(get, _OPTIONAL)
        # All of _OPTIONAL at once (the usual values); on anything else, field by field.
        if not (
            (error is None or type(error) is dict)
            and (model is None or (type(model) is str and len(model) <= 256))
            and (finish_reason is None or (type(finish_reason) is str and len(finish_reason) <= 32))
            and (
                prompt_tokens is None
                or (type(prompt_tokens) is int and 0 <= prompt_tokens <= _INT_MAX)
            )
            and (
                completion_tokens is None
                or (type(completion_tokens) is int and 0 <= completion_tokens <= _INT_MAX)
            )
            and (
                total_tokens is None
                or (type(total_tokens) is int and 0 <= total_tokens <= _INT_MAX)
            )
            and (usage is None or type(usage) is dict)
            and (upstream_id is None or (type(upstream_id) is str and len(upstream_id) <= 256))
            and (
                system_fingerprint is None
                or (type(system_fingerprint) is str and len(system_fingerprint) <= 256)
            )
            and (params is None or type(params) is dict)
            and (ttft_ms is None or (type(ttft_ms) is int and 0 <= ttft_ms <= _INT_MAX))
            and (duration_ms is None or (type(duration_ms) is int and 0 <= duration_ms <= _INT_MAX))
            and (instance_id is None or (type(instance_id) is str and len(instance_id) <= 64))
            and (metadata is None or type(metadata) is dict)
        ):
            self.optional(i, entry)
        if usage:  # token counts left out: as the usage says
            if prompt_tokens is None and _is_count(usage.get("prompt_tokens")):
                prompt_tokens = usage["prompt_tokens"]
            if completion_tokens is None and _is_count(usage.get("completion_tokens")):
                completion_tokens = usage["completion_tokens"]
            if total_tokens is None and _is_count(usage.get("total_tokens")):
                total_tokens = usage["total_tokens"]
        disconnected = get("client_disconnected")
        if disconnected is not None and not isinstance(disconnected, bool):
            self.fail(f"messages[{i}].client_disconnected", "true, false or null", disconnected)
        prefix_hash = get("prefix_hash")
        if prefix_hash is not None and not (
            isinstance(prefix_hash, str) and _HASH_RE.fullmatch(prefix_hash)
        ):
            expected = "32 hexadecimal digits, empty, or null"
            self.fail(f"messages[{i}].prefix_hash", expected, prefix_hash)
        created_at, completed_at = get("created_at"), get("completed_at")
        if created_at is not None:
            created_at = self.when(f"messages[{i}].created_at", created_at, None)
        if completed_at is not None:
            completed_at = self.when(f"messages[{i}].completed_at", completed_at, None)
        return {
            "id": message_id,
            "parent_id": parent_id,
            "role": role,
            "message": data,
            "status": status,
            "error": error,
            "model": model,
            "finish_reason": finish_reason,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": total_tokens,
            "usage": usage,
            "upstream_id": upstream_id,
            "system_fingerprint": system_fingerprint,
            "params": params,
            "ttft_ms": ttft_ms,
            "duration_ms": duration_ms,
            "instance_id": instance_id,
            "metadata": metadata,
            "client_disconnected": bool(disconnected),
            "prefix_hash": prefix_hash,
            "created_at": created_at,
            "completed_at": completed_at,
        }

    def optional(self, i: int, entry: dict[str, Any]) -> None:
        """Fails on the first optional field of message ``i`` that is not valid."""
        for name, (valid, expected) in _OPTIONAL.items():
            value = entry.get(name)
            if value is not None and not valid(value):
                self.fail(f"messages[{i}].{name}", expected, value)


def parse_line(n: int | None, text: bytes) -> tuple[str, Any, bool]:
    """``(where, parsed JSON, whether it may hold a NUL)`` of line ``n`` of a jsonl export
    (``n`` None: of a whole json document); ``where`` starts the document's errors."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        at = "" if n is None else f"line {n}: "
        raise BadExport(f"{at}not a json or jsonl export ({exc})") from None
    return ("" if n is None else f"line {n}: "), doc, _NUL_ESCAPE in text


def _lines(source: BinaryIO) -> Iterator[tuple[str, Any]]:
    """``(where, parsed JSON)`` of each document of a json or jsonl export: a jsonl file line
    by line, a json document (a pretty-printed one: its first line is ``{`` alone) whole."""
    n = 0
    for raw in source:
        n += 1
        line = raw.removeprefix(b"\xef\xbb\xbf") if n == 1 else raw  # a UTF-8 byte-order mark
        if line.isspace() or not line:
            continue
        if len(line) < 16 and line.strip() == b"{":
            where, doc, _ = parse_line(None, line + source.read())
            yield where, doc
            return
        where, doc, _ = parse_line(n, line)
        yield where, doc


# JSON can only write a NUL in a string escaped (orjson refuses the character itself): a
# document without this holds none.
_NUL_ESCAPE = b"\\u0000"


def read_documents(data: bytes) -> list[dict[str, Any]]:
    """The chat documents of a ``json`` or ``jsonl`` export, validated, with what they leave
    out filled in (defaults; prefix hashes, head, title and times derived). Raises
    :class:`BadExport` naming the line (of a ``jsonl`` file) and the field."""
    return [DocumentReader(where).document(doc) for where, doc in _lines(io.BytesIO(data))]
