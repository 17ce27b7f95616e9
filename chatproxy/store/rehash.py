"""Recomputing stored prefix hashes after a change of the canonical form (a data migration).

Each chat's messages are read in one query (keyset pagination over chats, so memory stays at
one page of chats), their hashes recomputed parents first with :func:`prefix_hashes`, and only
the rows whose hash changed are written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from tortoise.backends.base.client import BaseDBAsyncClient

from chatproxy.store.batch import Dialect
from chatproxy.store.threading import prefix_hashes

__all__ = ["rehash_messages"]

_CHATS_PER_PAGE = 500


async def rehash_messages(conn: BaseDBAsyncClient) -> int:
    """Bring every message's ``prefix_hash`` to the current canonical form; the number of
    rows changed."""
    d = Dialect(conn)
    changed = 0
    after = ""
    while True:
        _, chats = await conn.execute_query(
            d.sql("SELECT id FROM chats WHERE id > ? ORDER BY id LIMIT ?"),
            [after, _CHATS_PER_PAGE],
        )
        if not chats:
            return changed
        ids = [row[0] for row in chats]
        after = ids[-1]
        marks = ", ".join("?" * len(ids))
        _, rows = await conn.execute_query(
            d.sql(
                "SELECT id, parent_id, data, prefix_hash FROM messages "
                f"WHERE chat_id IN ({marks}) ORDER BY created_at, id"
            ),
            ids,
        )
        updates = _updates(rows)
        if updates:
            await conn.execute_many(
                d.sql("UPDATE messages SET prefix_hash = ? WHERE id = ?"), updates
            )
            changed += len(updates)


def _updates(rows: Sequence[Any]) -> list[list[str]]:
    """``[new hash, id]`` for each row whose hash is not the one its data gives."""
    children: dict[str | None, list[Any]] = {}
    for row in rows:
        children.setdefault(row[1], []).append(row)
    known = {row[0] for row in rows}
    out: list[list[str]] = []
    # Roots: no parent, or a parent outside these chats (never the case, but never lost).
    stack = [
        ("", row)
        for parent, group in children.items()
        if parent is None or parent not in known
        for row in group
    ]
    while stack:
        parent_hash, row = stack.pop()
        data = orjson.loads(row[2]) if isinstance(row[2], str | bytes) else row[2]
        new = prefix_hashes([data if isinstance(data, dict) else {}], parent_hash)[0]
        if new != row[3]:
            out.append([new, row[0]])
        stack.extend((new, child) for child in children.get(row[0], ()))
    return out
