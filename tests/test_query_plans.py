"""Every history operation uses an index: no statement the store runs scans ``messages``,
``votes`` or ``chats`` whole (issue 15).

The test drives every history operation (through the proxy, the CLI and the store API) while
capturing each SQL statement actually executed, on every connection the store opens: on SQLite
with ``sqlite3``'s trace callback (the expanded statement, its parameters inlined) on each
connection ``sqlite3.connect`` makes (aiosqlite's under Tortoise, the store's fast connection,
the WAL checkpointer's); on PostgreSQL by wrapping asyncpg's ``Connection`` methods, parameters
kept. Each captured statement that reads those tables is then explained with the same
parameters: ``EXPLAIN QUERY PLAN`` on SQLite, ``EXPLAIN (FORMAT JSON)`` with
``enable_seqscan = off`` on PostgreSQL (so that a tiny table does not make the planner prefer a
scan: a Seq Scan that remains means no usable index), and hash and merge joins off (nested loops
with a lookup per row, as the planner joins at volume). A statement a later change adds is
covered without touching this test.

Migrations run before the capture starts: they run once, on upgrade, and must read every row.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from click.testing import CliRunner

from chatproxy.appkeys import STORE
from chatproxy.cli import main as cli_main
from chatproxy.server import ProxyServer
from chatproxy.store import maintenance, search
from chatproxy.store.db import sqlite_path
from chatproxy.store.models import Chat, Message, Vote
from chatproxy.store.store import Store, utcnow
from tests.aisdk import full, post_chat, single, user

SETTINGS = {
    "auth.mode": "header",
    "server.trusted_proxies": ["127.0.0.0/8"],
    "limits.ip_rate": "0",
}
TABLES = ("messages", "votes", "chats")
_TEMP = re.compile(r"^\s*CREATE\s+TEMP(?:ORARY)?\s+TABLE\b", re.IGNORECASE)
_EXPLAINED = re.compile(r"^\s*\(?\s*(SELECT|WITH|UPDATE|DELETE|INSERT)\b", re.IGNORECASE)
# A table named in a statement, and the alias SQLite's plan calls it by.
_TABLE = re.compile(r'\b"?(messages|votes|chats)\b"?(?:\s+(?:AS\s+)?"?(\w+)"?)?', re.IGNORECASE)
_NOT_ALIASES = {
    "where", "join", "on", "set", "order", "group", "limit", "inner", "left", "using", "values",
    "select", "union", "and", "or", "returning", "as", "having", "offset", "cross", "natural",
    "outer", "right", "full", "into", "default", "window", "except", "intersect",
}  # fmt: skip

# Statements that may read a table whole, each with the reason. Keep this as short as it can be.
ALLOWED: dict[str, str] = {}


@dataclass
class Capture:
    """The statements executed while ``on``, with their parameters (SQLite: inlined)."""

    on: bool = False
    statements: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        if self.on:
            with self.lock:
                self.statements.append((sql, params))

    def touching(self) -> dict[str, tuple[Any, ...]]:
        """Each distinct statement that reads or writes one of :data:`TABLES` (first
        parameters seen), in order."""
        out: dict[str, tuple[Any, ...]] = {}
        for sql, params in self.statements:
            if sql.lstrip().startswith("--"):  # SQLite's note of a trigger's statements
                continue
            if not _EXPLAINED.match(sql) or not _TABLE.search(sql):
                continue
            if re.match(r"^\s*INSERT\b", sql, re.I) and not re.search(r"\bSELECT\b", sql, re.I):
                continue  # INSERT ... VALUES reads nothing
            out.setdefault(sql, params)
        return out

    def temp_tables(self) -> list[str]:
        """The ``CREATE TEMP TABLE`` statements run (a connection's own tables, which the
        statements explained may join: made again, empty, where they are explained)."""
        made = [sql for sql, _ in self.statements if _TEMP.match(sql)]
        return list(dict.fromkeys(made))


@pytest.fixture
def capture(monkeypatch: pytest.MonkeyPatch, db_url: str) -> Capture:
    """Every statement run on the store's connections (installed before the proxy opens
    them)."""
    found = Capture()
    if sqlite_path(db_url) is not None:
        real_connect = sqlite3.connect

        def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            conn = real_connect(*args, **kwargs)
            conn.set_trace_callback(found.add)
            return conn

        monkeypatch.setattr(sqlite3, "connect", connect)
        return found
    from asyncpg.connection import Connection

    def wrap(name: str) -> None:
        real = getattr(Connection, name)

        def method(self: Connection, query: str, *args: Any, **kwargs: Any) -> Any:
            if name == "executemany":
                rows = list(args[0]) if args else []
                found.add(query, tuple(rows[0]) if rows else ())
                return real(self, query, rows, *args[1:], **kwargs)
            found.add(query, args)
            return real(self, query, *args, **kwargs)

        monkeypatch.setattr(Connection, name, method)

    for name in ("execute", "executemany", "fetch", "fetchrow", "fetchval"):
        wrap(name)
    return found


# -- the plans --------------------------------------------------------------------------------


def _aliases(sql: str) -> dict[str, str]:
    """Plan names (tables and their aliases) of :data:`TABLES` in ``sql``."""
    names: dict[str, str] = {}
    for match in _TABLE.finditer(sql):
        table = match.group(1).lower()
        names[table] = table
        alias = match.group(2)
        if alias and alias.lower() not in _NOT_ALIASES:
            names[alias] = table
    return names


def sqlite_scans(
    path: str, statements: dict[str, tuple[Any, ...]], temp: list[str]
) -> dict[str, list[str]]:
    """For each statement, the plan lines that read one of :data:`TABLES` whole: a ``SCAN``
    of the table, or of a whole index with no ``LIMIT`` to stop the walk."""
    db = sqlite3.connect(path)
    try:
        for sql in temp:
            db.execute(sql)
        scans: dict[str, list[str]] = {}
        for sql in statements:
            names = _aliases(sql)
            limited = re.search(r"\bLIMIT\b", sql, re.IGNORECASE) is not None
            found = []
            for row in db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall():
                detail = row[-1]
                match = re.match(r"SCAN (\w+)\b(.*)$", detail)
                if match is None or match.group(1) not in names:
                    continue
                if "USING" not in match.group(2) or not limited:
                    found.append(f"{detail} (table {names[match.group(1)]})")
            scans[sql] = found
        return scans
    finally:
        db.close()


_PG_INDEXES = """
SELECT i.relname, t.relname, a.attname FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0]
WHERE t.relname = ANY($1::text[])
"""


def _pg_scans(
    node: dict[str, Any], indexes: dict[str, tuple[str, str | None]], limited: bool = False
) -> list[str]:
    """Scans in a plan tree that read one of :data:`TABLES` whole: a Seq Scan; an index scan
    whose condition leaves the index's first column free (the whole index is read); a whole
    index walked in order with no Limit above it."""
    found = []
    kind = node.get("Node Type", "")
    if kind == "Seq Scan" and node.get("Relation Name") in TABLES:
        found.append(f"Seq Scan on {node['Relation Name']} ({node.get('Filter', 'no filter')})")
    elif kind in ("Index Scan", "Index Only Scan", "Bitmap Index Scan"):
        name = node.get("Index Name", "")
        table, first = indexes.get(name, ("", None))
        cond = node.get("Index Cond")
        if table and first is not None:
            if cond is None and not limited:
                found.append(f"{kind} of all of {name} on {table}")
            elif cond is not None and not re.search(rf"\b{first}\b", cond):
                found.append(f"{kind} of all of {name} on {table}: {cond} leaves {first} free")
    limited = limited or kind == "Limit"
    for child in node.get("Plans", ()):
        found += _pg_scans(child, indexes, limited)
    return found


async def postgres_scans(
    url: str, statements: dict[str, tuple[Any, ...]], temp: list[str]
) -> dict[str, list[str]]:
    """For each statement, the whole-table reads of :data:`TABLES` (:func:`_pg_scans`) left
    with ``enable_seqscan`` off."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(_PG_INDEXES, list(TABLES))
        indexes = {r[0]: (r[1], r[2]) for r in rows}
        for sql in temp:  # kept to the session: this one has no transaction to end
            await conn.execute(re.sub(r"\bON\s+COMMIT\s+DROP\b", "", sql, flags=re.I))
        await conn.execute("SET enable_seqscan = off")
        # The import analyzes the tables it grows: on this test's tiny tables, hashing or
        # merging a whole index then looks cheaper than a lookup per row, which the planner
        # takes at volume. With nested loops only, a join without a usable index still shows
        # as a whole read.
        await conn.execute("SET enable_hashjoin = off")
        await conn.execute("SET enable_mergejoin = off")
        scans: dict[str, list[str]] = {}
        for sql, params in statements.items():
            plan = orjson.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *params))
            scans[sql] = _pg_scans(plan[0]["Plan"], indexes)
        return scans
    finally:
        await conn.close()


