"""Chats by a metadata pair, on an index: two plans, chosen per query.

The index (migration ``0009_chat_metadata``): on SQLite a table ``chat_metadata(chat_id, key,
value)`` of every chat's text-valued pairs, kept by triggers on ``chats`` (a request's own
writes never touch it: they only move ``updated_at``); on PostgreSQL a GIN index on
``chats.metadata`` (``jsonb_path_ops``) for ``@>``.

On SQLite, with at most :data:`HITS_BOUND` chats holding the pair, those chats are read from the
index and sorted (*hits*: a rare project costs what its chats do). With more, the owner's chats
are walked newest first along ``chats(owner_id, updated_at)`` and each is tested on its own
(*walk*: a common pair is found in the first chats). Both give the listing's exact order. On
PostgreSQL the planner makes the same choice from its statistics (counting the holders first
cost more than either plan).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from tortoise.backends.base.client import BaseDBAsyncClient

from chatproxy.store.batch import Dialect

__all__ = ["HITS_BOUND", "Plan", "filters", "plan"]

HITS_BOUND = 2000  # chats holding the pair up to which the hits plan is taken


@dataclass(frozen=True, slots=True)
class Plan:
    """Where a listing's chats come from (``source``, its ``?`` placeholders bound by
    ``source_params``), and the ``conditions`` the metadata pairs add to its WHERE."""

    source: str
    source_params: list[Any]
    conditions: list[str]
    params: list[Any]


def filters(d: Dialect, pairs: list[tuple[str, str]]) -> tuple[list[str], list[Any]]:
    """Each pair as a test of one chat (alias ``c``), and their parameters. On PostgreSQL a
    containment test, which the planner answers from the index or checks chat by chat,
    whichever its statistics make cheaper."""
    if d.postgres:
        objects = [orjson.dumps({key: value}).decode() for key, value in pairs]
        return ["c.metadata @> ?::jsonb"] * len(pairs), objects
    test = (
        "EXISTS (SELECT 1 FROM json_each(c.metadata) j "
        "WHERE j.key = ? AND j.type = 'text' AND j.value = ?)"
    )
    return [test] * len(pairs), [x for pair in pairs for x in pair]


async def _holders(conn: BaseDBAsyncClient, key: str, value: str) -> int:
    """How many chats hold the pair (SQLite), counted up to ``HITS_BOUND + 1``."""
    sql = "SELECT count(*) FROM (SELECT 1 FROM chat_metadata WHERE key = ? AND value = ? LIMIT ?)"
    _, rows = await conn.execute_query(sql, [key, value, HITS_BOUND + 1])
    return int(rows[0][0])


async def plan(conn: BaseDBAsyncClient, d: Dialect, pairs: list[tuple[str, str]]) -> Plan:
    """The plan for chats holding every pair of ``pairs`` (one at least); the rarest is not
    sought out: the first pair decides."""
    walk, params = filters(d, pairs)
    if d.postgres:  # the planner chooses
        return Plan("chats c", [], walk, params)
    key, value = pairs[0]
    if await _holders(conn, key, value) > HITS_BOUND:
        return Plan("chats c", [], walk, params)
    # CROSS JOIN: SQLite takes the tables in this order (from the index, then each chat).
    source = (
        "(SELECT chat_id FROM chat_metadata WHERE key = ? AND value = ?) hit "
        "CROSS JOIN chats c ON c.id = hit.chat_id"
    )
    return Plan(source, [key, value], walk[1:], params[2:])
