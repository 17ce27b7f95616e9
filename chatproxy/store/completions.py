"""Stored completions (SPEC §4): the reads and writes behind ``/v1/chat/completions/{id}``.

A **stored completion** is an assistant message the proxy generated itself: role
``assistant`` and an ``instance_id`` (an assistant message a client sent back inside its
history has none: it was not generated here). Its id is the message id; its request messages
are the message's ancestors, oldest first.

Its metadata is ``Message.metadata`` once set through the API; before that, the ``metadata``
the client sent with the request (kept in ``Message.params``), as OpenAI's
``create(store=True, metadata=...)`` does. Listing filters on the same value's text-valued
pairs, kept in a table by triggers (migration ``0014_completion_metadata``) and walked in the
listing's order from the first pair.

Reads run through :meth:`Store.read`, writes through :meth:`Store.write` (one transaction in
the writer task); a write checks ownership again inside its transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chatproxy.ids import storable_message_id
from chatproxy.store.batch import Dialect
from chatproxy.store.models import Chat, Message
from chatproxy.store.purge import purge_messages, subtree
from chatproxy.store.store import Store, utcnow

__all__ = [
    "Page",
    "UnknownCursor",
    "completion_metadata",
    "delete_completion",
    "get_completion",
    "list_completions",
    "request_messages",
    "update_metadata",
]

_CHUNK = 500  # ids per IN (...) list


@dataclass(slots=True, frozen=True)
class Page:
    """One page of a list, and whether more follow it."""

    items: list[Message]
    has_more: bool


class UnknownCursor(LookupError):
    """The ``after`` of a list is not an item of that list."""


def completion_metadata(message: Message) -> dict[str, str]:
    """The completion's metadata: set through the API, else sent with the request."""
    if message.metadata is not None:
        return dict(message.metadata)
    sent = (message.params or {}).get("metadata")
    if isinstance(sent, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in sent.items()
    ):
        return dict(sent)
    return {}


def _completions(**filters: Any) -> Any:
    return Message.filter(role="assistant", instance_id__not_isnull=True, **filters)


async def get_completion(store: Store, completion_id: str) -> tuple[Message, Chat] | None:
    """The stored completion and its chat, whoever owns it."""
    if not storable_message_id(completion_id):
        return None

    async def read() -> tuple[Message, Chat] | None:
        message = await _completions(id=completion_id).first()
        if message is None:
            return None
        chat = await Chat.get_or_none(id=message.chat_id)
        return None if chat is None else (message, chat)

    return await store.read(read)


def _list_query(
    d: Dialect,
    user_id: str,
    model: str | None,
    metadata: Mapping[str, str],
    after: str | None,
    descending: bool,
    limit: int,
) -> tuple[str, list[Any]]:
    pairs = list(metadata.items())
    source, order = "messages AS m", ("m.created_at", "m.id")
    where = ["m.user_id = ?", "m.role = 'assistant'", "m.instance_id IS NOT NULL"]
    params: list[Any] = [user_id]
    if pairs:
        # The first pair's entries of completion_metadata (migration 0014), walked in the
        # listing's order along its index; the other pairs are tested on each.
        (key, value), pairs = pairs[0], pairs[1:]
        # CROSS JOIN: SQLite takes the tables in this order (PostgreSQL has no such join).
        join = "JOIN" if d.postgres else "CROSS JOIN"
        source = f"completion_metadata AS cm {join} messages AS m ON m.id = cm.message_id"
        order = ("cm.created_at", "cm.message_id")
        where = ["cm.user_id = ?", "cm.key = ?", "cm.value = ?", *where[1:]]
        params = [user_id, key, value]
    if model is not None:
        where.append("m.model = ?")
        params.append(model)
    for key, value in pairs:
        where.append(
            "EXISTS (SELECT 1 FROM completion_metadata AS p WHERE p.message_id = m.id "
            "AND p.key = ? AND p.value = ?)"
        )
        params += [key, value]
    if after is not None:
        where.append(
            f"({order[0]}, {order[1]}) {'<' if descending else '>'} "
            "(SELECT c.created_at, c.id FROM messages AS c WHERE c.id = ?)"
        )
        params.append(after)
    direction = "DESC" if descending else "ASC"
    query = (
        f"SELECT m.id FROM {source} WHERE {' AND '.join(where)} "
        f"ORDER BY {order[0]} {direction}, {order[1]} {direction} LIMIT ?"
    )
    return d.sql(query), [*params, limit + 1]


