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

**The indexes** (migration ``0008_search``), kept in step by the databases themselves, so that
no writer needs to know: on SQLite, FTS5 external-content tables ``messages_fts`` (over
``messages.text``) and ``chats_fts`` (over ``chats.title``), keyed by rowid, with the
``unicode61`` tokenizer, updated by triggers; on PostgreSQL, GIN expression indexes on
``to_tsvector('simple', ...)`` of the text with ASCII punctuation made blanks (so that the
parser never keeps ``x.com`` or ``3.14`` as one word, as FTS5 does not).

**Two plans, chosen per query**, both exact and in the listing's order (``updated_at``
descending, then id). With at most :data:`HITS_BOUND` matching messages and titles in the whole
store, the matches are read from the index and their chats sorted (*hits*). With more, the
owner's chats are walked newest first along ``chats(owner_id, updated_at)`` and each is tested
on its own (*walk*): a common word is found in the first chats of the walk.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient

__all__ = ["HITS_BOUND", "MAX_TOKEN", "Term", "fts5_query", "matching_chat_ids", "parse", "tsquery"]

HITS_BOUND = 5000  # matching messages and titles up to which the hits plan is taken
MAX_TOKEN = 256  # longer words are never matched (PostgreSQL indexes none over 2047 bytes)

# What PostgreSQL's text-search parser must see as blanks, as FTS5's unicode61 does: every
# ASCII punctuation character and symbol but '?' (a placeholder here; the parser splits at it
# anyway). The same expression is in migration 0008_search, which the indexes are built on.
PG_BLANKS = "!\"#$%&''()*+,-./:;<=>@[\\]^_`{|}~"
PG_TEXT = "to_tsvector('simple', translate({column}, '{blanks}', '{spaces}'))"


def pg_document(column: str) -> str:
    """The indexed ``tsvector`` expression of ``column`` (as migration 0008 creates it)."""
    return PG_TEXT.format(column=column, blanks=PG_BLANKS, spaces=" " * (len(PG_BLANKS) - 1))


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


def _numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2...`` (no ``?`` appears otherwise)."""
    parts = sql.split("?")
    return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))


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
    postgres = conn.capabilities.dialect == "postgres"
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
        _, rows = await conn.execute_query(_numbered(sql) if postgres else sql, list(args))
        return list(rows)

    mine = "m.user_id = ? AND " if owner_id is not None else ""
    owner = [owner_id] if owner_id is not None else []
    count = (await run(hits_sql, [counted, HITS_BOUND + 1]))[0][0]
    if count <= HITS_BOUND:
        count += (await run(title_hits_sql, [counted, HITS_BOUND + 1 - count]))[0][0]
    order = f" ORDER BY c.updated_at DESC, c.id DESC LIMIT {int(limit)}"
    conditions = " AND ".join(where) or "1 = 1"
    if count <= HITS_BOUND:
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
        args = [*owner, query, query, *params]
    else:
        # Walk: the owner's chats newest first, each tested by its title and its messages.
        # OFFSET 0 keeps PostgreSQL from hashing every match of the subquery first.
        sql = (
            f"SELECT c.id FROM chats c WHERE {conditions} AND ({title_match} OR EXISTS ("
            f"SELECT 1 FROM messages m WHERE m.chat_id = c.id AND {mine}{message_match}"
            f"{' OFFSET 0' if postgres else ''})){order}"
        )
        args = [*params, query, *owner, query]
    return [row[0] for row in await run(sql, args)]
