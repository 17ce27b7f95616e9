"""Migration 0013: on SQLite the writes only list what the full-text indexes lack, and the
store's writer adds it in batches (in the background, and before every search). Whatever
leaves or changes before it is indexed, the indexes stay exact."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from chatproxy.server import ProxyServer
from chatproxy.store import search_index
from chatproxy.store.models import Chat, Message, User
from chatproxy.store.store import Store
from tests.util import store_at


@pytest.fixture
def db_url(db_path: Path) -> str:
    """SQLite only: PostgreSQL's indexes are expression indexes the database keeps."""
    return f"sqlite://{db_path}"


def _sql(path: Path, query: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path, timeout=10)
    try:
        with db:
            return db.execute(query, args).fetchall()
    finally:
        db.close()


def _listed(path: Path) -> tuple[int, int]:
    """How many messages and chats wait for the indexes."""
    (m,), (c,) = (_sql(path, f"SELECT count(*) FROM {t}")[0] for t in search_index.PENDING)
    return int(m), int(c)


def _exact(path: Path) -> None:
    """Both indexes sound, and together with the lists exactly the final messages and every
    chat, each in one place."""
    for fts in ("messages_fts", "chats_fts"):
        _sql(path, f"INSERT INTO {fts}({fts}) VALUES ('integrity-check')")
    for table, final in (("messages", "status != 'in_progress'"), ("chats", "1")):
        indexed = {r[0] for r in _sql(path, f"SELECT id FROM {table}_fts_docsize")}
        listed = {r[0] for r in _sql(path, f"SELECT id FROM {table}_fts_pending")}
        rows = {r[0] for r in _sql(path, f"SELECT rowid FROM {table} WHERE {final}")}
        assert not indexed & listed, table
        assert indexed | listed == rows, table


async def _search(http: aiohttp.ClientSession, proxy: ProxyServer, q: str) -> list[str]:
    async with http.get(f"{proxy.url}/conversations", params={"q": q}) as resp:
        assert resp.status == 200, await resp.text()
        return [c["id"] for c in (await resp.json())["data"]]


async def _chat(http: aiohttp.ClientSession, proxy: ProxyServer, text: str) -> str:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
        return resp.headers["X-Chat-Id"]


async def test_writes_list_the_rows_and_a_search_indexes_them_first(
    proxy: ProxyServer, store: Store, http: aiohttp.ClientSession, db_path: Path
) -> None:
    chat_id = await _chat(http, proxy, "a question about kestrels")
    # The background indexer looks every EVERY seconds: right after the answer, the rows of
    # this chat are listed unless it already came by.
    _exact(db_path)
    assert await _search(http, proxy, "kestrels") == [chat_id]
    assert _listed(db_path) == (0, 0)
    _exact(db_path)


async def test_the_writer_indexes_in_the_background_without_a_search(
    proxy: ProxyServer, http: aiohttp.ClientSession, db_path: Path
) -> None:
    for i in range(5):
        await _chat(http, proxy, f"osprey number {i}")
    for _ in range(200):
        if _listed(db_path) == (0, 0):
            break
        await asyncio.sleep(0.05)
    assert _listed(db_path) == (0, 0)
    indexed = _sql(db_path, "SELECT count(*) FROM messages_fts_docsize")[0][0]
    assert indexed == 10  # five questions, five answers
    _exact(db_path)


async def test_more_than_a_step_is_indexed_in_steps(
    proxy: ProxyServer, store: Store, http: aiohttp.ClientSession, db_path: Path
) -> None:
    chat_id = await _chat(http, proxy, "harrier")
    await store.index_search()
    # Many rows listed at once (as a burst of requests would): a search waits for them all.
    n = search_index.STEP * 2 + 7
    now = str(datetime.now(UTC))
    _sql(db_path, "UPDATE chats SET title = 'merlin falcons' WHERE id = ?", (chat_id,))
    db = sqlite3.connect(db_path, timeout=10)
    with db:
        db.executemany(
            "INSERT INTO messages (id, chat_id, user_id, role, text, data, prefix_hash, status, "
            "client_disconnected, created_at, depth) "
            "VALUES (?, ?, 'local', 'user', ?, '{}', ?, 'completed', 0, ?, 1)",
            [(f"msg_bulk{i}", chat_id, f"peregrine {i}", f"h{i}", now) for i in range(n)],
        )
    db.close()
    assert _listed(db_path) == (n, 1)
    assert await _search(http, proxy, "peregrine") == [chat_id]
    assert await _search(http, proxy, "merlin") == [chat_id]
    assert _listed(db_path) == (0, 0)
    _exact(db_path)
    hits = _sql(db_path, "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'peregrine'")
    assert hits[0][0] == n


