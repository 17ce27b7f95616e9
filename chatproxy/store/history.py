"""The management API's queries and writes (SPEC §4): chats, their branches, votes.

Used by the HTTP endpoints (:mod:`chatproxy.faces.history.conversations`) and by the CLI. Reads run
through :meth:`Store.read`; every write is one :meth:`Store.write` call, so it runs in the
writer task, after every write queued before it, in one transaction. A write re-reads what it
depends on (the chat's head, the message tree) inside that transaction, and answers ``None``
or ``False`` when the chat or message is gone instead of raising in the writer.

The **active branch** of a chat is the path from its root to ``Chat.head_id`` along
``parent_id``; a chat's ``message_count`` is the length of that branch.

Listing is newest ``updated_at`` first, ties broken by id (descending), so the order is total
and an ``after`` cursor (a chat id) names a fixed position: chats that become newer go to the
front and never shift the pages after it. ``updated_at`` moves when messages are added or
deleted, not when the title, metadata or visibility change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from chatproxy.ids import new_chat_id, new_message_id, storable_message_id, unknown_id
from chatproxy.store import metadata_index, outbox, search
from chatproxy.store.batch import Dialect
from chatproxy.store.models import Chat, Message, Status, Vote
from chatproxy.store.purge import purge_chats, purge_messages, subtree
from chatproxy.store.store import Store, utcnow
from chatproxy.store.threading import (
    TITLE_LENGTH,
    default_title,
    message_text,
    prefix_hashes,
)
from chatproxy.store.threading import replayable as _replayable

__all__ = [
    "TITLE_LENGTH",
    "ChatView",
    "append_messages",
    "branch",
    "chat_tree",
    "chat_view",
    "create_chat",
    "default_title",
    "delete_chat",
    "delete_message",
    "list_chats",
    "message_count",
    "replayable",
    "set_vote",
    "update_chat",
]


@dataclass(slots=True, frozen=True)
class ChatView:
    """A chat and the length of its active branch."""

    chat: Chat
    message_count: int


def _walk(parents: Mapping[str, str | None], head_id: str | None) -> list[str]:
    """The ids from the root to ``head_id`` (a cycle, which should never exist, stops it)."""
    path: list[str] = []
    seen: set[str] = set()
    current = head_id
    while current is not None and current in parents and current not in seen:
        seen.add(current)
        path.append(current)
        current = parents[current]
    path.reverse()
    return path


def branch(messages: Iterable[Message], head_id: str | None) -> list[Message]:
    """The active branch of a chat's ``messages``: root first, ``head_id`` last."""
    by_id = {m.id: m for m in messages}
    return [by_id[i] for i in _walk({m.id: m.parent_id for m in by_id.values()}, head_id)]


def replayable(m: Message) -> bool:
    """Whether a stored message belongs in history sent back upstream."""
    return _replayable(m.role, m.status, m.data)


# -- reads -----------------------------------------------------------------------------------


async def _counts(chats: Sequence[Chat]) -> dict[str, int]:
    # A chat's count is kept: its head's depth (one primary-key read per chat).
    heads = [c.head_id for c in chats if c.head_id is not None]
    depths = dict(await Message.filter(id__in=heads).values_list("id", "depth")) if heads else {}
    return {c.id: depths.get(c.head_id, 0) if c.head_id else 0 for c in chats}


async def chat_view(store: Store, chat_id: str) -> ChatView | None:
    """The chat with its message count, or ``None`` when it does not exist."""
    chat = await store.get_chat(chat_id)
    return ChatView(chat, await message_count(store, chat)) if chat is not None else None


async def message_count(store: Store, chat: Chat) -> int:
    """The length of the chat's active branch."""
    return (await store.read(lambda: _counts([chat])))[chat.id]


async def chat_tree(store: Store, chat_id: str) -> list[Message]:
    """Every message of a chat, every branch, oldest first."""
    return await store.read(lambda: Message.filter(chat_id=chat_id).order_by("created_at", "id"))


