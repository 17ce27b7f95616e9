"""SQLite's full-text indexes, brought up to date behind the writes rather than inside them.

FTS5 pays a fixed cost per transaction that adds to an index: it writes a new segment, its
structure record and its averages, and merges segments as they pile up. Added by the triggers
in each request's own commits, that was about a quarter of the store's pages written per
request (~6 of ~24) and ~0.15 ms of CPU. Now the triggers (migration ``0013_search_pending``)
only note the rowid of a final message or a chat in ``messages_fts_pending`` /
``chats_fts_pending``, and the store's writer adds the noted rows to the indexes in
:data:`STEP`-row statements, every :data:`EVERY` seconds while rows wait, and before every
search (so a search finds everything committed before it). Rows that leave or change before
they are indexed are only taken off the list; the index itself is only told of rows it holds.

PostgreSQL's indexes are expression indexes, kept by the database; none of this applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["EVERY", "FLUSH", "PENDING", "STEP", "WAITING"]

# (content table, indexed column): the two indexes of chatproxy.store.search.
INDEXED = (("messages", "text"), ("chats", "title"))
PENDING = tuple(f"{table}_fts_pending" for table, _ in INDEXED)
STEP = 256  # rows per index per writer turn: about 4 ms of FTS5 work
EVERY = 0.5  # seconds between two looks at the lists


def _waiting_query() -> str:
    counts = ", ".join(f"(SELECT count(*) FROM (SELECT 1 FROM {p} LIMIT {STEP}))" for p in PENDING)
    return f"SELECT max({counts})"


def _flush_statements() -> list[tuple[str, list[Sequence[Any]]]]:
    out: list[tuple[str, list[Sequence[Any]]]] = []
    for table, column in INDEXED:
        first = f"SELECT id FROM {table}_fts_pending ORDER BY id LIMIT ?"
        out.append(
            (
                f"INSERT INTO {table}_fts(rowid, {column}) "
                f"SELECT rowid, {column} FROM {table} WHERE rowid IN ({first})",
                [[STEP]],
            )
        )
        out.append((f"DELETE FROM {table}_fts_pending WHERE id IN ({first})", [[STEP]]))
    return out


# One row: how many rows the longer list holds, counted up to STEP.
WAITING = _waiting_query()
# (statement, rows) pairs that index the first STEP waiting rows of each list and take them
# off it (inside the writer's transaction).
FLUSH = _flush_statements()
