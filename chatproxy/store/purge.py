"""Deleting many messages without holding the writer: bounded batches, leaves first.

Every delete of history (a chat, a message and what follows it, a stored completion, a prune)
goes through here. Each batch is one short :meth:`Store.write` transaction of at most
``PURGE_BATCH`` messages, so a request's first write waits behind one batch at most, never
behind a whole 10,000-message chat.

Messages go leaves first (deepest, or for whole chats newest, first: a reply is never older
than what it answers, and the chat's (chat_id, created_at) index gives that order without a
sort): nothing outside a batch hangs below it. On SQLite each batch also cuts its messages'
parent links before it deletes them: the ``parent_id`` foreign key cascades row by row there,
and a cascade that walks a branch one message at a time stops at SQLite's trigger depth ("too
many levels of trigger recursion"). PostgreSQL checks the key once the statement is done, when
the batch's children are gone already; there the update would only cost a new version of
every row, re-indexed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from functools import partial

from chatproxy.store.db import WRITER_GAP
from chatproxy.store.models import Chat, Message, Vote
from chatproxy.store.outbox import chats_deleted
from chatproxy.store.store import Store

__all__ = ["PURGE_BATCH", "purge_chats", "purge_messages", "subtree"]

PURGE_BATCH = 100  # messages per transaction: 10 to 25 ms of writer time on a large store
CHATS_PER_ROUND = 200  # chats whose messages one round looks at (a prune of many small chats)


async def _delete(ids: Sequence[str]) -> None:
    """Delete these messages and their votes (inside the caller's transaction)."""
    await Vote.filter(message_id__in=ids).delete()
    if Message._meta.db.capabilities.dialect == "sqlite":
        await Message.filter(id__in=ids).update(parent_id=None)
    await Message.filter(id__in=ids).delete()


async def _gap() -> None:
    # Between two batches: another process waiting for the write lock (a server beside the
    # CLI's prune) takes it now.
    await asyncio.sleep(WRITER_GAP)


async def purge_messages(store: Store, ids: Sequence[str]) -> None:
    """Delete the messages ``ids`` (given deepest first) and their votes, in batches."""
    for i in range(0, len(ids), PURGE_BATCH):
        if i:
            await _gap()
        await store.write(partial(_delete, ids[i : i + PURGE_BATCH]))


async def _chats_batch(store: Store, chats: Sequence[str]) -> int | None:
    """One batch of the chats' messages, newest first; once none is left, the chats
    themselves (how many there were), with their ``chat.deleted`` events when plugins take
    events."""
    ids = (
        await Message.filter(chat_id__in=chats)
        .order_by("-created_at")
        .limit(PURGE_BATCH)
        .values_list("id", flat=True)
    )
    if ids:
        await _delete(ids)
        return None
    await Vote.filter(chat_id__in=chats).delete()
    # Counted before: a delete's own count takes in what triggers (the search index) change.
    there = await Chat.filter(id__in=chats).count()
    if store.events and there:
        await chats_deleted(chats)
        store.events_written()
    await Chat.filter(id__in=chats).delete()
    return there


async def purge_chats(store: Store, chat_ids: Sequence[str]) -> int:
    """Delete these chats with every message and vote of theirs, in batches; how many chats
    there were. A message added to one of them meanwhile goes with it."""
    deleted = 0
    for i in range(0, len(chat_ids), CHATS_PER_ROUND):
        round_ = partial(_chats_batch, store, chat_ids[i : i + CHATS_PER_ROUND])
        while (n := await store.write(round_)) is None:
            await _gap()
        deleted += n
        await _gap()
    return deleted


def subtree(root: str, parents: Mapping[str, str | None]) -> set[str]:
    """``root`` and every message below it, from the chat's ``{id: parent_id}``."""
    children: dict[str, list[str]] = {}
    for mid, parent_id in parents.items():
        if parent_id is not None:
            children.setdefault(parent_id, []).append(mid)
    doomed: set[str] = set()
    stack = [root]
    while stack:
        mid = stack.pop()
        if mid not in doomed:
            doomed.add(mid)
            stack += children.get(mid, [])
    return doomed
