"""Migration 0012: on SQLite a message reaches the full-text index once it is final, with its
final text (one index write per answer on the hot path); the index stays consistent through
checkpoints, the end, recovery, deletes, and an upgrade of a store with a running answer."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatproxy.appkeys import STORE
from chatproxy.server import ProxyServer
from chatproxy.store.models import Chat, Message, User
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply
from tests.util import store_at


async def _integrity(path: Path, store: Store) -> None:
    """Once brought up to date (as a search does first), the index is sound (FTS5's own
    check) and holds exactly the final messages: each once, none running. (FTS5's check
    against the content table, ``rank = 1``, expects every row of it indexed, which this index
    does not by design.)"""
    await store.index_search()

    def check() -> None:
        db = sqlite3.connect(path, timeout=10)
        try:
            db.execute("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')")
            indexed = [r[0] for r in db.execute("SELECT id FROM messages_fts_docsize")]
            final = "SELECT rowid FROM messages WHERE status != 'in_progress'"
            assert sorted(indexed) == sorted(r[0] for r in db.execute(final))
            assert not db.execute("SELECT id FROM messages_fts_pending").fetchall()
            # Each final message is found by each word of its text, once.
            for rowid, text in db.execute(
                f"SELECT rowid, text FROM messages WHERE rowid IN ({final})"
            ):
                for word in text.split():
                    match = "SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?"
                    hits = [r[0] for r in db.execute(match, [f'"{word}"'])]
                    assert hits.count(rowid) == 1, (rowid, word, hits)
        finally:
            db.close()

    await asyncio.to_thread(check)


async def _indexed(store: Store) -> int:
    """How many messages the index holds (one size row per indexed message)."""
    query = "SELECT count(*) FROM messages_fts_docsize"
    _, rows = await store.read(lambda: store.conn.execute_query(query))
    return int(rows[0][0])


async def _search(http: aiohttp.ClientSession, proxy: ProxyServer, q: str) -> list[str]:
    async with http.get(f"{proxy.url}/conversations", params={"q": q}) as resp:
        assert resp.status == 200, await resp.text()
        return [c["id"] for c in (await resp.json())["data"]]


@pytest.fixture
def db_url(db_path: Path) -> str:
    """SQLite only: PostgreSQL's full-text index is an expression index the database keeps."""
    return f"sqlite://{db_path}"


def _store(proxy: ProxyServer) -> Store:
    assert proxy.app is not None
    return proxy.app[STORE]


async def test_an_answer_is_indexed_once_with_its_final_text(
    proxy: ProxyServer, http: aiohttp.ClientSession, upstream: FakeUpstream, db_path: Path
) -> None:
    store = _store(proxy)
    pieces = ["alpha ", "bravo ", "charlie ", "delta ", "zulu"]
    upstream.enqueue(Reply(chunks=pieces, chunk_delay=0.04))  # checkpoints every 0.05 s
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "spell"}]}
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        chat_id = resp.headers["X-Chat-Id"]
        await resp.read()
    answer = (await store.chat_messages(chat_id))[-1]
    assert answer.status == "completed" and answer.text == "alpha bravo charlie delta zulu"
    await _integrity(db_path, store)
    assert await _indexed(store) == 2  # the question and the answer, each once
    assert await _search(http, proxy, "zulu") == [chat_id]
    assert await _search(http, proxy, "spell") == [chat_id]
    async with http.delete(f"{proxy.url}/conversations/{chat_id}") as resp:
        assert resp.status == 200
    await _integrity(db_path, store)
    assert await _indexed(store) == 0
    assert await _search(http, proxy, "zulu") == []


async def test_a_running_answer_is_not_indexed_until_it_ends(
    proxy: ProxyServer, http: aiohttp.ClientSession, upstream: FakeUpstream, db_path: Path
) -> None:
    store = _store(proxy)
    upstream.enqueue(Reply(chunks=["yankee "] * 8, chunk_delay=0.05))
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        chat_id = resp.headers["X-Chat-Id"]
        await resp.content.readany()
        await resp.content.readany()
        running = [m for m in await store.chat_messages(chat_id) if m.status == "in_progress"]
        assert running  # a checkpoint may have written some of its text
        assert await _search(http, proxy, "yankee") == []
        await resp.read()
    await _integrity(db_path, store)
    assert await _search(http, proxy, "yankee") == [chat_id]


async def test_the_upgrade_keeps_the_index_consistent_with_a_running_answer(
    db_url: str, db_path: Path, start_proxy: Any, http: aiohttp.ClientSession
) -> None:
    async with store_at(db_url, "0011_outbox"):
        now = datetime.now(UTC)
        await User.create(id="local", name="local", created_at=now)
        chat = await Chat.create(id="chat_old", owner_id="local", created_at=now, updated_at=now)
        common: dict[str, Any] = {"chat": chat, "user_id": "local", "created_at": now}
        user = await Message.create(
            id="msg_q", role="user", text="whiskey question", data={}, prefix_hash="a", **common
        )
        # An answer the previous release left running, indexed with its checkpoint text.
        await Message.create(
            id="msg_a",
            parent=user,
            role="assistant",
            text="whiskey partial",
            data={},
            prefix_hash="b",
            status="in_progress",
            depth=1,
            **common,
        )
    proxy = await start_proxy()  # 0012 runs on the store
    store = _store(proxy)
    await _integrity(db_path, store)
    assert await _indexed(store) == 1  # the question; the running answer left the index
    assert await _search(http, proxy, "partial") == []
    # The instance that ran it is gone: the reaper ends its answer as interrupted.
    db = sqlite3.connect(db_path, timeout=10)
    with db:
        db.execute("UPDATE messages SET status = 'interrupted' WHERE id = 'msg_a'")
    db.close()
    await _integrity(db_path, store)
    assert await _indexed(store) == 2
    assert await _search(http, proxy, "partial") == ["chat_old"]