async def list_chats(
    store: Store,
    owner_id: str | None,
    *,
    limit: int,
    after: str | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    q: str | None = None,
) -> tuple[list[ChatView], bool]:
    """One page of the owner's chats, newest ``updated_at`` first, and whether more follow.

    ``after`` is the id of a chat of this owner (the last one of the previous page); an
    unknown or foreign id raises :class:`~chatproxy.errors.InvalidRequest`
    (``invalid_cursor``). ``metadata``
    pairs must all match; ``q`` is a full-text query (:mod:`chatproxy.store.search`) that the
    title or one of the owner's messages must match.
    """
    d = Dialect(store.conn)
    # No owner: every user's chats (the operator's view, from the CLI).
    where = ["c.owner_id = ?"] if owner_id is not None else ["1 = 1"]
    params: list[Any] = [owner_id] if owner_id is not None else []
    if after is not None:
        cursor_sql = "SELECT updated_at FROM chats WHERE id = ?"
        cursor_params: list[Any] = [after]
        if owner_id is not None:
            cursor_sql += " AND owner_id = ?"
            cursor_params.append(owner_id)
        _, rows = await store.read(
            lambda: store.conn.execute_query(d.sql(cursor_sql), cursor_params)
        )
        if not rows:
            raise unknown_id(after, what="cursor", param="after")
        # The stored value itself, so the comparison is exact in every dialect.
        where.append("(c.updated_at < ? OR (c.updated_at = ? AND c.id < ?))")
        params += [rows[0][0], rows[0][0], after]
    pairs = list(metadata)
    terms = search.parse(q) if q else None
    if q and terms is None:
        return [], False  # nothing to look for: no word (or one too long to be indexed)
    if terms is not None:
        await store.index_search()

    async def op() -> tuple[list[ChatView], bool]:
        if terms is not None:
            tests, values = metadata_index.filters(d, pairs)
            found = await search.matching_chat_ids(
                store.conn, owner_id, where + tests, params + values, terms, limit + 1
            )
        else:
            p = await metadata_index.plan(store.conn, d, pairs) if pairs else None
            source, conditions = (p.source, where + p.conditions) if p else ("chats c", where)
            query = (
                f"SELECT c.id FROM {source} WHERE {' AND '.join(conditions)} "
                "ORDER BY c.updated_at DESC, c.id DESC LIMIT ?"
            )
            args = [*p.source_params, *params, *p.params] if p else params
            _, rows = await store.conn.execute_query(d.sql(query), [*args, limit + 1])
            found = [row[0] for row in rows]
        ids = found[:limit]
        by_id = {c.id: c for c in await Chat.filter(id__in=ids)}
        chats = [by_id[i] for i in ids if i in by_id]
        counts = await _counts(chats)
        return [ChatView(c, counts[c.id]) for c in chats], len(found) > limit

    return await store.read(op)


# -- writes ----------------------------------------------------------------------------------


def _new_messages(
    chat_id: str,
    user_id: str,
    parent: Message | None,
    parent_hash: str,
    datas: Sequence[dict[str, Any]],
) -> list[Message]:
    """Rows for ``datas`` chained under ``parent``, hashed so that a client that resends this
    history later threads into it (SPEC §3.4)."""
    now = utcnow()
    parent_id = parent.id if parent is not None else None
    depth = parent.depth if parent is not None else 0
    rows = []
    for i, (data, h) in enumerate(zip(datas, prefix_hashes(datas, parent_hash), strict=True)):
        m = Message(
            id=new_message_id(),
            chat_id=chat_id,
            parent_id=parent_id,
            user_id=user_id,
            role=data["role"],
            text=message_text(data.get("content")),
            data=data,
            prefix_hash=h,
            depth=depth + i + 1,
            status=Status.COMPLETED,
            # One microsecond apart, so that "oldest first" keeps their order.
            created_at=now + timedelta(microseconds=i),
            completed_at=now,
        )
        rows.append(m)
        parent_id = m.id
    return rows


async def create_chat(
    store: Store,
    owner_id: str,
    messages: Sequence[dict[str, Any]] = (),
    *,
    title: str | None = None,
    visibility: str = "private",
    metadata: dict[str, str] | None = None,
) -> ChatView:
    """A new chat of ``owner_id`` holding ``messages`` (chat-completions dicts) as one
    branch."""
    chat_id = new_chat_id()
    rows = _new_messages(chat_id, owner_id, None, "", messages)
    if store.rewriter is not None:
        for m in rows:
            store.rewriter.stored(owner_id, chat_id, m)
        if title is not None and title == default_title(messages):
            title = default_title(m.data for m in rows)

    async def op() -> Chat:
        now = utcnow()
        chat = await Chat.create(
            id=chat_id,
            owner_id=owner_id,
            title=title,
            visibility=visibility,
            metadata=metadata or {},
            head_id=rows[-1].id if rows else None,
            created_at=now,
            updated_at=now,
        )
        if rows:
            await Message.bulk_create(rows)
        if store.events:
            created = outbox.event_row(
                "chat.created", owner_id, chat_id, None, {"title": title}, outbox.now_ms()
            )
            await outbox.write_events([created])
            store.events_written()
        return chat

    return ChatView(await store.write(op), len(rows))