async def test_rows_that_change_or_leave_before_or_after_indexing_keep_the_index_exact(
    proxy: ProxyServer, store: Store, http: aiohttp.ClientSession, db_path: Path
) -> None:
    indexed = await _chat(http, proxy, "buzzard one")
    await store.index_search()
    listed = await _chat(http, proxy, "buzzard two")
    # A title changed and a message rewritten, one chat indexed, the other still listed.
    for chat_id, word in ((indexed, "condor"), (listed, "vulture")):
        _sql(db_path, "UPDATE chats SET title = ? WHERE id = ?", (f"{word} title", chat_id))
        _sql(
            db_path,
            "UPDATE messages SET text = ? WHERE chat_id = ? AND role = 'user'",
            (f"{word} text", chat_id),
        )
    _exact(db_path)
    assert await _search(http, proxy, "buzzard") == []
    assert await _search(http, proxy, "condor") == [indexed]
    assert await _search(http, proxy, "vulture") == [listed]
    # Deleted: one indexed, one listed (a new chat, deleted before the indexer came by).
    gone = await _chat(http, proxy, "goshawk")
    for chat_id in (indexed, gone):
        async with http.delete(f"{proxy.url}/conversations/{chat_id}") as resp:
            assert resp.status == 200
    _exact(db_path)
    # The same without a chance for the indexer to come in between (no await): written,
    # changed and deleted while listed.
    now = str(datetime.now(UTC))
    db = sqlite3.connect(db_path, timeout=10)
    with db:
        db.execute(
            "INSERT INTO chats (id, owner_id, title, visibility, metadata, created_at, "
            "updated_at) VALUES ('chat_brief', 'local', 'kite', 'private', '{}', ?, ?)",
            (now, now),
        )
        db.execute(
            "INSERT INTO messages (id, chat_id, user_id, role, text, data, prefix_hash, status, "
            "client_disconnected, created_at, depth) VALUES ('msg_brief', 'chat_brief', "
            "'local', 'user', 'kite text', '{}', 'x', 'completed', 0, ?, 1)",
            (now,),
        )
        db.execute("UPDATE messages SET text = 'kestrel text' WHERE id = 'msg_brief'")
        db.execute("UPDATE chats SET title = 'kestrel' WHERE id = 'chat_brief'")
    with db:
        db.execute("DELETE FROM chats WHERE id = 'chat_brief'")
    db.close()
    _exact(db_path)
    assert await _search(http, proxy, "condor") == []
    assert await _search(http, proxy, "goshawk") == []
    assert await _search(http, proxy, "vulture") == [listed]
    _exact(db_path)


async def test_the_upgrade_lists_nothing_and_keeps_what_was_indexed(
    db_url: str, db_path: Path, start_proxy: object, http: aiohttp.ClientSession
) -> None:
    async with store_at(db_url, "0012_search_final_text"):
        now = datetime.now(UTC)
        await User.create(id="local", name="local", created_at=now)
        chat = await Chat.create(
            id="chat_old", owner_id="local", title="Albatross", created_at=now, updated_at=now
        )
        await Message.create(
            id="msg_q",
            chat=chat,
            user_id="local",
            role="user",
            text="a petrel question",
            data={},
            prefix_hash="a",
            created_at=now,
        )
    proxy = await start_proxy()  # type: ignore[operator]
    assert _listed(db_path) == (0, 0)
    _exact(db_path)
    assert await _search(http, proxy, "petrel") == ["chat_old"]
    assert await _search(http, proxy, "albatross") == ["chat_old"]
    chat_id = await _chat(http, proxy, "a shearwater question")
    assert await _search(http, proxy, "shearwater") == [chat_id]
    _exact(db_path)
