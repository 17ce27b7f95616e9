"""Full-text search over chat titles and message text, on the databases' own indexes.

**The matching rule.** A query is split into terms at white space. A term is a word
(``otter``), a prefix (``ott*``) or a phrase in double quotes (``"sea otter"``, and
``"sea ott"*`` for one ending in a prefix). Words are compared whole and case-insensitively
(accents are kept: ``café`` is not ``cafe``). A chat matches when its title, or one message of
its owner, holds every term. Punctuation separates words, both in the text and in the query:
``x.com`` is the phrase ``"x com"``, ``don't`` is ``"don t"``. A query without any letter or
digit, or with a word longer than :data:`MAX_TOKEN` characters, matches nothing. No character
of a query is an operator of the database's own search syntax (``OR``, ``NEAR``, ``-``, ``:``,
``&``... are words or separators like any other).

**The indexes** (migrations ``0008_search``, ``0010_search_expression`` and
``0013_search_pending``): on SQLite, FTS5 external-content tables ``messages_fts`` (over
``messages.text``) and ``chats_fts`` (over ``chats.title``), keyed by rowid, with the
``unicode61`` tokenizer, whose rows triggers list and the store's writer adds in batches
(:mod:`chatproxy.store.search_index`; a search adds what is listed first); on PostgreSQL, GIN
expression indexes on ``to_tsvector('simple', ...)`` of the text with ASCII punctuation made
blanks (so that the parser never keeps ``x.com`` or ``3.14`` as one word, as FTS5 does not).

**Two plans, chosen per query**, both exact and in the listing's order (``updated_at``
descending, then id). With at most :data:`HITS_BOUND` matching messages and titles in the whole
store, the matches are read from the index and their chats sorted (*hits*). With more, the
owner's chats are walked newest first along ``chats(owner_id, updated_at)`` and each is tested
on its own (*walk*): a common word is found in the first chats of the walk; a walk that finds
too few in its first :data:`WALK_BOUND` chats gives way to the hits plan. On PostgreSQL the
planner's estimate of the matches is asked first (a bounded count of a common word would be
planned as a scan testing every row), and the matches are counted only when it is within the
bound.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from tortoise.backends.base.client import BaseDBAsyncClient

from chatproxy.store.batch import Dialect

__all__ = [
    "HITS_BOUND",
    "MAX_TOKEN",
    "WALK_BOUND",
    "Term",
    "fts5_query",
    "matching_chat_ids",
    "parse",
    "tsquery",
]

HITS_BOUND = 5000  # matching messages and titles up to which the hits plan is taken
WALK_BOUND = 500  # chats a walk tests before it leaves the query to the hits plan
MAX_TOKEN = 256  # longer words are never matched (PostgreSQL indexes none over 2047 bytes)

# What PostgreSQL's text-search parser must see as blanks, as FTS5's unicode61 does: every
# ASCII punctuation character and symbol. The same expression is in migration
# 0010_search_expression, which the indexes are built on.
PG_BLANKS = "[!-/:-@[-`{-~]"


def pg_document(column: str) -> str:
    """The indexed ``tsvector`` expression of ``column`` (as migration 0010 creates it)."""
    return f"to_tsvector('simple', regexp_replace({column}, '{PG_BLANKS}', ' ', 'g'))"


@dataclass(frozen=True, slots=True)
class Term:
    """Tokens that must follow each other in one text; ``prefix``: the last one is a prefix."""

    tokens: tuple[str, ...]
    prefix: bool = False


@lru_cache(maxsize=4096)
def _token_char(ch: str) -> bool:
    # What FTS5's unicode61 keeps in a token: letters, numbers, marks, private use.
    category = unicodedata.category(ch)
    return category[0] in "LNM" or category == "Co"


def _tokens(text: str) -> tuple[str, ...]:
    out: list[str] = []
    start = -1
    for i, ch in enumerate(text):
        if _token_char(ch):
            if start < 0:
                start = i
        elif start >= 0:
            out.append(text[start:i])
            start = -1
    if start >= 0:
        out.append(text[start:])
    return tuple(out)


def parse(q: str) -> list[Term] | None:
    """The terms of a query (see the module's matching rule); ``None`` when it matches
    nothing."""
    terms: list[Term] = []
    i, n = 0, len(q)
    while i < n:
        if q[i] == '"':
            end = q.find('"', i + 1)
            end = n if end < 0 else end
            body, i = q[i + 1 : end], end + 1
            prefix = i < n and q[i] == "*"
            tokens = _tokens(body)
        elif q[i].isspace():
            i += 1
            continue
        else:
            end = i
            while end < n and not q[end].isspace() and q[end] != '"':
                end += 1
            word, i = q[i:end], end
            prefix = word.endswith("*")
            tokens = _tokens(word)
        if tokens:
            terms.append(Term(tokens, prefix))
    if not terms or any(len(t) > MAX_TOKEN for term in terms for t in term.tokens):
        return None
    return terms


def fts5_query(terms: Sequence[Term]) -> str:
    """An FTS5 MATCH expression: every term a quoted string (tokens hold no quote)."""
    return " AND ".join(f'"{" ".join(t.tokens)}"' + ("*" if t.prefix else "") for t in terms)


def tsquery(terms: Sequence[Term], *, phrases: bool = True) -> str:
    """Text for ``to_tsquery('simple', ...)``: quoted lexemes, ``<->`` within a phrase (``&``
    without ``phrases``), ``:*`` for a prefix, ``&`` between terms (tokens hold no quote or
    backslash)."""
    parts = []
    for t in terms:
        lexemes = [f"'{tok}'" for tok in t.tokens]
        if t.prefix:
            lexemes[-1] += ":*"
        parts.append("(" + (" <-> " if phrases else " & ").join(lexemes) + ")")
    return " & ".join(parts)


async def _estimate(conn: BaseDBAsyncClient, sql: str, args: Sequence[Any]) -> int:
    """PostgreSQL's estimate of how many rows ``sql`` returns (planned, not run)."""
    query = f"EXPLAIN (FORMAT JSON) {Dialect(conn).sql(sql)}"
    _, rows = await conn.execute_query(query, list(args))
    plan = rows[0][0]
    plan = orjson.loads(plan) if isinstance(plan, str | bytes) else plan
    return int(plan[0]["Plan"]["Plan Rows"])


Run = Callable[[str, Sequence[Any]], Awaitable[list[Any]]]
_ORDER = " ORDER BY c.updated_at DESC, c.id DESC"


async def _walk(
    run: Run,
    postgres: bool,
    conditions: str,
    params: Sequence[Any],
    match: str,
    match_params: Sequence[Any],
    limit: int,
) -> tuple[list[str], bool]:
    """The walk: chats meeting ``conditions`` newest first, each tested by ``match``, up to the
    :data:`WALK_BOUND`-th chat. Returns the matches and whether they are the answer (``limit``
    found, or every chat tested); else the word, common in the store, is rare in these chats
    and the hits plan answers instead."""
    walked = f"SELECT c.id, c.updated_at FROM chats c WHERE {conditions}{_ORDER}"
    probe = f"{walked} LIMIT 1 OFFSET {WALK_BOUND - 1}"
    if postgres:
        # The bounded walk as a subquery whose match is computed row by row as the outer
        # LIMIT pulls: a range condition instead would let the planner sort every chat in it.
        sql = (
            f"SELECT w.id FROM (SELECT c.id, c.updated_at, {match} AS hit FROM chats c "
            f"WHERE {conditions}{_ORDER} LIMIT {WALK_BOUND}) w WHERE w.hit "
            f"ORDER BY w.updated_at DESC, w.id DESC LIMIT {int(limit)}"
        )
        found = [row[0] for row in await run(sql, [*match_params, *params])]
        if len(found) == limit:
            return found, True
        return found, not await run(probe, params)
    # SQLite walks the index in order whatever the range, and never sorts the whole of it.
    last = await run(probe, params)
    bound = " AND (c.updated_at > ? OR (c.updated_at = ? AND c.id >= ?))" if last else ""
    bound_params = [last[0][1], last[0][1], last[0][0]] if last else []
    sql = (
        f"SELECT c.id FROM chats c WHERE {conditions}{bound} AND {match}{_ORDER} LIMIT {int(limit)}"
    )
    found = [row[0] for row in await run(sql, [*params, *bound_params, *match_params])]
    return found, len(found) == limit or not last


async def matching_chat_ids(
    conn: BaseDBAsyncClient,
    owner_id: str | None,
    where: Sequence[str],
    params: Sequence[Any],
    terms: Sequence[Term],
    limit: int,
) -> list[str]:
    """Up to ``limit`` ids of chats (alias ``c``) meeting the ``where`` conditions (``?``
    placeholders, ``params``) whose title or one of whose owner's messages matches ``terms``,
    newest ``updated_at`` first, then by id. ``owner_id`` ``None``: every user's chats."""
    dialect = Dialect(conn)
    postgres = dialect.postgres
    if postgres:
        query = tsquery(terms)
        # Counted without positions, which GIN answers without reading each row again: at
        # least as many as match, so the hits plan never rechecks more than its bound.
        counted = tsquery(terms, phrases=False)
        message_match = f"{pg_document('m.text')} @@ to_tsquery('simple', ?)"
        title_match = f"{pg_document('c.title')} @@ to_tsquery('simple', ?)"
        hits_sql = (
            f"SELECT count(*) FROM (SELECT 1 FROM messages m WHERE {message_match} LIMIT ?) h"
        )
        title_hits_sql = (
            f"SELECT count(*) FROM (SELECT 1 FROM chats c WHERE {title_match} LIMIT ?) h"
        )
    else:
        query = counted = fts5_query(terms)
        message_match = (
            "EXISTS (SELECT 1 FROM messages_fts WHERE messages_fts MATCH ? "
            "AND messages_fts.rowid = m.rowid)"
        )
        title_match = (
            "EXISTS (SELECT 1 FROM chats_fts WHERE chats_fts MATCH ? AND chats_fts.rowid = c.rowid)"
        )
        hits_sql = (
            "SELECT count(*) FROM (SELECT 1 FROM messages_fts WHERE messages_fts MATCH ? LIMIT ?)"
        )
        title_hits_sql = (
            "SELECT count(*) FROM (SELECT 1 FROM chats_fts WHERE chats_fts MATCH ? LIMIT ?)"
        )

    async def run(sql: str, args: Sequence[Any]) -> list[Any]:
        _, rows = await conn.execute_query(dialect.sql(sql), list(args))
        return list(rows)

    mine = "m.user_id = ? AND " if owner_id is not None else ""
    owner = [owner_id] if owner_id is not None else []
    count = 0
    if postgres:
        # The planner's estimate first: a bounded count of a common word would be planned as
        # a scan testing every row until the bound is reached (seconds on a large store).
        for table, match in (("messages m", message_match), ("chats c", title_match)):
            count += await _estimate(conn, f"SELECT 1 FROM {table} WHERE {match}", [counted])
    if count <= HITS_BOUND:
        count = (await run(hits_sql, [counted, HITS_BOUND + 1]))[0][0]
        if count <= HITS_BOUND:
            count += (await run(title_hits_sql, [counted, HITS_BOUND + 1 - count]))[0][0]
    order = f"{_ORDER} LIMIT {int(limit)}"
    conditions = " AND ".join(where) or "1 = 1"
    if count > HITS_BOUND:
        found_ids, complete = await _walk(
            run,
            postgres,
            conditions,
            params,
            f"({title_match} OR EXISTS ("
            f"SELECT 1 FROM messages m WHERE m.chat_id = c.id AND {mine}{message_match}"
            f"{' OFFSET 0' if postgres else ''}))",
            [query, *owner, query],
            limit,
        )
        if complete:
            return found_ids
    # Hits: every matching message and title, their chats, then the filters and the order.
    if postgres:
        found = (
            f"SELECT m.chat_id FROM messages m WHERE {mine}{message_match} "
            f"UNION SELECT c.id FROM chats c WHERE {title_match}"
        )
    else:
        found = (
            "SELECT m.chat_id FROM messages_fts CROSS JOIN messages m "
            f"ON m.rowid = messages_fts.rowid WHERE {mine}messages_fts MATCH ? "
            "UNION SELECT c.id FROM chats_fts CROSS JOIN chats c "
            "ON c.rowid = chats_fts.rowid WHERE chats_fts MATCH ?"
        )
    join = "JOIN" if postgres else "CROSS JOIN"  # SQLite: in this order
    sql = (
        f"SELECT c.id FROM ({found}) hit {join} chats c ON c.id = hit.chat_id "
        f"WHERE {conditions}{order}"
    )
    return [row[0] for row in await run(sql, [*owner, query, query, *params])]