async def update_chat(store: Store, chat_id: str, changes: dict[str, Any]) -> ChatView | None:
    """Set some of ``title``, ``metadata`` (replaced whole) and ``visibility``."""

    async def op() -> int:
        return await Chat.filter(id=chat_id).update(**changes) if changes else 1

    if not await store.write(op):
        return None
    return await chat_view(store, chat_id)


async def delete_chat(store: Store, chat_id: str) -> bool:
    """Delete a chat with every message and vote of it, in short batches; ``False`` if there
    was none."""
    return bool(await purge_chats(store, [chat_id]))


async def _head_hash(chat: Chat, head: Message) -> str:
    if head.prefix_hash:
        return head.prefix_hash
    # An unfinished or interrupted answer has no hash yet: hash the branch as it is stored.
    messages = await Message.filter(chat_id=chat.id)
    return prefix_hashes([m.data for m in branch(messages, head.id)])[-1]


async def append_messages(
    store: Store, chat_id: str, messages: Sequence[dict[str, Any]]
) -> list[Message] | None:
    """Append ``messages`` (chat-completions dicts) to the chat's active branch; they become
    its new head. ``None`` when the chat does not exist."""

    async def op() -> list[Message] | None:
        chat = await Chat.get_or_none(id=chat_id)
        if chat is None:
            return None
        head = await Message.get_or_none(id=chat.head_id) if chat.head_id else None
        parent_hash = await _head_hash(chat, head) if head is not None else ""
        rows = _new_messages(chat_id, chat.owner_id, head, parent_hash, messages)
        if store.rewriter is not None:
            for m in rows:
                store.rewriter.stored(chat.owner_id, chat_id, m)
        if rows:
            await Message.bulk_create(rows)
            await Chat.filter(id=chat_id).update(head_id=rows[-1].id, updated_at=utcnow())
        return rows

    return await store.write(op)


async def delete_message(store: Store, chat_id: str, message_id: str) -> ChatView | None:
    """Delete a message and every message below it (all their branches) with their votes.
    When that removes the head, the head moves to the deleted message's parent. ``None`` when
    the message is not in that chat."""

    async def op() -> tuple[ChatView, list[str]] | None:
        chat = await Chat.get_or_none(id=chat_id)
        if chat is None:
            return None
        rows = await Message.filter(chat_id=chat_id).values_list("id", "parent_id", "depth")
        parents: dict[str, str | None] = {mid: parent_id for mid, parent_id, _ in rows}
        if message_id not in parents:
            return None
        doomed = subtree(message_id, parents)
        # The head moves first: the chat never points at a message about to go.
        if chat.head_id in doomed:
            chat.head_id = parents[message_id]
        chat.updated_at = utcnow()
        await chat.save(update_fields=["head_id", "updated_at"])
        depths = {mid: depth for mid, _, depth in rows}
        deepest_first = sorted(doomed, key=lambda mid: -depths[mid])
        return ChatView(chat, depths.get(chat.head_id, 0) if chat.head_id else 0), deepest_first

    done = await store.write(op)
    if done is None:
        return None
    view, doomed = done
    await purge_messages(store, doomed)
    return view


async def set_vote(store: Store, chat_id: str, message_id: str, user_id: str, up: bool) -> bool:
    """Record ``user_id``'s vote on a message of the chat, replacing an earlier one; ``False``
    when the message is not in that chat."""
    if not storable_message_id(message_id):
        return False

    async def op() -> bool:
        if not await Message.exists(id=message_id, chat_id=chat_id):
            return False
        now = utcnow()
        updated = await Vote.filter(message_id=message_id, user_id=user_id).update(
            up=up, created_at=now
        )
        if not updated:
            await Vote.create(
                message_id=message_id, chat_id=chat_id, user_id=user_id, up=up, created_at=now
            )
        return True

    return bool(await store.write(op))