# -- the operations ---------------------------------------------------------------------------


async def _json(
    http: aiohttp.ClientSession, method: str, url: str, user: str = "alice", **kw: Any
) -> Any:
    async with http.request(method, url, headers={"X-User-Id": user}, **kw) as resp:
        body = await resp.read()
        assert resp.status < 400, (method, url, resp.status, body[:500])
        return orjson.loads(body) if body else None


async def ask(
    http: aiohttp.ClientSession, base: str, messages: list[dict[str, Any]], user: str = "alice"
) -> tuple[str, str]:
    """A stored chat completion: ``(answer's message id, its text)``."""
    body = {"model": "m", "messages": messages, "metadata": {"project": "p1"}, "store": True}
    headers = {"X-User-Id": user}
    async with http.post(f"{base}/chat/completions", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
        return resp.headers["X-Message-Id"], answer["choices"][0]["message"]["content"]


def _cli(*args: str) -> None:
    """``chatproxy ARGS`` in this process (its own event loop, in a thread)."""
    result = CliRunner().invoke(cli_main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output


async def every_history_operation(
    proxy: ProxyServer, http: aiohttp.ClientSession, db_url: str, tmp: Path
) -> dict[str, str]:
    """Run them all; the ids of what was deleted (``answer``, ``reply``, ``conversation``,
    ``ui_deleted``) and of the chat kept (``chat``)."""
    v1 = proxy.url
    base = v1.removesuffix("/v1")
    store: Store = proxy.app[STORE]  # type: ignore[index]
    # Chats through the proxy: new ones, a threaded turn (the prefix-hash lookup), two users.
    first = [{"role": "user", "content": "Plan a trip to Lisbon"}]
    answer_id, text = await ask(http, v1, first)
    threaded = [*first, {"role": "assistant", "content": text}, {"role": "user", "content": "More"}]
    second_id, _ = await ask(http, v1, threaded)
    for i in range(3):
        await ask(http, v1, [{"role": "user", "content": f"chat {i} about python"}])
    await ask(http, v1, [{"role": "user", "content": "bob's own"}], user="bob")
    created = await _json(
        http,
        "POST",
        f"{v1}/conversations",
        json={"metadata": {"project": "p7"}, "items": [{"role": "user", "content": "hello"}]},
    )
    conv = created["id"]
    # The AI SDK's route: a new chat, then a turn sending only its last message.
    alice = {"X-User-Id": "alice"}
    ui_chat = full("ui-chat", user("u1", "Hi from useChat"))
    assert (await post_chat(http, proxy, ui_chat, headers=alice))[0] == 200
    later = single("ui-chat", user("u2", "And again"))
    assert (await post_chat(http, proxy, later, headers=alice))[0] == 200
    chat_id = (await store.get_message(second_id)).chat_id  # type: ignore[union-attr]

    # Listing: first page, a cursor page, a metadata filter, search.
    page = await _json(http, "GET", f"{v1}/conversations", params={"limit": "2"})
    await _json(http, "GET", f"{v1}/conversations", params={"limit": "2", "after": page["last_id"]})
    await _json(http, "GET", f"{v1}/conversations", params={"metadata[project]": "p7"})
    await _json(http, "GET", f"{v1}/conversations", params={"q": "python"})
    await _json(http, "GET", f"{v1}/conversations", params={"q": "lisbon", "limit": "1"})
    with pytest.MonkeyPatch.context() as patch:  # search's walk, and a walk giving way to hits
        patch.setattr(search, "HITS_BOUND", 0)
        await _json(http, "GET", f"{v1}/conversations", params={"q": "python"})
        patch.setattr(search, "WALK_BOUND", 1)
        await _json(http, "GET", f"{v1}/conversations", params={"q": "lisbon"})
    # Stored completions: a page, a cursor page, filters.
    page = await _json(http, "GET", f"{v1}/chat/completions", params={"limit": "2"})
    params = {"limit": "2", "after": page["data"][-1]["id"]}
    await _json(http, "GET", f"{v1}/chat/completions", params=params)
    params = {"metadata[project]": "p1", "model": "m", "order": "asc"}
    await _json(http, "GET", f"{v1}/chat/completions", params=params)
    # One chat on every API.
    await _json(http, "GET", f"{v1}/conversations/{chat_id}")
    await _json(http, "GET", f"{v1}/conversations/{chat_id}/messages")
    items = await _json(http, "GET", f"{v1}/conversations/{chat_id}/items")
    await _json(http, "GET", f"{v1}/conversations/{chat_id}/items/{items['data'][0]['id']}")
    await _json(http, "GET", f"{v1}/conversations/{chat_id}/export")
    await _json(http, "GET", f"{base}/api/chat/{chat_id}/messages")
    await _json(http, "GET", f"{base}/api/chat/ui-chat/messages")
    await _json(http, "GET", f"{v1}/chat/completions/{second_id}")
    await _json(http, "GET", f"{v1}/chat/completions/{second_id}/messages")
    # Writes: update, append, vote, delete a message, a completion, a chat (both APIs).
    await _json(http, "POST", f"{v1}/conversations/{conv}", json={"metadata": {"project": "p8"}})
    more = {"items": [{"role": "user", "content": "and then"}]}
    await _json(http, "POST", f"{v1}/conversations/{conv}/items", json=more)
    vote = f"{v1}/conversations/{chat_id}/messages/{second_id}/vote"
    await _json(http, "PUT", vote, json={"up": True})
    await _json(http, "PUT", vote, json={"up": False})
    await _json(http, "DELETE", f"{v1}/conversations/{chat_id}/items/{second_id}")
    await _json(http, "DELETE", f"{v1}/chat/completions/{answer_id}")
    await _json(http, "DELETE", f"{v1}/conversations/{conv}")
    doomed = "ui-chat"
    await _json(http, "DELETE", f"{base}/api/chat", params={"id": doomed})
    # The operator's side: stats, prune, reaping, recovery, export and import.
    since = utcnow() - timedelta(days=1)
    assert await maintenance.usage(store, since)
    await maintenance.usage(store, since, "alice")
    assert await maintenance.prune(store, timedelta(days=30)) == 0
    await maintenance.prune(store, timedelta(days=30), "bob")
    await store.reap_instances(60)
    await store.recover_interrupted()
    backup = tmp / "backup.jsonl"
    await asyncio.to_thread(_cli, "stats", "--db", db_url)
    await asyncio.to_thread(_cli, "export", "--all", "-o", str(backup), "--db", db_url)
    await asyncio.to_thread(_cli, "chats", "search", "python", "--db", db_url)
    await _restore(store, backup)
    return {
        "chat": chat_id,
        "answer": answer_id,
        "reply": second_id,
        "conversation": conv,
        "ui_deleted": doomed,
    }


async def _restore(store: Store, backup: Path) -> None:
    """Import the backup after deleting what it holds (an import refuses known chats)."""
    data = await asyncio.to_thread(backup.read_bytes)
    docs = [orjson.loads(line) for line in data.splitlines() if line]
    ids = [doc["chat"]["id"] for doc in docs]

    async def clear() -> None:
        await Vote.filter(chat_id__in=ids).delete()
        await Message.filter(chat_id__in=ids).delete()
        await Chat.filter(id__in=ids).delete()

    await store.write(clear)
    await asyncio.to_thread(_cli, "import", str(backup), "--db", store.url)


# -- the test ---------------------------------------------------------------------------------


async def test_no_history_statement_scans_messages(
    capture: Capture,
    start_proxy: Callable[..., Any],
    http: aiohttp.ClientSession,
    db_url: str,
    tmp_path: Path,
) -> None:
    proxy = await start_proxy(**SETTINGS)
    capture.on = True
    ids = await every_history_operation(proxy, http, db_url, tmp_path)
    capture.on = False
    statements = capture.touching()
    # Each kind of access was captured: the test would pass vacuously on a broken hook.
    text = "\n".join(statements)
    for needle in ("prefix_hash", "DELETE", "UPDATE", "votes", "chats", "LIMIT 1 OFFSET"):
        assert needle in text, f"no captured statement mentions {needle!r}"
    path = sqlite_path(db_url)
    if path is not None:
        scans = sqlite_scans(path, statements, capture.temp_tables())
    else:
        scans = await postgres_scans(db_url, statements, capture.temp_tables())
    failures = [
        f"{sql}\n    -> {'; '.join(found)}"
        for sql, found in scans.items()
        if found and not any(key in sql for key in ALLOWED)
    ]
    assert not failures, f"{len(failures)} statements scan a whole table:\n" + "\n".join(failures)
    # What is stored is what the operations left (and the import restored).
    store: Store = proxy.app[STORE]  # type: ignore[index]
    for deleted in ("conversation", "ui_deleted"):
        assert await store.get_chat(ids[deleted]) is None
    for deleted in ("answer", "reply"):
        assert await store.get_message(ids[deleted]) is None
    kept = await store.chat_messages(ids["chat"])
    assert [(m.role, m.text) for m in kept] == [("user", "Plan a trip to Lisbon")]
    assert await store.read(lambda: Chat.filter(owner_id="bob").count()) == 1


async def test_every_foreign_key_of_the_history_tables_leads_an_index(
    db_url: str, tmp_path: Path
) -> None:
    """A cascade (a chat's delete reaching its messages and votes, a message's its replies)
    looks rows up by the referencing column, which no plan shows: each such column must be
    the first of an index."""
    store = Store(db_url)
    await store.open()
    try:
        path = sqlite_path(db_url)
        if path is not None:
            keys, leading = _sqlite_keys(path)
        else:
            keys, leading = await _postgres_keys(db_url)
    finally:
        await store.close()
    assert ("messages", "chat_id") in keys and ("votes", "message_id") in keys
    missing = sorted(k for k in keys if k not in leading)
    assert not missing, f"foreign keys with no index led by their column: {missing}"


def _sqlite_keys(path: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    db = sqlite3.connect(path)
    try:
        keys, leading = set(), set()
        for table in TABLES:
            keys |= {(table, row[3]) for row in db.execute(f"PRAGMA foreign_key_list({table})")}
            for index in db.execute(f"PRAGMA index_list({table})").fetchall():
                first = db.execute(f"PRAGMA index_info({index[1]})").fetchone()
                if first is not None:
                    leading.add((table, first[2]))
        return keys, leading
    finally:
        db.close()


async def _postgres_keys(url: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        keys = await conn.fetch(
            "SELECT t.relname, a.attname FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid"
            " JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = c.conkey[1]"
            " WHERE c.contype = 'f' AND t.relname = ANY($1::text[])",
            list(TABLES),
        )
        indexes = await conn.fetch(_PG_INDEXES, list(TABLES))
        return {(r[0], r[1]) for r in keys}, {(r[1], r[2]) for r in indexes if r[2] is not None}
    finally:
        await conn.close()