async def list_completions(
    store: Store,
    user_id: str,
    *,
    model: str | None = None,
    metadata: Mapping[str, str] | None = None,
    after: str | None = None,
    limit: int = 20,
    descending: bool = False,
) -> Page:
    """A page of the user's completions by creation time (then id), after ``after`` in that
    order; raises :class:`UnknownCursor` when ``after`` is not one of the user's completions."""

    if after is not None and not storable_message_id(after):
        raise UnknownCursor(after)

    async def read() -> Page:
        if after is not None and not await _completions(id=after, user_id=user_id).exists():
            raise UnknownCursor(after)
        conn = Message._meta.db
        query, params = _list_query(
            Dialect(conn), user_id, model, metadata or {}, after, descending, limit
        )
        _, rows = await conn.execute_query(query, params)
        ids = [row[0] for row in rows]
        found = {m.id: m for m in await Message.filter(id__in=ids[:limit])}
        return Page([found[i] for i in ids[:limit] if i in found], len(ids) > limit)

    return await store.read(read)


async def request_messages(
    store: Store, message: Message, *, after: str | None, limit: int, descending: bool
) -> Page:
    """A page of the messages ``message`` answered (its ancestors), oldest first unless
    ``descending``; raises :class:`UnknownCursor` when ``after`` is not one of them."""

    async def read() -> list[Message]:
        parents = dict(await Message.filter(chat_id=message.chat_id).values_list("id", "parent_id"))
        chain: list[str] = []
        current = message.parent_id
        while current is not None and current in parents and current not in chain:
            chain.append(current)
            current = parents[current]
        chain.reverse()
        found = {m.id: m for m in await Message.filter(id__in=chain)}
        return [found[i] for i in chain if i in found]

    messages = await store.read(read)
    if descending:
        messages.reverse()
    start = 0
    if after is not None:
        ids = [m.id for m in messages]
        if after not in ids:
            raise UnknownCursor(after)
        start = ids.index(after) + 1
    return Page(messages[start : start + limit], len(messages) > start + limit)


async def update_metadata(
    store: Store, completion_id: str, user_id: str, metadata: dict[str, str]
) -> Message | None:
    """Replace the metadata of the user's completion; ``None`` when there is no such one."""

    async def write() -> Message | None:
        changed = await _completions(id=completion_id, user_id=user_id).update(metadata=metadata)
        return await Message.get(id=completion_id) if changed else None

    return await store.write(write)


def _newest_leaf(rows: list[tuple[str, str | None, Any]]) -> str | None:
    parents = {parent_id for _, parent_id, _ in rows}
    leaves = [(created_at, message_id) for message_id, _, created_at in rows]
    leaves = [leaf for leaf in leaves if leaf[1] not in parents]
    return max(leaves)[1] if leaves else None


async def delete_completion(store: Store, completion_id: str, user_id: str) -> bool:
    """Delete the user's completion, everything that continues from it, and their votes, in
    short batches; the chat's head moves to the newest leaf left (first, so that it never
    points at a message about to go). ``False`` when there is no such completion."""

    async def write() -> list[str] | None:
        message = await _completions(id=completion_id, user_id=user_id).first()
        if message is None:
            return None
        rows = await Message.filter(chat_id=message.chat_id).values_list(
            "id", "parent_id", "created_at", "depth"
        )
        doomed = subtree(message.id, {mid: parent_id for mid, parent_id, _, _ in rows})
        chat = await Chat.get(id=message.chat_id)
        head = chat.head_id
        if head is None or head in doomed:
            head = _newest_leaf([row[:3] for row in rows if row[0] not in doomed])
        await Chat.filter(id=chat.id).update(head_id=head, updated_at=utcnow())
        depths = {mid: depth for mid, _, _, depth in rows}
        return sorted(doomed, key=lambda mid: -depths[mid])

    doomed = await store.write(write)
    if doomed is None:
        return False
    await purge_messages(store, doomed)
    return True
